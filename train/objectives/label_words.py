"""The loss shared by the objectives that train on labels (``hard``, ``rule``): prompt-based
fine-tuning's cross-entropy over the label words' logits at the mask."""

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


def label_word_loss(
    features: torch.Tensor,
    decoder: torch.nn.Linear,
    verbalizer: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy over the label words' logits, mean over rows with a label (0 if none).

    ``features`` (R, H) are the LM head's transformed hidden states; only the C label-word
    rows of the decoder are applied, (R, H) @ (H, C), as prompt-based fine-tuning does.
    ``labels`` (R,) index into ``verbalizer``; -1 leaves a row out.
    """
    bias = decoder.bias[verbalizer] if decoder.bias is not None else None
    logits = F.linear(features, decoder.weight[verbalizer], bias).float()  # (R, C)
    total = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    return total / (labels >= 0).sum().clamp(min=1)
