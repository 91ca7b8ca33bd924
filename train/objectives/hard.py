"""``hard``: the paper's setting 7, the teacher's most likely label word as a hard label, trained
as prompt-based fine-tuning (cross-entropy over the label words' logits only, as LM-BFF does).

Where the teacher pass already labelled the examples so (the manifest's ``label_source`` is
"teacher", e.g. sentiment) those exact labels are used, and so are a labeller's (``label_source``
"labeller": sentiment's ``--labeller``, whose class ``i`` is label word ``i``); otherwise the argmax is read from the
stored top-k, which leaves out rows whose top-k holds none of the label words. On a sampled
store it is the label word drawn most often, an estimate of the teacher's argmax; rows where no label word was drawn are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..targets import kernel_targets
from . import register_objective
from .base import Objective, StoreContext, StudentOutputs
from .label_words import label_word_loss, verbalizer_of

__all__ = ["HardLabels", "hard_labels"]


def hard_labels(
    topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, verbalizer: torch.Tensor
) -> torch.Tensor:
    """Index into the verbalizer of the teacher's most likely label word per row, (R,) int64.

    Only top-k entries are known, but that is enough: a label word outside the top-k is less
    likely than every word inside it, so the argmax over the label words found in a row's
    top-k is the argmax over all of them. A row whose top-k holds no label word gets -1.
    """
    hit = topk_ids.unsqueeze(-1) == verbalizer.view(1, 1, -1)  # (R, k, C)
    scores = torch.where(
        hit,
        topk_logprobs.float().unsqueeze(-1),
        torch.tensor(float("-inf"), device=topk_ids.device),
    )
    best, label = scores.amax(dim=1).max(dim=-1)  # (R,)
    return torch.where(torch.isfinite(best), label, torch.full_like(label, -1))


@dataclass(frozen=True)
class HardStore:
    verbalizer: torch.Tensor  # (C,) label word ids
    stored_labels: bool  # the batch's labels are the teacher's argmax over these words


@register_objective
class HardLabels(Objective):
    name = "hard"
    needs = frozenset({"topk_ids", "topk_logprobs", "labels"})

    def for_store(self, store: StoreContext) -> HardStore:
        """The store's own label words (as its manifest records them) unless the config gives
        others; its labels are used when they are the teacher's argmax over exactly those."""
        producer = store.manifest.producer
        if not store.spec.verbalizer and not producer.get("verbalizer"):
            raise ValueError(
                f"{store.path}: objective 'hard' needs label words: the store (task "
                f"{producer.get('task')!r}) records no verbalizer; give the store a "
                f"'verbalizer' in the config"
            )
        source = producer.get("label_source")
        words = verbalizer_of(store, tuple(producer.get("verbalizer", ())))
        if source == "labeller" and len(words) != len(producer["verbalizer"]):
            raise ValueError(
                f"{store.path}: its labels are a classifier's {len(producer['verbalizer'])} "
                f"classes; give the store as many label words, not {len(words)}"
            )
        stored = source == "labeller" or (not store.spec.verbalizer and source == "teacher")
        return HardStore(words, stored)

    def loss(
        self, student: StudentOutputs, batch: Mapping[str, torch.Tensor], state: HardStore
    ) -> torch.Tensor:
        verbalizer = state.verbalizer.to(student.hidden.device)
        if state.stored_labels:
            targets = batch["labels"][batch["mask_batch"]]
        else:
            if "topk_logprobs" in batch:  # top-k, or a hybrid store's exact head
                ids, scores = batch["topk_ids"], batch["topk_logprobs"]
            else:  # sampled: log(c w), -inf if not drawn
                ids, scores, _, _ = kernel_targets(batch)
            targets = hard_labels(ids, scores, verbalizer)
        return label_word_loss(student.adapter.logits_at(student.features, verbalizer), targets)
