"""``rule``: the paper's setting 6, the sentence-pair task's rule-based labels 0/1/2 (different
documents / same document / adjacent) with the label words No/Maybe/Yes, trained as
prompt-based fine-tuning. It reads no teacher output at all."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from . import register_objective
from .base import Objective, StoreContext, StudentOutputs
from .label_words import label_word_loss, verbalizer_of

__all__ = ["RuleLabels", "rule_labels"]


def rule_labels(labels: torch.Tensor, mask_batch: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Each mask row's rule-based label (its example's), (R,) int64; -1 where none."""
    rows = labels[mask_batch]
    if bool((rows >= n_classes).any()):
        raise ValueError(
            f"a rule-based label {int(rows.max())} has no label word (the "
            f"verbalizer has {n_classes})"
        )
    return rows


@register_objective
class RuleLabels(Objective):
    name = "rule"
    needs = frozenset({"labels"})

    def for_store(self, store: StoreContext) -> torch.Tensor:
        """The label words' ids: the config's for the store, else the sentence-pair task's
        (as its manifest records them), whose rule-based labels the store's must be."""
        producer = store.manifest.producer
        if not store.spec.verbalizer and producer.get("task") != "sentence-pair":
            raise ValueError(
                f"{store.path}: objective 'rule' needs the rule-based labels of the "
                f"sentence-pair task; a {producer.get('task')} store has none (use 'hard')"
            )
        return verbalizer_of(store, tuple(producer.get("verbalizer", ())))

    def loss(
        self, student: StudentOutputs, batch: Mapping[str, torch.Tensor], state: torch.Tensor
    ) -> torch.Tensor:
        verbalizer = state.to(student.hidden.device)
        targets = rule_labels(batch["labels"], batch["mask_batch"], len(verbalizer))
        return label_word_loss(student.adapter.logits_at(student.features, verbalizer), targets)
