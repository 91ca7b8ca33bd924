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

__all__ = [
    "SAMPLED_ESTIMATOR",
    "TeacherSample",
    "counter_uniforms",
    "sample_rows",
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
    entropy: torch.Tensor  # (R,) float32: the teacher's entropy in nats (for held-out KL)
    verbalizer_logprobs: torch.Tensor | None = None  # (R, C) float32 at ``verbalizer_ids``

    def stored_fields(self) -> dict[str, torch.Tensor]:
        """The values under the names of a sampled store's teacher fields (``schema.py``)."""
        return {
            "topk_ids": self.ids,
            "sample_counts": self.counts,
            "sample_logratios": self.logratios,
            "teacher_entropy": self.entropy,
        }


def _distinct(draws: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids and counts (R, N) of draws (R, N); the unused slots get count 0 and the
    smallest ids not drawn in the row, so every row stays duplicate-free."""
    n = draws.shape[1]
    ordered = draws.sort(dim=1).values
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = new.long().cumsum(1) - 1  # (R, N) the distinct id each draw counts for
    counts = torch.zeros_like(ordered).scatter_add_(1, slot, torch.ones_like(ordered))
    ids = torch.zeros_like(ordered).scatter_(1, slot, ordered)
    distinct = new.sum(1, keepdim=True)  # (R, 1)
    # Padding: at most N ids are taken, so the first min(2N, V) ids hold N free ones.
    candidates = torch.arange(min(2 * n, vocab), device=draws.device)
    taken = (candidates[None, :, None] == ordered[:, None, :]).any(-1)  # (R, C)
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
    entropy = -(logp64.exp() * logp64).nan_to_num(0.0).sum(-1)
    return ids, counts, logratios, entropy.float()


@torch.inference_mode()
def sampled_targets(
    adapter: ModelAdapter,
    hidden: torch.Tensor,
    uniforms: torch.Tensor,
    verbalizer_ids: torch.Tensor | None = None,
    proposal_temperature: float = 1.0,
) -> TeacherSample:
    """N draws per answer row ``hidden`` (R, H) from the teacher's full distribution at
    ``proposal_temperature``, one per column of ``uniforms`` (R, N) (``counter_uniforms``);
    with ``verbalizer_ids`` also the label words' log-probabilities, as ``topk_targets``
    gives them."""
    logp = torch.log_softmax(adapter.logits(hidden).float(), dim=-1)  # (R, V)
    drawn = sample_rows(logp, uniforms, proposal_temperature)
    verbalizer = logp[:, verbalizer_ids] if verbalizer_ids is not None else None
    return TeacherSample(*drawn, verbalizer)


def targets_record(samples: int, seed: int, proposal_temperature: float = 1.0) -> dict:
    """The manifest's ``targets`` section of a sampled store."""
    return {
        "mode": "sampled",
        "samples": samples,
        "proposal_temperature": float(proposal_temperature),
        "estimator": SAMPLED_ESTIMATOR,
        "seed": seed,
    }
