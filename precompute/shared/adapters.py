"""Model adapters: how a model family gives its answer distribution at a prompt's answer slot.

The teacher pass, the student step, the online teacher, the held-out KL and the few-shot
learners all go through an adapter, so "the logits at the ``<mask>``" means one thing
everywhere. An adapter answers four questions:

``answers(prompts)``
    for a padded batch of prompts (a mapping with ``input_ids`` and ``attention_mask`` (B, L),
    ``mask_batch`` and ``mask_positions`` (R,): where each answer slot is), the hidden states
    at the R answer slots, (R, H), computed without the vocabulary
    projection; optionally the encoder's hidden states and attention probabilities too (for
    the objectives that distil them);
``features(hidden)``
    the LM head's transform of those rows, (R, H): the input of the vocabulary projection
    (what the fused-linear loss multiplies by ``decoder.weight``);
``logits(hidden)``
    the whole head, (R, V) = ``features(hidden) @ decoder.weight.T + decoder.bias``;
``decoder``
    the vocabulary projection (an ``nn.Linear``; its weight may be tied to the embeddings);
    ``logits_at(features, token_ids)`` applies only some of its rows (label words).

Masked LMs (RoBERTa/XLM-R/CamemBERT/Data2Vec-text ``lm_head``, BERT ``cls``) are supported;
``tests/test_adapters.py`` checks for each that ``logits`` equals the model's own forward at
the mask, bit for bit. A new family is one class here plus its case in that test.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Answers",
    "MaskedLMAdapter",
    "ModelAdapter",
    "Prompts",
    "adapter_for",
    "max_sequence_length",
]


# A padded batch of prompts: input_ids, attention_mask (B, L); mask_batch, mask_positions (R,).
Prompts = Mapping[str, torch.Tensor]


@dataclass
class Answers:
    """What a forward pass gives for a batch of prompts."""

    hidden: torch.Tensor  # (R, H) at the answer slots, before the LM head
    hidden_states: tuple[torch.Tensor, ...] | None = None  # M + 1 of (B, L, H); [0]: embeddings
    attentions: tuple[torch.Tensor, ...] | None = None  # M of (B, heads, L, L), probabilities


class ModelAdapter(abc.ABC):
    """The interface (see the module doc); ``model`` is the wrapped Hugging Face model."""

    model: nn.Module
    decoder: nn.Linear

    @abc.abstractmethod
    def answers(self, prompts: Prompts, *, hidden_states=False, attentions=False) -> Answers: ...

    @abc.abstractmethod
    def features(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(hidden))

    def logits_at(self, features: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The logits of the vocabulary entries ``token_ids`` (C,) alone, from the head's
        ``features`` (R, H): (R, C), as prompt-based fine-tuning scores its label words."""
        bias = self.decoder.bias[token_ids] if self.decoder.bias is not None else None
        return F.linear(features, self.decoder.weight[token_ids], bias)


class MaskedLMAdapter(ModelAdapter):
    """An ``AutoModelForMaskedLM``: the answer slot is the ``<mask>`` token.

    Only the encoder runs over the whole input; the head runs on the R mask rows alone, (R, H)
    instead of (B * L, H).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.encoder = getattr(model, model.base_model_prefix)
        self.decoder = model.get_output_embeddings()
        head = getattr(model, "lm_head", None)
        predictions = getattr(getattr(model, "cls", None), "predictions", None)
        if head is not None and all(hasattr(head, n) for n in ("dense", "layer_norm", "decoder")):
            self._transform = self._roberta_transform  # RobertaLMHead and its copies
            self._head = head
        elif predictions is not None and hasattr(predictions, "transform"):
            self._transform = predictions.transform  # BertLMPredictionHead
        else:
            raise ValueError(
                f"{type(model).__name__}: no masked-LM head named 'lm_head' or 'cls'; "
                f"supported are RoBERTa/XLM-R/BERT-style masked LMs"
            )

    def _roberta_transform(self, hidden: torch.Tensor) -> torch.Tensor:
        from transformers.activations import gelu  # the activation RobertaLMHead calls

        return self._head.layer_norm(gelu(self._head.dense(hidden)))

    def answers(self, prompts: Prompts, *, hidden_states=False, attentions=False) -> Answers:
        if attentions and self.model.config._attn_implementation != "eager":
            raise ValueError(
                f"{type(self.model).__name__}: attention probabilities need the eager attention "
                f"path (it runs {self.model.config._attn_implementation!r}); load the model with "
                f"attn_implementation='eager'"
            )
        out = self.encoder(
            input_ids=prompts["input_ids"],
            attention_mask=prompts["attention_mask"],
            output_hidden_states=hidden_states,
            output_attentions=attentions,
        )
        return Answers(
            out.last_hidden_state[prompts["mask_batch"], prompts["mask_positions"]],
            out.hidden_states if hidden_states else None,
            out.attentions if attentions else None,
        )

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._transform(hidden)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model``'s family (masked LMs now)."""
    return MaskedLMAdapter(model)


# Models whose position ids start after the padding index (RoBERTa's create_position_ids).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "data2vec-text"}


def max_sequence_length(config) -> int:
    """The longest input (in tokens) a model's position embeddings can take.

    RoBERTa-style models number positions from ``pad_token_id + 1``, so ``roberta-large``
    with 514 position embeddings takes 512 tokens.
    """
    limit = int(config.max_position_embeddings)
    if config.model_type in _OFFSET_POSITIONS:
        limit -= int(config.pad_token_id) + 1
    return limit
