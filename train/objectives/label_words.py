"""What the objectives that train on labels (``hard``, ``rule``) share: the label words of a
store, and prompt-based fine-tuning's cross-entropy over their logits at the mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from smash.precompute.shared.templates import verbalizer_ids

from .base import StoreContext

__all__ = ["label_word_loss", "verbalizer_of"]


def verbalizer_of(store: StoreContext, default: tuple[str, ...]) -> torch.Tensor:
    """Token ids (C,) of the store's label words: the config's ``verbalizer`` for the store if
    given, else ``default``; each must be one token with a leading space."""
    words = store.spec.verbalizer or default
    return torch.tensor(verbalizer_ids(store.tokenizer, words), dtype=torch.int64)


def label_word_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the label words' logits (R, C) (``ModelAdapter.logits_at``), mean
    over the rows with a label (0 if none); ``labels`` (R,) index into the label words, -1
    leaves a row out."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    return total / (labels >= 0).sum().clamp(min=1)
