"""Attention probabilities as attention distillation means them: before attention dropout.

Hugging Face's eager attention applies dropout to the softmax and returns the dropped-out
weights, which are no longer probabilities: a student trained (train mode) with attention
dropout p, as DistilRoBERTa is (0.1), would be distilled on weights that are 0 or 1/(1-p)
times the probabilities, and the MSE of Eq. 3 gains p/(1-p) * mean(a^2), pulling the student
towards uniform attention. This module registers an attention implementation,
``PROBABILITIES`` ("smash_probabilities"), that computes what the eager path computes (the
same scores, position bias, mask, softmax; dropout on the weights that multiply the values)
and returns the probabilities *before* dropout. In eval mode its outputs are the eager path's,
bit for bit; in train mode its outputs are too, given the same RNG state.

Importing this module registers it (with the eager path's mask) in transformers; models are
then loaded with ``attn_implementation=PROBABILITIES``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

__all__ = ["PROBABILITIES", "probabilities_attention"]

PROBABILITIES = "smash_probabilities"


def probabilities_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (B, L, heads, d), probabilities (B, heads, L, L)) for one attention layer.
    ``position_bias``: T5's relative position bias, added to the scores as its eager path does."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = nn.functional.softmax(scores, dim=-1)
    weights = nn.functional.dropout(probabilities, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, probabilities


AttentionInterface.register(PROBABILITIES, probabilities_attention)
AttentionMaskInterface.register(PROBABILITIES, eager_mask)
