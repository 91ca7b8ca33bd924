"""``mlm``: the masked-LM loss, cross-entropy of the student's whole-vocabulary logits against
the token each masked position held (``mlm_labels``), averaged over the masked positions.
Teacher-free; it needs a store written by ``precompute-teacher --task mlm`` (settings 5a and
5b: ``5 ce + 2 mlm`` offline, ``+ 1 cos`` with the teacher loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from . import register_objective
from .base import Objective, StoreContext, StudentOutputs

__all__ = ["MaskedLanguageModeling"]


@register_objective
class MaskedLanguageModeling(Objective):
    name = "mlm"
    needs = frozenset({"mlm_labels"})

    def for_store(self, store: StoreContext) -> None:
        task = store.manifest.producer.get("task")
        if "masking" not in store.manifest.producer.get("task_options", {}):
            raise ValueError(
                f"{store.path}: objective 'mlm' needs the original tokens at the masks, which "
                f"only a masked-text store holds (precompute-teacher --task mlm); this store's "
                f"task is {task!r}"
            )

    def loss(
        self, student: StudentOutputs, batch: Mapping[str, torch.Tensor], state: Any
    ) -> torch.Tensor:
        return F.cross_entropy(student.logits.float(), batch["mlm_labels"], ignore_index=-100)
