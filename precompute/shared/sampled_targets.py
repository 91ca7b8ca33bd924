"""Sampled teacher targets: N tokens drawn at each answer slot from the teacher's full distribution.

Random-sampling distillation (Anshumann et al., "Sparse Logit Sampling", ACL 2025) stores, per
mask, the distinct ids of N draws and how often each was drawn (``counts``). The draws come
from a proposal ``q = softmax(log p / tau)``, the teacher at a proposal temperature ``tau``
(``tau > 1`` reaches further into the tail), with the importance ratio ``w_i = p_i / q_i`` of
each distinct id stored as ``log w_i`` (float32). The estimate of the paper's Eq. 1 is::

    L = -sum_i (c_i w_i / N) log s_i      E[c_i w_i / N] = p_i, so E[L] = -sum_v p_v log s_v

unbiased, as is its gradient with respect to the student's logits (``W s - c w/N`` with
``W = sum_i c_i w_i / N``, against ``s - p``). This is the estimator chosen: the
self-normalised one (dividing by ``W`` instead of N) has lower variance but is biased when
``tau != 1``. At ``tau = 1`` (the default) every ratio is 1, ``W = 1`` and the two are the same
number: nothing is renormalised, nothing is dropped.

*Hybrid* targets keep the teacher's top-k exactly (as a top-k store does: ids, float16
log-probabilities, the tail mass ``r``) and draw N tokens from the teacher restricted to the
ids outside it, ``p_v / r``, kept as distinct ids with counts. The estimate::

    L = -sum_{i in K} p_i log s_i - r sum_j (c_j / N) log s_j

is exact on the head and unbiased on the tail (``E[r c_j / N] = p_j``), so its variance is the
tail's alone: a top-k store's fat tail, which its ``bucket`` mode spreads evenly (biased),
is estimated without bias at a few bytes per draw. A row whose top-k holds all of the mass
(``r = 0``) draws nothing (counts 0).

The draws are a pure function of (seed, example key, mask index, draw index):
``counter_uniforms`` hashes those four integers (SplitMix64's finaliser, chained) into
uniforms in [0, 1), with no generator state, and each uniform picks a token through the
inverse CDF of the proposal's float64 probabilities. So a store's bytes never depend on
batching, ranks, the device's random state or an interrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from smash.store.manifest import SAMPLED_ESTIMATOR  # -sum (c_i/N) log s_i; see the module doc

from .adapters import ModelAdapter
from .teacher_targets import TeacherTopK, topk_of

__all__ = [
    "SAMPLED_ESTIMATOR",
    "TeacherHybrid",
    "TeacherSample",
    "counter_uniforms",
    "hybrid_record",
    "hybrid_targets",
    "sample_rows",
    "sample_tail_rows",
    "sampled_targets",
    "targets_record",
]


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_uniforms(seed: int, keys: np.ndarray, masks: np.ndarray, n: int) -> np.ndarray:
    """(R, n) float64 uniforms in [0, 1): draw ``j`` of mask ``masks[r]`` of example
    ``keys[r]``, a pure function of (seed, key, mask, j). Keys and masks are non-negative."""
    with np.errstate(over="ignore"):
        state = _mix(np.full(len(keys), np.uint64(seed) & _MASK64))
        state = _mix(state ^ np.asarray(keys, dtype=np.uint64))
        state = _mix(state ^ np.asarray(masks, dtype=np.uint64))
        bits = _mix(state[:, None] ^ np.arange(n, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # 53 random bits each


@dataclass
class TeacherSample:
    ids: torch.Tensor  # (R, N) int64: the distinct drawn ids, then padding ids (count 0)
    counts: torch.Tensor  # (R, N) int64: draws of each id; they sum to N per row
    logratios: torch.Tensor  # (R, N) float32: log(p/q) of each id (0 at tau = 1 and on padding)
    entropy: torch.Tensor  # (R,) float16: the teacher's entropy in nats (for held-out KL)
    verbalizer_logprobs: torch.Tensor | None = None  # (R, C) float32 at ``verbalizer_ids``

    def stored_fields(self) -> dict[str, torch.Tensor]:
        """The values under the names of a sampled store's teacher fields (``schema.py``)."""
        return {
            "topk_ids": self.ids,
            "sample_counts": self.counts,
            "sample_logratios": self.logratios,
            "teacher_entropy": self.entropy,
        }


def _distinct(
    draws: torch.Tensor, vocab: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids and counts (R, N) of draws (R, N); the unused slots get count 0 and the
    smallest ids neither drawn in the row nor in its ``exclude`` (R, k) ids, so every row stays
    duplicate-free (a hybrid row's tail beside its head too)."""
    n = draws.shape[1]
    ordered = draws.sort(dim=1).values
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = new.long().cumsum(1) - 1  # (R, N) the distinct id each draw counts for
    counts = torch.zeros_like(ordered).scatter_add_(1, slot, torch.ones_like(ordered))
    ids = torch.zeros_like(ordered).scatter_(1, slot, ordered)
    distinct = new.sum(1, keepdim=True)  # (R, 1)
    # Padding: at most N + k ids are taken, so the first min(2N + k, V) ids hold N free ones.
    others = ordered if exclude is None else torch.cat([ordered, exclude], dim=1)
    candidates = torch.arange(min(n + others.shape[1], vocab), device=draws.device)
    taken = (candidates[None, :, None] == others[:, None, :]).any(-1)  # (R, C)
    free = torch.where(taken, vocab, candidates[None, :]).sort(dim=1).values[:, :n]
    position = torch.arange(n, device=draws.device)[None, :]
    pad = free.gather(1, (position - distinct).clamp(min=0))
    return torch.where(position < distinct, ids, pad), counts


def sample_rows(
    logp: torch.Tensor, uniforms: torch.Tensor, proposal_temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, counts, logratios, entropy) of N draws per row of the teacher's log-probabilities
    ``logp`` (R, V) at ``proposal_temperature``, one per column of ``uniforms`` (R, N)."""
    vocab = logp.shape[-1]
    if uniforms.shape[1] > vocab:
        raise ValueError(f"--samples {uniforms.shape[1]} is larger than the vocabulary ({vocab})")
    logp64 = logp.double()  # (R, V)
    logq = logp64
    if proposal_temperature != 1.0:
        logq = torch.log_softmax(logp64 / proposal_temperature, dim=-1)
    cdf = logq.exp().cumsum(dim=-1)
    # the first id whose cumulative probability exceeds u * total: never an id of probability 0
    draws = torch.searchsorted(cdf, uniforms.to(cdf) * cdf[:, -1:], right=True)
    ids, counts = _distinct(draws.clamp_(max=vocab - 1), vocab)
    ratios = (logp64 - logq).gather(1, ids)  # exactly 0 at temperature 1
    logratios = torch.where(counts > 0, ratios, 0.0).float()
    return ids, counts, logratios, _entropy(logp64)


def _entropy(logp64: torch.Tensor) -> torch.Tensor:
    """(R,) float16: the rows' entropy in nats, as a store keeps it (2 bytes a mask)."""
    return (-(logp64.exp() * logp64).nan_to_num(0.0).sum(-1)).to(torch.float16)


def sample_tail_rows(
    logp: torch.Tensor, head: torch.Tensor, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, counts) (R, N) of N draws per row from the teacher's log-probabilities ``logp``
    (R, V) restricted to the ids outside ``head`` (R, k), one per column of ``uniforms``; a row
    whose head holds all of the mass draws nothing (counts 0). Padding ids are never head ids."""
    vocab, n = logp.shape[-1], uniforms.shape[1]
    if head.shape[1] + n > vocab:
        raise ValueError(
            f"--k {head.shape[1]} + --samples {n} is more than the vocabulary ({vocab})"
        )
    tail = logp.double().scatter(1, head, float("-inf"))
    cdf = tail.exp().cumsum(dim=-1)
    total = cdf[:, -1:]
    empty = total[:, 0] <= 0  # all of the mass in the head: nothing to draw
    # the first id whose cumulative probability exceeds u * total: never a head id (their
    # probability is 0 here)
    draws = torch.searchsorted(cdf, uniforms.to(cdf) * total, right=True).clamp_(max=vocab - 1)
    if empty.any():  # draws of no mass: the smallest id outside the head, then dropped
        candidates = torch.arange(head.shape[1] + 1, device=head.device)
        in_head = (candidates[None, :, None] == head[empty][:, None, :]).any(-1)
        draws[empty] = (~in_head).long().argmax(dim=1, keepdim=True).expand(-1, n)
    ids, counts = _distinct(draws, vocab, exclude=head)
    counts[empty] = 0
    return ids, counts


def _teacher_logp(adapter: ModelAdapter, hidden: torch.Tensor, vocab: int | None) -> torch.Tensor:
    """(R, V) float32 log-probabilities over the tokenizer's ``vocab`` ids: a model may have
    more output rows than its tokenizer has tokens (T5: 32,128 for 32,100), ids no store can
    hold and no draw may pick."""
    logits = adapter.logits(hidden).float()
    if vocab is not None and vocab < logits.shape[-1]:
        logits[:, vocab:] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def sampled_targets(
    adapter: ModelAdapter,
    hidden: torch.Tensor,
    uniforms: torch.Tensor,
    verbalizer_ids: torch.Tensor | None = None,
    proposal_temperature: float = 1.0,
    vocab: int | None = None,
) -> TeacherSample:
    """N draws per answer row ``hidden`` (R, H) from the teacher's full distribution (over the
    first ``vocab`` ids, the tokenizer's) at ``proposal_temperature``, one per column of
    ``uniforms`` (R, N) (``counter_uniforms``); with ``verbalizer_ids`` also the label words'
    log-probabilities, as ``topk_targets`` gives them."""
    logp = _teacher_logp(adapter, hidden, vocab)  # (R, V)
    drawn = sample_rows(logp, uniforms, proposal_temperature)
    verbalizer = logp[:, verbalizer_ids] if verbalizer_ids is not None else None
    return TeacherSample(*drawn, verbalizer)


@dataclass
class TeacherHybrid:
    head: TeacherTopK  # the top-k, exact
    tail_ids: torch.Tensor  # (R, N) int64: distinct ids drawn outside the top-k, then padding
    tail_counts: torch.Tensor  # (R, N) int64: draws of each; they sum to N (0: no tail mass)
    entropy: torch.Tensor  # (R,) float16: the teacher's entropy in nats (for held-out KL)

    @property
    def verbalizer_logprobs(self) -> torch.Tensor | None:
        return self.head.verbalizer_logprobs

    def stored_fields(self) -> dict[str, torch.Tensor]:
        """The values under the names of a hybrid store's teacher fields (``schema.py``)."""
        return {
            **self.head.stored_fields(),
            "tail_ids": self.tail_ids,
            "tail_counts": self.tail_counts,
            "teacher_entropy": self.entropy,
        }


@torch.inference_mode()
def hybrid_targets(
    adapter: ModelAdapter,
    hidden: torch.Tensor,
    k: int,
    uniforms: torch.Tensor,
    verbalizer_ids: torch.Tensor | None = None,
    vocab: int | None = None,
) -> TeacherHybrid:
    """The top-k of the answer rows ``hidden`` (R, H) (as ``topk_targets``) and N draws per
    row from outside it (over the first ``vocab`` ids, the tokenizer's), one per column of
    ``uniforms`` (R, N) (``counter_uniforms``)."""
    logp = _teacher_logp(adapter, hidden, vocab)  # (R, V)
    head = topk_of(logp, k, verbalizer_ids)
    ids, counts = sample_tail_rows(logp, head.ids, uniforms)
    return TeacherHybrid(head, ids, counts, _entropy(logp.double()))


def hybrid_record(samples: int, seed: int) -> dict:
    """The manifest's ``targets`` section of a hybrid store."""
    return {"mode": "hybrid", "samples": samples, "estimator": SAMPLED_ESTIMATOR, "seed": seed}


def targets_record(samples: int, seed: int, proposal_temperature: float = 1.0) -> dict:
    """The manifest's ``targets`` section of a sampled store."""
    return {
        "mode": "sampled",
        "samples": samples,
        "proposal_temperature": float(proposal_temperature),
        "estimator": SAMPLED_ESTIMATOR,
        "seed": seed,
    }
