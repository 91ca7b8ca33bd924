"""``attn``: attention distillation, the paper's Eq. 3 (setting 4, ``Lce + 0.01 Lattn``).

    Lattn = sum over m = 1..M_stu, h = 1..H of MSE(A_stu[m, h], A_tea[g(m), h])

A[m, h] is head h's attention probabilities in layer m, g the layer map of ``internals.py``.
Probabilities means before attention dropout: the student trains in train mode, and with
DistilRoBERTa's attention dropout of 0.1 the weights after dropout would add p/(1-p)·mean(a²) to
the loss and pull the student towards uniform attention; both models are therefore loaded on
the ``smash.precompute.shared.attention_probabilities`` path, which returns them before dropout
(``train.student.attention_path``).

Each MSE is the mean over every (query, key) pair of real tokens in the batch, pooled: each
pair weighs the same, so a long example counts more than a short one, as in a token-level
loss. (TinyBERT, whose uniform layer map the paper takes, fits the unnormalised scores instead
of the probabilities and takes ``MSELoss`` over the whole (B, heads, L, L) tensor with padded
entries set to 0, so its mean also counts the padded pairs; the paper says "MSE" and
"attention", and we read the probabilities over real pairs.) Needs the online teacher and
equal head counts; the attention path is an eager one (slower than SDPA;
``benchmarks/bench_trainer.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import register_objective
from .base import Objective, StudentOutputs
from .internals import check_same, layer_map, real_tokens

__all__ = ["AttentionDistillation", "attention_loss"]


def attention_loss(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], real: torch.Tensor
) -> torch.Tensor:
    """Eq. 3 from the two models' attentions (M of (B, heads, L, L)) and ``real`` (B, L)."""
    g = layer_map(len(student), len(teacher))
    pairs = (real[:, None, :, None] & real[:, None, None, :]).float()  # (B, 1, L, L)
    count = pairs.sum()
    total = None
    for m in range(1, len(student) + 1):
        ours, theirs = student[m - 1].float(), teacher[g[m] - 1].float()
        if ours.shape != theirs.shape:
            raise ValueError(
                f"objective 'attn': student layer {m} has attentions of shape "
                f"{tuple(ours.shape)}, teacher layer {g[m]} {tuple(theirs.shape)}"
            )
        per_head = ((ours - theirs) ** 2 * pairs).sum(dim=(0, 2, 3)) / count  # (heads,)
        total = per_head.sum() if total is None else total + per_head.sum()
    return total


@register_objective
class AttentionDistillation(Objective):
    name = "attn"
    needs = frozenset({"teacher_attentions"})
    student_needs = frozenset({"attentions"})

    def check_teacher(self, student: Any, teacher: Any) -> None:
        check_same(self.name, "attention head counts", "num_attention_heads", student, teacher)

    def loss(
        self, student: StudentOutputs, batch: Mapping[str, torch.Tensor], state: Any
    ) -> torch.Tensor:
        return attention_loss(
            student.answers.attentions, batch["teacher_attentions"], real_tokens(batch)
        )
