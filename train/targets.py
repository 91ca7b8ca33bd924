"""A batch's teacher targets as the loss kernels take them, whether its store keeps the teacher's
top-k or tokens sampled from it, and the rule that one run uses one estimator of Eq. 1.

A sampled store's row holds the distinct ids of N draws, their counts ``c_i`` and importance
ratios ``w_i`` (1 unless drawn at a proposal temperature). Given to the kernels as the
log-probabilities ``log(c_i w_i)`` with no tail (``tail_logmass = -inf``), the kernels' target
is ``c_i w_i / (N W)`` with ``W = sum_i c_i w_i / N``; weighting the row by ``W`` makes its loss
``-sum_i (c_i w_i / N) log s_i``: the unbiased estimate of Eq. 1
(``precompute/shared/sampled_targets.py``). At proposal temperature 1, ``W = 1`` exactly and
the target is ``c / N``. With no tail, the ``bucket`` and ``uniform`` tails add nothing, so
every ``tail`` setting gives that estimate; padding entries (count 0) get weight 0. No (R, V)
target is ever made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from smash.store.manifest import Manifest

__all__ = ["check_estimators", "estimator_of", "importance_weighted", "kernel_targets"]


def kernel_targets(
    batch: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(ids (R, k), log-weights (R, k), tail_logmass (R,), row weights (R,) or None) of a
    collated batch for ``smash.kernels.soft_cross_entropy``: the stored top-k as it is (also
    what an online teacher filled in; no row weights), or a sampled store's
    ``log(counts) + log-ratios`` with an empty tail and the row weights ``W``."""
    if "topk_logprobs" in batch:
        return batch["topk_ids"], batch["topk_logprobs"], batch["tail_logmass"], None
    counts = batch["sample_counts"].float()
    logw = counts.log() + batch["sample_logratios"].float()  # -inf on padding (count 0)
    rows = torch.exp(logw).sum(dim=1) / counts.sum(dim=1)  # W: 1 at proposal temperature 1
    empty_tail = torch.full(counts.shape[:1], float("-inf"), device=counts.device)
    return batch["topk_ids"], logw, empty_tail, rows


def importance_weighted(manifest: Manifest) -> bool:
    """Whether a store's rows carry importance ratios (drawn at a proposal temperature)."""
    return manifest.sampled and manifest.targets["proposal_temperature"] != 1.0


def estimator_of(manifest: Manifest, tail: str) -> str:
    """Which estimate of Eq. 1 a store's targets give under the run's ``tail`` mode."""
    if manifest.sampled:
        return f"sampled targets ({manifest.targets['estimator']})"
    return f"top-k targets with the {tail!r} tail"


def check_estimators(paths: Sequence[str], manifests: Sequence[Manifest], tail: str) -> None:
    """Refuse a run whose stores give different estimates of Eq. 1 (say, a biased top-k and
    an unbiased sampled one): its loss would mix two objectives. Names both stores."""
    first = estimator_of(manifests[0], tail)
    for path, manifest in zip(paths[1:], manifests[1:]):
        theirs = estimator_of(manifest, tail)
        if theirs != first:
            raise ValueError(
                f"{paths[0]} gives {first} and {path} gives {theirs}: a run mixes stores only "
                f"when their estimators of the distillation loss agree; train on them apart"
            )
