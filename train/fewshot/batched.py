"""Model batching: several units of one (run, mode, task, batch size) trained in one step.

At batch 2-4 a DistilRoBERTa step leaves a GPU mostly idle (the cost is kernel launches and
Python, not FLOPs), so the grid points and seeds that train alike are trained together: their
parameters stacked along a new first dimension (``torch.func.stack_module_state``), one forward
and backward for all of them (``torch.func.vmap`` over ``functional_call``), and one optimizer
step, with each unit's own

- learning rate (AdamW written out over the stacked tensors, the per-unit learning rate a
  tensor: ``torch.optim.AdamW``'s formula, its linear decay, its bias corrections; the
  vocabulary tables updated by rows, as ``row_adamw.RowAdamW`` does),
- gradient clipping (each unit's norm over its own gradients),
- data order (its seed's generator, as alone) and, with demonstrations, its own draws,
- dropout stream (``vmap(randomness="different")``; drawn from one generator seeded by the
  job, so a batched unit's dropout masks are not those it would draw alone),
- initial weights (its learner made after seeding its seed, as alone: a fresh head per seed),
- dev passes, best-dev checkpoint and test pass: each through the unit's own learner, with the
  unit's slice of the stacked weights swapped in (``functional_call``).

With dropout off a batched unit's loss curve, dev and test metrics equal the unit's alone up to
fp32 round-off (``tests/test_fewshot_batched.py``): the step runs eager attention on a padded
additive mask (vmap has no rule for fused attention) and pads every unit's batch to the step's
longest. Batched are the learners whose forward is a plain encoder (``BATCHED_LEARNERS`` on a
masked LM that is not an encoder-decoder); the others (distillation's soft labels through the
Triton kernel, T5, learners added later) train one unit at a time (``can_batch``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from smash.train.fewshot.demonstrations import DemoPromptLearner
from smash.train.fewshot.distill import DISTILL_MODES
from smash.train.fewshot.learners import Batch, Features, FinetuneLearner, PromptLearner, collate
from smash.train.fewshot.metrics import select_best
from smash.train.fewshot.protocol import PointResult, Protocol, cpu_state, evaluate, frozen_names
from smash.train.fewshot.row_adamw import BETAS, EPS, seen_rows, update_rows_
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["BATCHED_LEARNERS", "UNBATCHED_MODES", "can_batch", "train_together"]

BATCHED_LEARNERS = (PromptLearner, DemoPromptLearner, FinetuneLearner)
# modes whose units never train together (zero-shot trains nothing), so never share a job
UNBATCHED_MODES = ("zero-shot", *DISTILL_MODES)


def can_batch(learner) -> bool:
    """Whether units of ``learner``'s kind train batched."""
    from transformers import PreTrainedModel

    model = learner.model
    return (
        type(learner) in BATCHED_LEARNERS
        and isinstance(model, PreTrainedModel)
        and not model.config.is_encoder_decoder
    )


class _Call(nn.Module):
    """Runs a function while ``functional_call`` has swapped ``model``'s weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], object]) -> object:
        return fn()


class _Step(nn.Module):
    """One unit's training loss on one batch (what ``vmap`` maps over the units)."""

    def __init__(self, learner) -> None:
        super().__init__()
        self.model, self.learner = learner.model, learner

    def forward(self, ids, mask, positions, labels) -> torch.Tensor:
        batch = Batch(ids, mask, positions, labels)
        return self.learner.loss(self.learner.forward(batch), labels)


def train_together(
    learners: Sequence, splits: Sequence, seeds: Sequence[int], lrs: Sequence[float],
    batch_size: int, protocol: Protocol, device: torch.device,
) -> list[tuple[PointResult, dict, list[float]]]:  # fmt: skip
    """Train ``learners`` (one per unit, made as alone) together on their ``splits``, each
    with its seed's data order and its learning rate; returns per unit its untested result,
    its best-dev checkpoint (CPU) and its loss at every step."""
    base = learners[0]
    params, buffers = stack_module_state([lr.model for lr in learners])
    params = {n: p.detach().to(device).requires_grad_(p.requires_grad) for n, p in params.items()}
    buffers = {n: b.to(device) for n, b in buffers.items()}
    attention = base.model.config._attn_implementation
    base.model.set_attn_implementation("eager")  # vmap has no batching rule for fused attention
    try:
        return _train(learners, splits, seeds, lrs, batch_size, protocol, device, params, buffers)
    finally:
        base.model.set_attn_implementation(attention)


def _train(learners, splits, seeds, lrs, batch_size, protocol, device, params, buffers):
    base, units = learners[0], range(len(learners))
    step_fn = _Step(base)

    def one(p, b, *inputs):
        return functional_call(step_fn, ({f"model.{n}": t for n, t in p.items()},
                                         {f"model.{n}": t for n, t in b.items()}), inputs)  # fmt: skip

    losses_of = vmap(one, randomness="different")

    def swapped(u: int, fn: Callable[[], object]) -> object:
        """``fn()`` with unit ``u``'s weights in its learner's model."""
        weights = {f"model.{n}": t[u].detach() for n, t in (*params.items(), *buffers.items())}
        return functional_call(_Call(learners[u].model), weights, (fn,))

    trainable = {n: p for n, p in params.items() if p.requires_grad}
    frozen = frozen_names(base.model)  # read unswapped: swapped weights are plain tensors
    moments = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in trainable.items()}
    by_rows = protocol.adamw == "rows"  # the rows of a stacked table (U, rows, ...): dim 1
    seen = {n: seen_rows(p, 1) if by_rows else None for n, p in trainable.items()}
    base_lr = torch.tensor(lrs, dtype=torch.float64)
    data = [(lr.encode(s.train), lr.encode(s.dev)) for lr, s in zip(learners, splits)]
    sizes = {len(train) for train, _ in data}
    if len(sizes) != 1:
        raise ValueError(f"units trained together need training sets of one size, got {sizes}")
    orders = [torch.Generator().manual_seed(seed) for seed in seeds]
    pad, regression = base.tokenizer.pad_token_id, base.task.is_regression
    best = [(-math.inf, None, 0)] * len(learners)  # (dev, checkpoint, step)
    losses: list[torch.Tensor] = []
    step = epoch = 0
    total = protocol.max_steps
    while step < total:
        # demonstrations (DemoPromptLearner) are drawn afresh each epoch, as LM-BFF draws them
        epoch_features = [getattr(t, "for_epoch", lambda e, t=t: t)(epoch) for t, _ in data]
        perms = [torch.randperm(len(f), generator=g).tolist()
                 for f, g in zip(epoch_features, orders)]  # fmt: skip
        epoch += 1
        for start in range(0, len(perms[0]), batch_size):
            base.model.train()
            batch = _stack(
                [[f[i] for i in perm[start : start + batch_size]]
                 for f, perm in zip(epoch_features, perms)], pad, regression, device,
            )  # fmt: skip
            loss = losses_of(params, buffers, *batch)
            loss.sum().backward()
            factor = max(0.0, 1 - step / total)  # LambdaLR's linear decay before this step
            step += 1
            _clip_(trainable, protocol.max_grad_norm)
            _adamw_(trainable, moments, seen, base_lr * factor, step)
            losses.append(loss.detach())
            if step % protocol.eval_every == 0 or step == total:
                for u in units:
                    score = swapped(u, lambda u=u: evaluate(
                        learners[u], data[u][1], protocol.eval_batch_size, device,
                        **protocol.inference))  # fmt: skip
                    if best[u][1] is None or select_best([best[u][0], score]) == 1:
                        state = swapped(u, lambda u=u: cpu_state(learners[u].model, frozen))
                        best[u] = (score, state, step)
            if step == total:
                break
    curves = torch.stack(losses).T.cpu().tolist() if losses else [[] for _ in units]
    return [
        (PointResult(lr=lrs[u], batch_size=batch_size, dev=best[u][0], step=best[u][2], tests={}),
         best[u][1], curves[u])
        for u in units
    ]  # fmt: skip


def _stack(batches: list[list[Features]], pad: int, regression: bool, device) -> tuple:
    """Each unit's batch collated, padded to the longest of all, stacked along a first unit
    dimension: ids (U, B, T), additive attention mask (U, B, 1, 1, T), mask positions and
    labels (U, B)."""
    collated = [collate(b, pad, regression) for b in batches]
    width = max(c.input_ids.shape[1] for c in collated)
    ids = torch.stack([nn.functional.pad(c.input_ids, (0, width - c.input_ids.shape[1]), value=pad)
                       for c in collated])  # fmt: skip
    keep = torch.stack([nn.functional.pad(c.attention_mask, (0, width - c.attention_mask.shape[1]))
                        for c in collated])  # fmt: skip
    mask = (1.0 - keep[:, :, None, None, :].float()) * torch.finfo(torch.float32).min
    positions = torch.stack([c.mask_positions for c in collated])
    labels = torch.stack([c.labels for c in collated])
    return tuple(t.to(device) for t in (ids, mask, positions, labels))


def _per_unit(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(U,) values shaped to broadcast over ``like`` (U, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def _clip_(params: dict[str, torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` of each unit over its own gradients."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(_per_unit(coef, g))


@torch.no_grad()
def _adamw_(params: dict, moments: dict, seen: dict, lrs: torch.Tensor, step: int) -> None:
    """``torch.optim.AdamW`` (no weight decay, the protocol's) with a learning rate per unit,
    a stacked vocabulary table's rows updated once any unit has had a gradient there (``seen``:
    ``row_adamw.update_rows_``; None in it for ``--adamw dense``); gradients are cleared after."""
    beta1, beta2 = BETAS
    root = math.sqrt(1 - beta2**step)
    step_sizes: dict = {}  # per device and dtype, copied there once a step
    for name, p in params.items():
        if p.grad is None:
            continue
        where = (p.device, p.dtype)
        if where not in step_sizes:
            step_sizes[where] = (lrs / (1 - beta1**step)).to(p.device, p.dtype)
        size = step_sizes[where]

        def adamw(p, g, m, v, size=size) -> None:
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / root).add_(EPS)
            p.sub_(_per_unit(size, p) * (m / denom))

        update_rows_(p, p.grad, moments[name], seen[name], 1, adamw)
        p.grad = None
