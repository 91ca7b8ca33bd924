"""LM-BFF's few-shot protocol for one task and one seed: grid search, best-dev checkpoint, test.

For each (learning rate, batch size) of the grid the model starts afresh from its folder
(seeded, so a new head is the same for every grid point), trains up to ``max_steps`` with
AdamW and a linear decay (HF Trainer defaults: no warmup, no weight decay, clipping at 1.0; by
default AdamW touches only the vocabulary rows that have had a gradient, ``row_adamw.py``), and
is evaluated on dev every ``eval_every`` steps. The best dev checkpoint is kept as an in-memory
copy of the weights, never a file. Each grid point is so a self-contained :class:`PointResult`
(a long evaluation records it and never trains it again); across the grid the point with the
best dev metric (earliest on ties) gives the seed's result, and only its checkpoint needs a
test pass (``train_point`` + ``checkpoint_tests``); ``run_point`` tests every point's, as
LM-BFF does.

Dev and test passes run under ``torch.inference_mode`` in length-sorted batches of at most
``eval_batch_size`` rows and ``eval_token_budget`` padded tokens (an example longer than the
budget is a batch of its own), with autocast to ``precision`` on CUDA (``PRECISIONS``;
training stays fp32).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from smash.precompute.batching import token_budget_batches
from smash.precompute.kshot.data import KShotData
from smash.train.fewshot.learners import Features, FinetuneLearner, PromptLearner, collate
from smash.train.fewshot.metrics import compute_metric, select_best
from smash.train.fewshot.row_adamw import ADAMW_KINDS, make_adamw
from smash.train.fewshot.soft_prompts import PPT_LEARNING_RATES, SOFT_PROMPT_MODES
from smash.train.fewshot.table_rows import TableRows, table_rows_for

__all__ = [
    "PAPER_MAX_STEPS",
    "PRECISIONS",
    "PointResult",
    "Protocol",
    "SeedResult",
    "checkpoint_tests",
    "choose",
    "cpu_state",
    "evaluate",
    "frozen_names",
    "load_checkpoint",
    "paper_max_steps",
    "predict",
    "run_point",
    "test_metrics",
    "train_point",
    "zero_shot",
]

Learner = PromptLearner | FinetuneLearner

# --precision: the autocast dtype of dev and test passes on CUDA (None: fp32, no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Training steps per K of the paper's Figure 4 (appendix A, "Experiments in Section 4.6").
PAPER_MAX_STEPS = {16: 1000, 32: 1000, 64: 2000, 128: 2000, 256: 4000}


def paper_max_steps(k: int) -> int:
    """The paper's step budget for K; other K get appendix A.1's 1000."""
    return PAPER_MAX_STEPS.get(k, 1000)


@dataclass(frozen=True)
class Protocol:
    """The knobs of the protocol; the defaults are the paper's (appendix A.1)."""

    learning_rates: tuple[float, ...] = (1e-5, 2e-5, 5e-5)
    batch_sizes: tuple[int, ...] = (2, 4)
    max_steps: int = 1000
    eval_every: int = 100
    eval_batch_size: int = 256
    eval_token_budget: int | None = 16384
    precision: str = "fp32"
    max_grad_norm: float = 1.0
    # AdamW updating only the vocabulary rows that have had a gradient, or every row as
    # torch.optim.AdamW (row_adamw.ADAMW_KINDS): the same result either way
    adamw: str = "rows"
    # the soft-prompt modes' rates (PPT's prompt tuning: soft_prompts.PPT_LEARNING_RATES)
    soft_prompt_learning_rates: tuple[float, ...] = PPT_LEARNING_RATES

    def __post_init__(self) -> None:
        if self.adamw not in ADAMW_KINDS:
            raise ValueError(f"adamw must be one of {ADAMW_KINDS}, got {self.adamw!r}")

    @property
    def grid(self) -> list[tuple[float, int]]:
        return [(lr, bs) for lr in self.learning_rates for bs in self.batch_sizes]

    def for_mode(self, mode: str) -> Protocol:
        """The protocol a mode trains with: the soft-prompt modes search their own rates."""
        if mode in SOFT_PROMPT_MODES:
            return replace(self, learning_rates=self.soft_prompt_learning_rates)
        return self

    @property
    def inference(self) -> dict:
        """``predict``'s keywords for dev and test passes."""
        return {"token_budget": self.eval_token_budget, "precision": self.precision}


@dataclass
class SeedResult:
    """Outcome of one seed: the chosen configuration, its dev metric and test metric(s)."""

    seed: int
    dev: float
    tests: dict[str, float]
    lr: float | None = None
    batch_size: int | None = None
    step: int | None = None
    grid_dev: list[float] = field(default_factory=list)


def predict(
    learner: Learner,
    features: Sequence[Features],
    batch_size: int,
    device: torch.device,
    *,
    token_budget: int | None = None,
    precision: str = "fp32",
) -> list[float]:
    """Predictions for ``features`` in their order, in length-sorted batches (little padding)
    of at most ``batch_size`` examples and, given one, ``token_budget`` padded tokens (an
    example of S demonstration sets counts S times its longest)."""
    learner.model.eval()
    lengths = [len(f.input_ids) * len(getattr(f, "sets", (f,))) for f in features]
    if token_budget is None:
        order = sorted(range(len(features)), key=lengths.__getitem__)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:  # an example longer than the budget is a batch of its own
        within = [i for i, n in enumerate(lengths) if n <= token_budget]
        fits = token_budget_batches([lengths[i] for i in within], token_budget, batch_size)
        batches = [[within[j] for j in b] for b in fits]
        batches += [[i] for i, n in enumerate(lengths) if n > token_budget]
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    preds: list[float] = [0.0] * len(features)
    with torch.inference_mode(), autocast:
        for idx in batches:
            batch = collate(
                [features[i] for i in idx],
                learner.tokenizer.pad_token_id,
                learner.task.is_regression,
            ).to(device)
            for i, p in zip(idx, learner.predict(learner.forward(batch)).tolist()):
                preds[i] = p
    return preds


def evaluate(
    learner: Learner,
    features: Sequence[Features],
    batch_size: int,
    device: torch.device,
    **inference,
) -> float:
    """The task's metric over ``features``; ``inference``: ``predict``'s keywords."""
    preds = predict(learner, features, batch_size, device, **inference)
    return compute_metric(learner.task.metric, preds, [f.label for f in features])


def test_metrics(
    learner: Learner,
    column: str,
    features: Sequence[Features],
    batch_size: int,
    device: torch.device,
    **inference,
) -> dict[str, float]:
    """One results column's test metrics from one prediction pass: the task's metric under
    ``column``, each of its extra metrics under ``column:name`` (``STS-B:spearman``)."""
    preds = predict(learner, features, batch_size, device, **inference)
    labels = [f.label for f in features]
    task = learner.task
    out = {column: compute_metric(task.metric, preds, labels)}
    out.update({f"{column}:{m}": compute_metric(m, preds, labels) for m in task.extra_metrics})
    return out


def zero_shot(
    learner: Learner,
    data: KShotData,
    seed: int,
    batch_size: int,
    device: torch.device,
    cache: dict | None = None,
    **inference,
) -> SeedResult:
    """The untrained model through the same template and label words.

    GLUE test sets are the same file for every seed, so test metrics are memoised in ``cache``
    (keyed by the examples themselves) when one is given; dev is evaluated per seed.
    ``inference``: ``predict``'s keywords.
    """
    learner.model.to(device)
    cache = {} if cache is None else cache
    tests = {}
    for col, examples in data.tests.items():
        key = (col, tuple(examples))
        if key not in cache:
            features = learner.encode(examples)
            cache[key] = test_metrics(learner, col, features, batch_size, device, **inference)
        tests.update(cache[key])
    dev = evaluate(learner, learner.encode(data.dev), batch_size, device, **inference)
    return SeedResult(seed=seed, dev=dev, tests=tests)


@dataclass(frozen=True)
class PointResult:
    """One grid point of one seed: its best dev metric, at which step, and that checkpoint's
    test metrics (empty until it is tested: only the seed's chosen point is, unless every
    point is)."""

    lr: float | None  # None for a zero-shot unit (no training)
    batch_size: int | None
    dev: float
    step: int
    tests: dict[str, float]


def train_point(
    make_learner: Callable[[], object],
    data: KShotData,
    seed: int,
    lr: float,
    batch_size: int,
    protocol: Protocol,
    device: torch.device,
) -> tuple[PointResult, dict]:
    """Train one grid point from the model's folder: its result, untested, and its best-dev
    checkpoint (a state dict on the CPU)."""
    _, result, state = _train_point(make_learner, data, seed, lr, batch_size, protocol, device)
    return result, state


def checkpoint_tests(
    learner, data: KShotData, state: dict, protocol: Protocol, device: torch.device
) -> dict[str, float]:
    """The test metrics of ``learner`` with the weights ``state``, on every test set."""
    learner.model.to(device)
    load_checkpoint(learner.model, state)
    tests: dict[str, float] = {}
    for col, examples in data.tests.items():
        features = learner.encode(examples)
        tests.update(test_metrics(learner, col, features, protocol.eval_batch_size, device,
                                  **protocol.inference))  # fmt: skip
    return tests


def run_point(
    make_learner: Callable[[], object],
    data: KShotData,
    seed: int,
    lr: float,
    batch_size: int,
    protocol: Protocol,
    device: torch.device,
) -> PointResult:
    """Train one grid point from the model's folder and test its best-dev checkpoint."""
    learner, result, state = _train_point(
        make_learner, data, seed, lr, batch_size, protocol, device
    )
    tests = checkpoint_tests(learner, data, state, protocol, device)
    return replace(result, tests=tests)


def _train_point(make_learner, data, seed, lr, batch_size, protocol, device):
    """(the trained learner, its untested result, its best-dev checkpoint)."""
    torch.manual_seed(seed)
    learner = make_learner()
    learner.model.to(device)
    train, dev = learner.encode(data.train), learner.encode(data.dev)
    score, state, step = _train(learner, train, dev, lr, batch_size, seed, protocol, device)
    result = PointResult(lr=lr, batch_size=batch_size, dev=score, step=step, tests={})
    return learner, result, state


def choose(seed: int, points: Sequence[PointResult]) -> SeedResult:
    """The seed's result: the grid point with the best dev metric, the earliest on ties."""
    best = points[select_best([p.dev for p in points])]
    return SeedResult(
        seed=seed,
        dev=best.dev,
        tests=dict(best.tests),
        lr=best.lr,
        batch_size=best.batch_size,
        step=best.step,
        grid_dev=[p.dev for p in points],
    )


def _clip_grad_norm_(
    params: list[torch.nn.Parameter], max_norm: float, table: TableRows | None = None
) -> None:
    """``torch.nn.utils.clip_grad_norm_``, which multiplies every gradient by
    ``min(1, max_norm / (norm + 1e-6))``: on a CPU, where reading the norm costs no device
    sync, the multiplication by exactly 1 (a pass over the vocabulary table's dense gradient)
    is skipped, and with ``table`` only its gathered rows are multiplied, with the same
    result."""
    grads = [p.grad for p in params if p.grad is not None]
    split = hasattr(torch.nn.utils, "get_total_norm")  # torch >= 2.6
    if not grads or grads[0].device.type != "cpu" or not split:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    total = torch.nn.utils.get_total_norm(grads)
    # torch's coefficient before its clamp at 1; a NaN or infinite norm scales as torch does
    if not max_norm / (total + 1e-6) >= 1.0:
        if table is None:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        else:
            table.clip_(params, max_norm, total)


def frozen_names(model: torch.nn.Module) -> set[str]:
    """The state-dict names of ``model``'s frozen parameters (tied names included)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def cpu_state(model: torch.nn.Module, frozen: set[str] | None = None) -> dict:
    """A checkpoint as the protocol keeps it: what training can change (the state dict without
    the ``frozen`` parameters, by default ``frozen_names(model)``: a soft prompt's backbone
    stays as loaded), copied to the CPU."""
    frozen = frozen_names(model) if frozen is None else frozen
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if k not in frozen}  # fmt: skip


def load_checkpoint(model: torch.nn.Module, state: dict) -> None:
    """``cpu_state``'s checkpoint into ``model`` as loaded (its frozen parameters as they are),
    refusing a checkpoint that lacks a trainable tensor or holds one the model does not."""
    loaded = model.load_state_dict(state, strict=False)
    missing = set(loaded.missing_keys) - frozen_names(model)
    if missing or loaded.unexpected_keys:
        raise RuntimeError(
            f"a checkpoint that does not fit {type(model).__name__}: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(loaded.unexpected_keys)[:5]}"
        )


def _train(
    learner,
    train: list[Features],
    dev: list[Features],
    lr: float,
    batch_size: int,
    seed: int,
    protocol: Protocol,
    device: torch.device,
) -> tuple[float, dict, int]:
    """Train one configuration; returns (best dev metric, its weights on CPU, its step)."""
    model = learner.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(protocol.adamw, params, lr)
    # on a CPU the vocabulary table's gradient is kept by rows where that is exact
    table = table_rows_for(learner, optimizer)
    total = protocol.max_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
    order = torch.Generator().manual_seed(seed)
    pad, regression = learner.tokenizer.pad_token_id, learner.task.is_regression
    best_score, best_state, best_step = -math.inf, None, 0
    step = epoch = 0
    # demonstrations (DemoPromptLearner) are drawn afresh each epoch, as LM-BFF draws them
    for_epoch = getattr(train, "for_epoch", lambda epoch: train)
    with table or contextlib.nullcontext():
        while step < total:
            features = for_epoch(epoch)
            epoch += 1
            perm = torch.randperm(len(features), generator=order).tolist()
            for start in range(0, len(perm), batch_size):
                model.train()
                batch = collate(
                    [features[i] for i in perm[start : start + batch_size]], pad, regression
                ).to(device)
                loss = learner.loss(learner.forward(batch), batch.labels)
                loss.backward()
                if table is not None:
                    table.gather()
                _clip_grad_norm_(params, protocol.max_grad_norm, table)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % protocol.eval_every == 0 or step == total:
                    score = evaluate(learner, dev, protocol.eval_batch_size, device,
                                     **protocol.inference)  # fmt: skip
                    if best_state is None or select_best([best_score, score]) == 1:
                        best_score, best_step = score, step
                        best_state = cpu_state(model)
                if step == total:
                    break
    return best_score, best_state, best_step
