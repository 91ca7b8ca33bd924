"""Held-out KL(teacher || student) at the mask positions of a store.

The teacher is known through its top-k and tail mass ``r``, so the KL is taken between the
(k+1)-outcome coarsenings: the k top tokens and "everything else"::

    KL = sum_i p_i (log p_i - log s_i) + r (log r - log S_tail),   S_tail = student mass off the top-k

This is exact when the store keeps the whole vocabulary (k = V, r = 0) and a lower bound of
the full KL otherwise (coarsening never increases a KL). Stored float16 probabilities are
renormalised with ``r`` so that they sum to one.

A sampled store keeps N draws per mask (counts ``c_i``, importance ratios ``w_i``) and the
teacher's entropy ``H``, which give an unbiased estimate of the full KL (cross-entropy minus
entropy)::

    KL ~ -sum_i (c_i w_i / N) log s_i - H

noisy per row (it can be negative), unbiased on average over the held-out rows. A hybrid
store gives the same estimate with its exact head and its tail's draws (``targets.py``)::

    KL ~ -sum_{i in K} p_i log s_i - r sum_j (c_j / N) log s_j - H

The entropy is stored in float16 (format 4): a rounding of at most 2**-11 relative per row
(round to nearest, so its errors mostly cancel over the held-out rows; at worst 2**-11 of the
mean entropy).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from smash.precompute.shared.adapters import ModelAdapter, adapter_for
from smash.store.collate import collate_examples
from smash.store.locations import DEFAULT_STALL_TIMEOUT
from smash.store.reader import StoreDataset

from .targets import kernel_targets

__all__ = ["heldout_kl", "masked_kl_rows", "sampled_kl_rows"]


def masked_kl_rows(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logmass: torch.Tensor,
) -> torch.Tensor:
    """Per-row KL (R,) in nats between the stored teacher and the student's logits (R, V)."""
    logs = torch.log_softmax(student_logits.float(), dim=-1)  # (R, V)
    top = topk_logprobs.float()
    log_tail = tail_logmass.float()
    norm = torch.logsumexp(torch.cat([top, log_tail[:, None]], dim=1), dim=1, keepdim=True)
    top, log_tail = top - norm, log_tail - norm[:, 0]
    s_top = logs.gather(1, topk_ids)  # (R, k)
    s_tail = torch.logsumexp(logs.scatter(1, topk_ids, float("-inf")), dim=1)  # (R,)
    kl = (top.exp() * (top - s_top)).sum(dim=1)
    tail_term = torch.where(
        torch.isfinite(log_tail),
        log_tail.exp() * (log_tail - s_tail),
        torch.zeros_like(log_tail),
    )
    return kl + tail_term


def sampled_kl_rows(
    student_logits: torch.Tensor,
    sample_ids: torch.Tensor,
    sample_counts: torch.Tensor,
    sample_logratios: torch.Tensor,
    teacher_entropy: torch.Tensor,
) -> torch.Tensor:
    """Per-row unbiased estimate (R,) in nats of KL(teacher || student) from a sampled row."""
    counts = sample_counts.float()
    weights = counts * sample_logratios.float().exp() / counts.sum(dim=1, keepdim=True)
    return _estimated_kl(student_logits, sample_ids, weights, teacher_entropy)


def _estimated_kl(
    student_logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, entropy: torch.Tensor
) -> torch.Tensor:
    """(R,) the cross-entropy estimate ``-sum_j weights_j log s_{ids_j}`` minus the entropy."""
    logs = torch.log_softmax(student_logits.float(), dim=-1)  # (R, V)
    return -(weights * logs.gather(1, ids)).sum(dim=1) - entropy.float()


def _kl_rows(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if "tail_counts" in batch:  # hybrid: its head and tail weights, as the loss takes them
        ids, logw, _, _ = kernel_targets(batch)
        return _estimated_kl(logits, ids, logw.exp(), batch["teacher_entropy"])
    if "sample_counts" in batch:
        names = ("topk_ids", "sample_counts", "sample_logratios", "teacher_entropy")
        return sampled_kl_rows(logits, *(batch[name] for name in names))
    return masked_kl_rows(logits, batch["topk_ids"], batch["topk_logprobs"], batch["tail_logmass"])


@torch.no_grad()
def heldout_kl(
    model: torch.nn.Module,
    store: str,
    *,
    pad_id: int,
    device: torch.device,
    max_examples: int = 512,
    batch_size: int = 32,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    sentinel_id: int | None = None,
    adapter: ModelAdapter | None = None,
) -> dict[str, Any]:
    """Mean KL over the mask rows of the first ``max_examples`` examples of ``store``
    (``sentinel_id``: a T5 model's ``<extra_id_0>``, see ``adapters.adapter_for``;
    ``adapter``: read ``model`` through this one instead, e.g. with its soft prompt).

    The examples are the store's first ``max_examples`` in order, whatever the number of
    ranks: under torch.distributed every rank reads the store whole (not its shard share)
    and evaluates examples ``rank, rank + world, ...`` of those, and the sums are
    all-reduced, so every rank returns the same numbers, and the same as one process would
    (up to float rounding). ``model`` is put in eval mode and back.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    stream = StoreDataset(
        store, shuffle=False, epochs=1, rank=0, world_size=1, stall_timeout=stall_timeout
    )
    examples = itertools.islice(stream, rank, max_examples, world)
    was_training = model.training
    model.eval()
    adapter = adapter or adapter_for(model, sentinel_id)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum KL, rows)
    while chunk := list(itertools.islice(examples, batch_size)):
        b = {k: v.to(device) for k, v in collate_examples(chunk, pad_id).items() if k != "keys"}
        hidden = adapter.answers(b).hidden
        rows = _kl_rows(adapter.logits(hidden), b)
        total += torch.stack(
            [rows.double().sum(), torch.tensor(float(len(rows)), device=device).double()]
        )
    model.train(was_training)
    if distributed:
        torch.distributed.all_reduce(total)
    return {"kl": float(total[0] / total[1].clamp(min=1)), "rows": int(total[1])}
