"""The three distillation objectives of the paper's section 4.4, as loss functions on mask rows.

``ce``    prediction distillation (Eq. 1): soft cross-entropy between the student's vocabulary
          distribution and the teacher's stored top-k + tail, through ``smash.kernels``.
``hard``  setting 7: the teacher's argmax over the task's verbalizer becomes a hard label; the
          student is trained as in prompt-based fine-tuning (cross-entropy over the label
          words' logits only, as LM-BFF does). Where the teacher pass already labelled the
          examples so (``label_source`` "teacher", e.g. sentiment) those exact labels are
          used; otherwise the argmax is read from the stored top-k.
``rule``  setting 6: the rule-based 0/1/2 labels of the sentence-pair task with verbalizer
          No/Maybe/Yes, same loss as ``hard``. It reads no teacher outputs at all.

Rows of R mask positions come from ``collate_examples``: ``mask_batch`` (R,) maps a row to
its example, whose ``labels`` (B,) hold the rule-based label (-1 when none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from smash.precompute.sentence_pair import SentencePairTask

__all__ = [
    "hard_labels",
    "label_word_loss",
    "rule_labels",
    "store_verbalizer",
    "uses_stored_labels",
]


def store_verbalizer(
    objective: str, producer: dict[str, Any], words: Sequence[str] | None, source: str
) -> tuple[str, ...] | None:
    """Label words a store is trained with: None for ``ce``; else the configured ``words``
    (an explicit override), or

    * ``hard``: the store's own verbalizer, as its manifest records it (``producer
      ["verbalizer"]``, the words whose ids the teacher pass wrote as ``verbalizer_ids``);
    * ``rule``: the sentence-pair task's verbalizer (``SentencePairTask.verbalizer``), whose
      labels 0/1/2 the rule-based labels are.

    Raises ValueError if none fit.
    """
    if objective == "ce":
        return None
    task = producer.get("task")
    if words:
        return tuple(words)
    if objective == "rule":
        if task != "sentence-pair":
            raise ValueError(
                f"{source}: objective 'rule' needs the rule-based labels of the "
                f"sentence-pair task; a {task} store has none (use 'hard')"
            )
        return tuple(SentencePairTask.verbalizer)
    if producer.get("verbalizer"):
        return tuple(producer["verbalizer"])
    raise ValueError(
        f"{source}: objective {objective!r} needs label words: the store (task "
        f"{task!r}) records no verbalizer; give the store a 'verbalizer' in the config"
    )


def uses_stored_labels(
    objective: str, producer: dict[str, Any], words: Sequence[str] | None
) -> bool:
    """Whether ``hard`` reads a store's ``labels``: they are the teacher's exact argmax over the
    store's own verbalizer (the manifest's ``label_source`` is "teacher") and no other label
    words are configured. Else ``hard_labels`` derives it from the top-k, which leaves out the
    rows whose top-k holds none of the label words."""
    return objective == "hard" and not words and producer.get("label_source") == "teacher"


def hard_labels(
    topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, verbalizer_ids: torch.Tensor
) -> torch.Tensor:
    """Index into the verbalizer of the teacher's most likely label word per row, (R,) int64.

    Only top-k entries are known, but that is enough: a label word outside the top-k is less
    likely than every word inside it, so the argmax over the label words found in a row's
    top-k is the argmax over all of them. A row whose top-k holds no label word gets -1.
    """
    hit = topk_ids.unsqueeze(-1) == verbalizer_ids.view(1, 1, -1)  # (R, k, C)
    scores = torch.where(
        hit,
        topk_logprobs.float().unsqueeze(-1),
        torch.tensor(float("-inf"), device=topk_ids.device),
    )
    best, label = scores.amax(dim=1).max(dim=-1)  # (R,)
    return torch.where(torch.isfinite(best), label, torch.full_like(label, -1))


def rule_labels(labels: torch.Tensor, mask_batch: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Each mask row's rule-based label (its example's), (R,) int64; -1 where none."""
    rows = labels[mask_batch]
    if bool((rows >= n_classes).any()):
        raise ValueError(
            f"a rule-based label {int(rows.max())} has no label word (the "
            f"verbalizer has {n_classes})"
        )
    return rows


def label_word_loss(
    features: torch.Tensor,
    decoder: torch.nn.Linear,
    verbalizer_ids: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy over the label words' logits, mean over rows with a label (0 if none).

    ``features`` (R, H) are the LM head's transformed hidden states; only the C label-word
    rows of the decoder are applied, (R, H) @ (H, C), as prompt-based fine-tuning does.
    """
    bias = decoder.bias[verbalizer_ids] if decoder.bias is not None else None
    logits = F.linear(features, decoder.weight[verbalizer_ids], bias).float()  # (R, C)
    total = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    return total / (labels >= 0).sum().clamp(min=1)
