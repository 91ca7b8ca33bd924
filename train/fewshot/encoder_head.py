"""Standard fine-tuning of a T5: a fresh head on its encoder (the decoder is not used).

T5 has no ``<s>``/``[CLS]`` token whose state a head could read, so the encoder's last hidden
states are mean-pooled over the real (non-padding) tokens, as Sentence-T5 does, and a linear
layer maps the mean to the task's outputs (C logits, or one score for STS-B).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

__all__ = ["T5EncoderClassifier"]


class T5EncoderClassifier(nn.Module):
    """T5's encoder, mean-pooled, into ``nn.Linear(d_model, num_outputs)``; ``forward`` returns
    an object with ``.logits`` (B, num_outputs), as a sequence-classification model does."""

    def __init__(self, path: str, num_outputs: int):
        from transformers import T5EncoderModel

        super().__init__()
        self.encoder = T5EncoderModel.from_pretrained(path)
        self.head = nn.Linear(self.encoder.config.d_model, num_outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        real = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)  # (B, H)
        return SimpleNamespace(logits=self.head(pooled))
