"""A batch's teacher targets as the loss kernels take them, whether its store keeps the teacher's
top-k, tokens sampled from it, or both (hybrid), and the rule that one run uses one estimator
of Eq. 1.

A sampled store's row holds the distinct ids of N draws, their counts ``c_i`` and importance
ratios ``w_i`` (1 unless drawn at a proposal temperature). Given to the kernels as the
log-probabilities ``log(c_i w_i)`` with no tail (``tail_logmass = -inf``), the kernels' target
is ``c_i w_i / (N W)`` with ``W = sum_i c_i w_i / N``; weighting the row by ``W`` makes its loss
``-sum_i (c_i w_i / N) log s_i``: the unbiased estimate of Eq. 1
(``precompute/shared/sampled_targets.py``). At proposal temperature 1, ``W = 1`` exactly and
the target is ``c / N``. With no tail, the ``bucket`` and ``uniform`` tails add nothing, so
every ``tail`` setting gives that estimate; padding entries (count 0) get weight 0. No (R, V)
target is ever made.

A hybrid store's row is given as its top-k ids with their log-probabilities, then its tail
draws with ``log r + log(c_j / N)`` (``r`` the tail mass), again with no tail and the row
weight ``W = sum_i p_i + r sum_j c_j / N`` (1 up to the float16 rounding of the head): the
loss ``-sum_i p_i log s_i - r sum_j (c_j / N) log s_j``, exact on the head and unbiased on the
tail.
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
    if "tail_counts" in batch:  # hybrid: the head exact, the tail's draws weighted by its mass
        counts = batch["tail_counts"].float()
        # c_j / N, N the row's draws: the store's, or an epoch's subset of them (draws_per_epoch)
        drawn = counts.sum(dim=1, keepdim=True).clamp(min=1)
        tail = batch["tail_logmass"].float()[:, None] + (counts / drawn).log()
        logw = torch.cat([batch["topk_logprobs"].float(), tail], dim=1)  # -inf on padding
        ids = torch.cat([batch["topk_ids"], batch["tail_ids"]], dim=1)
        return ids, logw, _no_tail(counts), torch.exp(logw).sum(dim=1)
    if "topk_logprobs" in batch:
        return batch["topk_ids"], batch["topk_logprobs"], batch["tail_logmass"], None
    counts = batch["sample_counts"].float()
    logw = counts.log() + batch["sample_logratios"].float()  # -inf on padding (count 0)
    rows = torch.exp(logw).sum(dim=1) / counts.sum(dim=1)  # W: 1 at proposal temperature 1
    return batch["topk_ids"], logw, _no_tail(counts), rows


def _no_tail(rows: torch.Tensor) -> torch.Tensor:
    """(R,) tail_logmass -inf: the rows' targets say everything."""
    return torch.full(rows.shape[:1], float("-inf"), device=rows.device)


def importance_weighted(manifest: Manifest) -> bool:
    """Whether a store's rows carry weights that the kernels' normalised target would lose:
    importance ratios (drawn at a proposal temperature), or a hybrid row's head and tail."""
    if manifest.targets["mode"] == "hybrid":
        return True
    return manifest.sampled and manifest.targets["proposal_temperature"] != 1.0


def estimator_of(manifest: Manifest, tail: str) -> str:
    """Which estimate of Eq. 1 a store's targets give under the run's ``tail`` mode: stores
    with the same one can be mixed (sampled and hybrid stores are both unbiased)."""
    if manifest.targets["mode"] != "topk":
        return manifest.targets["estimator"]
    return f"top-k with the {tail!r} tail"


def _described(manifest: Manifest, tail: str) -> str:
    if manifest.targets["mode"] != "topk":
        return f"{manifest.targets['mode']} targets ({manifest.targets['estimator']})"
    return f"top-k targets with the {tail!r} tail"


def check_estimators(paths: Sequence[str], manifests: Sequence[Manifest], tail: str) -> None:
    """Refuse a run whose stores give different estimates of Eq. 1 (say, a biased top-k and
    an unbiased sampled or hybrid one): its loss would mix two objectives. Names both stores."""
    first = estimator_of(manifests[0], tail)
    for path, manifest in zip(paths[1:], manifests[1:]):
        if estimator_of(manifest, tail) != first:
            raise ValueError(
                f"{paths[0]} gives {_described(manifests[0], tail)} and {path} gives "
                f"{_described(manifest, tail)}: a run mixes stores only when their estimators "
                f"of the distillation loss agree; train on them apart"
            )
