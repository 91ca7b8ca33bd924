"""The teacher's output at the answer slots: top-k log-probabilities plus the exact tail mass.

Only the answer rows go through the LM head (a (R, H) @ (H, V) product instead of
(B * L, H) @ (H, V)); the log-softmax is taken in float32 whatever the model's dtype.
``tail_logmass = log(sum of the probabilities outside the top-k)`` is a logsumexp over the
non-top-k entries, so it keeps full float32 precision even when the top-k holds almost all of
the mass (``log(1 - sum p)`` would cancel). The teacher pass and the trainer's online teacher
both call ``teacher_topk``, so offline and online targets are the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import ModelAdapter, Prompts

__all__ = ["TeacherTopK", "teacher_topk", "topk_of", "topk_targets"]


@dataclass
class TeacherTopK:
    ids: torch.Tensor  # (R, k) int64
    logprobs: torch.Tensor  # (R, k) float16, sorted descending
    tail_logmass: torch.Tensor  # (R,) float32
    verbalizer_logprobs: torch.Tensor | None = None  # (R, C) float32 at ``verbalizer_ids``

    def stored_fields(self) -> dict[str, torch.Tensor]:
        """The values under the names of the store's teacher fields (``schema.TEACHER_FIELDS``)."""
        return {
            "topk_ids": self.ids,
            "topk_logprobs": self.logprobs,
            "tail_logmass": self.tail_logmass,
        }


@torch.inference_mode()
def topk_targets(
    adapter: ModelAdapter,
    hidden: torch.Tensor,
    k: int,
    verbalizer_ids: torch.Tensor | None = None,
) -> TeacherTopK:
    """Top-k of the float32 log-softmax of the answer rows ``hidden`` (R, H); with
    ``verbalizer_ids`` (the task's label words) also their log-probabilities."""
    logp = torch.log_softmax(adapter.logits(hidden).float(), dim=-1)  # (R, V)
    return topk_of(logp, k, verbalizer_ids)


def topk_of(logp: torch.Tensor, k: int, verbalizer_ids: torch.Tensor | None = None) -> TeacherTopK:
    """``topk_targets`` of float32 log-probabilities ``logp`` (R, V) already computed."""
    if k > logp.shape[-1]:
        raise ValueError(f"k={k} is larger than the vocabulary ({logp.shape[-1]})")
    top = torch.topk(logp, k, dim=-1, sorted=True)
    rest = logp.scatter(1, top.indices, float("-inf"))
    tail_logmass = (
        torch.logsumexp(rest, dim=-1)
        if k < logp.shape[-1]
        else torch.full_like(logp[:, 0], float("-inf"))
    )
    verbalizer = logp[:, verbalizer_ids] if verbalizer_ids is not None else None
    return TeacherTopK(top.indices, top.values.to(torch.float16), tail_logmass, verbalizer)


@torch.inference_mode()
def teacher_topk(
    adapter: ModelAdapter,
    prompts: Prompts,
    k: int,
    verbalizer_ids: torch.Tensor | None = None,
) -> TeacherTopK:
    """``topk_targets`` at the answer slots of a padded batch of prompts (``Prompts``)."""
    return topk_targets(adapter, adapter.answers(prompts).hidden, k, verbalizer_ids)
