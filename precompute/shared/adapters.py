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

Masked LMs (RoBERTa/XLM-R/CamemBERT/Data2Vec-text ``lm_head``, BERT ``cls``) and T5
(``T5ForConditionalGeneration``: the answer is the decoder's second token, paper appendix A)
are supported; ``tests/test_adapters.py`` checks for each that ``logits`` equals the model's
own forward at the answer (to fp32 round-off: a head on R rows against one on every position). A new family is one class here plus its case in that
test.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention_probabilities import PROBABILITIES

__all__ = [
    "Answers",
    "EncoderDecoderAdapter",
    "MaskedLMAdapter",
    "ModelAdapter",
    "Prompts",
    "adapter_for",
    "auto_model_class",
    "encoder_inputs",
    "family_of",
    "load_teacher",
    "max_sequence_length",
    "store_family",
]


# A padded batch of prompts: input_ids, attention_mask (B, L); mask_batch, mask_positions (R,).
# ``inputs_embeds`` (B, L, H) may stand in place of ``input_ids`` (a soft prompt's input).
Prompts = Mapping[str, torch.Tensor]


def encoder_inputs(prompts: Prompts) -> dict[str, torch.Tensor]:
    """What the encoder reads of ``prompts``: the token ids, or the input embeddings given in
    their place (``train/soft_prompt.py`` puts a soft prompt in front of the embedded ids)."""
    key = "inputs_embeds" if "inputs_embeds" in prompts else "input_ids"
    return {key: prompts[key], "attention_mask": prompts["attention_mask"]}


def _check_gives_probabilities(model: nn.Module) -> None:
    """Attention probabilities (before dropout) come only from the ``PROBABILITIES`` path."""
    running = model.config._attn_implementation
    if running != PROBABILITIES:
        raise ValueError(
            f"{type(model).__name__}: attention probabilities need the {PROBABILITIES!r} "
            f"attention path (it runs {running!r}, which gives no probabilities or gives them "
            f"after dropout); load the model with attn_implementation={PROBABILITIES!r}"
        )


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
    # how ``logits_at`` reads rows of ``decoder.weight`` (None: by indexing it); the few-shot
    # trainer points it at rows it gathered for a step (``train/fewshot/table_rows.py``)
    rows_of: Callable[[torch.Tensor], torch.Tensor] | None = None

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
        rows = self.decoder.weight[token_ids] if self.rows_of is None else self.rows_of(token_ids)
        return F.linear(features, rows, bias)


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
        if attentions:
            _check_gives_probabilities(self.model)
        out = self.encoder(
            **encoder_inputs(prompts),
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


class EncoderDecoderAdapter(ModelAdapter):
    """A T5 ``AutoModelForSeq2SeqLM`` (paper appendix A): the encoder reads the prompt, whose
    answer slot is the sentinel ``<extra_id_0>``; the decoder is fed ``<pad> <extra_id_0>``
    and the answer is its output at the second position (the distribution of the second
    generated token; the first is always the sentinel). One answer per prompt: ``mask_batch``
    says which prompt each answer row is (``mask_positions``, where the sentinel sits in the
    encoder's input, is not needed). ``hidden_states``/``attentions`` are the encoder's.
    """

    def __init__(self, model: nn.Module, sentinel_id: int):
        self.model = model
        self.decoder = model.get_output_embeddings()  # lm_head: no bias
        config = model.config
        # transformers 5 names the rescale ``scale_decoder_outputs``; before, T5 rescaled
        # exactly when ``tie_word_embeddings`` (T5 v1.1 unties and does not rescale).
        scale = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        self._scale = config.d_model**-0.5 if scale else None
        self.start_id = config.decoder_start_token_id  # <pad> for T5
        # the tokenizer's <extra_id_0> (t5-large: 32099; its embeddings are padded to 32128)
        self.sentinel_id = sentinel_id
        if self.start_id is None:
            raise ValueError(f"{type(model).__name__}: config has no decoder_start_token_id")

    def answers(self, prompts: Prompts, *, hidden_states=False, attentions=False) -> Answers:
        mask, rows = prompts["attention_mask"], prompts["mask_batch"]
        if rows.shape[0] != mask.shape[0]:
            raise ValueError(
                f"{type(self.model).__name__}: an encoder-decoder model gives one answer per "
                f"prompt; got {rows.shape[0]} answer slots in {mask.shape[0]} prompts"
            )
        if attentions:
            _check_gives_probabilities(self.model)
        encoded = self.model.get_encoder()(
            **encoder_inputs(prompts),
            output_hidden_states=hidden_states,
            output_attentions=attentions,
        )
        start = torch.tensor([self.start_id, self.sentinel_id], device=mask.device)
        decoded = self.model.decoder(
            input_ids=start.expand(mask.shape[0], 2),  # (B, 2): <pad> <extra_id_0>
            encoder_hidden_states=encoded.last_hidden_state,
            encoder_attention_mask=mask,
            use_cache=False,
        )
        return Answers(
            decoded.last_hidden_state[rows, 1],
            encoded.hidden_states if hidden_states else None,
            encoded.attentions if attentions else None,
        )

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self._scale is None else hidden * self._scale


def family_of(config) -> str:
    """``"t5"`` for encoder-decoder (T5) configs, ``"masked-lm"`` otherwise."""
    if getattr(config, "is_encoder_decoder", False):
        if config.model_type not in _ENCODER_DECODER:
            raise ValueError(
                f"{config.model_type!r}: encoder-decoder models other than "
                f"{sorted(_ENCODER_DECODER)} are not supported"
            )
        return "t5"
    return "masked-lm"


# Encoder-decoder families whose LM head and decoder start follow T5.
_ENCODER_DECODER = {"t5"}


def auto_model_class(family: str):
    """The ``transformers`` Auto class that loads a model of ``family`` (``family_of``)."""
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if family == "t5" else AutoModelForMaskedLM


def load_teacher(
    name: str, family: str, revision: str | None, dtype: torch.dtype, device: torch.device
) -> nn.Module:
    """A teacher of ``family`` in eval mode on ``device``, with SDPA attention."""
    model = auto_model_class(family).from_pretrained(
        name, revision=revision, dtype=dtype, attn_implementation="sdpa"
    )
    return model.to(device).eval()


def store_family(producer: Mapping) -> str:
    """The family of a store's teacher, from its manifest's ``producer``: ``teacher.family``,
    written for T5 teachers; masked-LM stores record none (as before T5 was supported)."""
    return (producer.get("teacher") or {}).get("family", "masked-lm")


def adapter_for(model: nn.Module, sentinel_id: int | None = None) -> ModelAdapter:
    """The adapter of ``model``'s family. An encoder-decoder model needs ``sentinel_id``, its
    tokenizer's ``<extra_id_0>`` (``templates.answer_token_id``), to start the decoder."""
    if family_of(model.config) == "t5":
        if sentinel_id is None:
            raise ValueError(
                f"{type(model).__name__}: an encoder-decoder adapter needs the tokenizer's "
                f"<extra_id_0> id (sentinel_id) to feed the decoder '<pad> <extra_id_0>'"
            )
        return EncoderDecoderAdapter(model, sentinel_id)
    return MaskedLMAdapter(model)


# T5 was pre-trained on 512-token inputs; its relative positions accept longer ones.
T5_MAX_LENGTH = 512

# Models whose position ids start after the padding index (RoBERTa's create_position_ids).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "data2vec-text"}


def max_sequence_length(config) -> int:
    """The longest input (in tokens) a model's position embeddings can take.

    RoBERTa-style models number positions from ``pad_token_id + 1``, so ``roberta-large``
    with 514 position embeddings takes 512 tokens. T5 has relative position buckets and no
    hard limit: its pre-training length, 512, is returned.
    """
    if family_of(config) == "t5":
        return T5_MAX_LENGTH
    limit = int(config.max_position_embeddings)
    if config.model_type in _OFFSET_POSITIONS:
        limit -= int(config.pad_token_id) + 1
    return limit
