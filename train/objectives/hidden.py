"""``hidn``: hidden-state distillation, the paper's Eq. 2 (setting 3, ``Lce + 0.01 Lhidn``).

    Lhidn = sum over m = 0..M_stu of MSE(H_stu[m], H_tea[g(m)])

H[0] is the embedding output, H[m] the output of layer m, g the layer map of ``internals.py``.
Each MSE is the mean of the squared differences over the real (non-padding) tokens of the
whole input, every one of them (not only the masks), and over the hidden dimension. Needs the
online teacher and equal hidden sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from . import register_objective
from .base import Objective, StudentOutputs
from .internals import check_same, layer_map, real_tokens

__all__ = ["HiddenStateDistillation", "hidden_state_loss"]


def hidden_state_loss(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], real: torch.Tensor
) -> torch.Tensor:
    """Eq. 2 from the two models' hidden states (M + 1 of (B, L, H)) and ``real`` (B, L)."""
    g = layer_map(len(student) - 1, len(teacher) - 1)
    return sum(
        F.mse_loss(student[m][real].float(), teacher[g[m]][real].float())
        for m in range(len(student))
    )


@register_objective
class HiddenStateDistillation(Objective):
    name = "hidn"
    needs = frozenset({"teacher_hidden_states"})
    student_needs = frozenset({"hidden_states"})

    def check_teacher(self, student: Any, teacher: Any) -> None:
        check_same(self.name, "hidden sizes", "hidden_size", student, teacher)

    def loss(
        self, student: StudentOutputs, batch: Mapping[str, torch.Tensor], state: Any
    ) -> torch.Tensor:
        return hidden_state_loss(
            student.answers.hidden_states, batch["teacher_hidden_states"], real_tokens(batch)
        )
