"""What the objectives that distil a teacher's internals (``hidn``, ``attn``, ``cos``) share:
the layer map, the real-token mask, and the check that the two models can be compared.

The paper (Eq. 2 and 3) maps student layer m to teacher layer g(m) = m * (M_tea / M_stu), the
"uniform" strategy of TinyBERT; here g(m) = m * M_tea // M_stu, which is that when M_stu
divides M_tea and still sends the last layer to the last layer when it does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["check_same", "layer_map", "real_tokens"]


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """g(m) for m = 0..student_layers (0: the embedding output)."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(
            f"layer counts must be >= 1, got student {student_layers}, teacher {teacher_layers}"
        )
    return [m * teacher_layers // student_layers for m in range(student_layers + 1)]


def real_tokens(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, L) bool: the tokens that are not padding (the attention mask)."""
    return batch["attention_mask"].bool()


def check_same(objective: str, what: str, attribute: str, student: Any, teacher: Any) -> None:
    """Refuse models (their HF configs) that differ in ``attribute``, naming both models."""
    ours, theirs = getattr(student, attribute), getattr(teacher, attribute)
    if ours != theirs:
        raise ValueError(
            f"objective {objective!r} compares the student's and the teacher's {what}, which "
            f"must be equal: the student {student._name_or_path} has {ours} ({attribute}), "
            f"the teacher {teacher._name_or_path} has {theirs}"
        )
