"""The two ways a masked LM is fitted to a task: prompt-based (label words at ``<mask>``) and
standard fine-tuning (a new classification or regression head). A T5's label words are
scored at the decoder's second position; its head sits on the encoder (``encoder_head.py``).

Both expose the same small interface used by the protocol: ``encode`` examples once,
``forward`` a padded batch to per-example outputs, ``loss`` against labels and ``predict``
labels from outputs. Prompt-based STS-B is regression by interpolation between two label words
(LM-BFF, paper section 3.1); its loss is the KL divergence from the target two-word
distribution, with the target given as probabilities (LM-BFF passes probabilities where its
loss expects log-probabilities).

A prompt longer than the max length is truncated by one of two rules (``TRUNCATIONS``):
``sentences`` (the default) removes sentence tokens only, so the template words, label words and
mask stay (``Template.encode``); ``lmbff`` is LM-BFF's own: the whole input is assembled (each
sentence capped by its limit) and its tail is cut at the max length, whatever it holds, so that
LM-BFF's rows can be reproduced exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from smash.precompute.kshot.data import Example
from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.adapters import adapter_for
from smash.precompute.shared.templates import (
    EncodedPrompt,
    Template,
    answer_token_id,
    is_sentinel_tokenizer,
    parse_template,
    verbalizer_ids,
)

__all__ = [
    "TRUNCATIONS",
    "Batch",
    "FeatureSets",
    "Features",
    "FinetuneLearner",
    "PromptLearner",
    "collate",
    "encode_prompts",
    "interpolation_loss",
    "interpolation_predict",
]


TRUNCATIONS = ("sentences", "lmbff")


def encode_prompts(
    template: Template,
    tokenizer,
    batch: Sequence[Sequence[str]],
    max_length: int,
    limits: Mapping[int, int] | None,
    truncation: str = "sentences",
    truncate_first: Collection[int] = (),
) -> list[EncodedPrompt]:
    """``template.encode_batch`` under one of the two truncation rules (``TRUNCATIONS``).

    ``lmbff``: LM-BFF's ``tokenize_multipart_input`` pads and then keeps the first
    ``max_length`` ids, which can drop template words, label words and whole demonstrations;
    ValueError when it drops the mask (where LM-BFF's code fails too)."""
    if truncation == "sentences":
        return template.encode_batch(tokenizer, batch, max_length, limits, truncate_first)
    if truncation != "lmbff":
        raise ValueError(f"truncation {truncation!r}: one of {', '.join(TRUNCATIONS)}")
    out = []
    for whole in template.encode_batch(tokenizer, batch, sys.maxsize, limits):
        if whole.mask_position >= max_length:
            raise ValueError(
                f"template {template.spec!r}: LM-BFF's truncation (--truncation lmbff) cuts an "
                f"input of {len(whole.input_ids)} tokens at max_length={max_length}, before its "
                f"mask (at {whole.mask_position}); use --truncation sentences or a longer "
                "--max-length"
            )
        out.append(EncodedPrompt(whole.input_ids[:max_length], whole.mask_position))
    return out


@dataclass(frozen=True)
class Features:
    """One tokenized example; ``mask_position`` is -1 when there is no ``<mask>``;
    ``teacher_row`` is its row of the teacher's soft labels (``distill.py``), -1 for none."""

    input_ids: list[int]
    mask_position: int
    label: int | float
    teacher_row: int = -1


@dataclass(frozen=True)
class FeatureSets:
    """One example evaluated through several inputs (demonstration sets) whose outputs are
    averaged: ``sets`` are the inputs, each carrying ``label``."""

    sets: tuple[Features, ...]
    label: int | float

    @property
    def input_ids(self) -> list[int]:
        """The longest set's ids: what a batch of these is padded to (length sorting)."""
        return max((f.input_ids for f in self.sets), key=len)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded; (B * S, T) for S sets per example
    attention_mask: torch.Tensor  # (B, T)
    mask_positions: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B,) long for classes, float for scores
    teacher_rows: torch.Tensor | None = None  # (B,) rows of the soft labels, -1: none
    num_sets: int = 0  # S when rows are S consecutive sets per example (FeatureSets), else 0

    def to(self, device: torch.device) -> Batch:
        tensors = (self.input_ids, self.attention_mask, self.mask_positions, self.labels)
        rows = None if self.teacher_rows is None else self.teacher_rows.to(device)
        return Batch(*(t.to(device) for t in tensors), rows, self.num_sets)


def collate(
    features: Sequence[Features] | Sequence[FeatureSets], pad_id: int, regression: bool
) -> Batch:
    """Pad a list of features to the longest one (dynamic padding keeps batches small);
    FeatureSets of S sets each become S consecutive rows per example."""
    num_sets = 0
    if features and isinstance(features[0], FeatureSets):
        num_sets = len(features[0].sets)
        if any(len(f.sets) != num_sets for f in features):
            raise ValueError("every example of a batch needs the same number of sets")
        features = [f for group in features for f in group.sets]
    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
        attn[i, : len(f.input_ids)] = 1
    labels = torch.tensor(
        [f.label for f in features], dtype=torch.float32 if regression else torch.long
    )
    masks = torch.tensor([f.mask_position for f in features], dtype=torch.long)
    rows = torch.tensor([f.teacher_row for f in features], dtype=torch.long)
    return Batch(ids, attn, masks, labels, rows, num_sets)


def interpolation_loss(
    word_logits: torch.Tensor, scores: torch.Tensor, bounds: tuple[float, float]
) -> torch.Tensor:
    """KL(p_gold || p_pred) averaged over the batch, for regression by interpolation.

    ``word_logits`` (B, 2) are the low and high label words' logits at the mask; a score y in
    [l, u] gives the target p_gold = [(u - y) / (u - l), (y - l) / (u - l)] as probabilities.
    """
    lo, hi = bounds
    high = (scores.float() - lo) / (hi - lo)
    target = torch.stack([1.0 - high, high], dim=-1)
    log_pred = F.log_softmax(word_logits.float(), dim=-1)
    return F.kl_div(log_pred, target, reduction="batchmean", log_target=False)


def interpolation_predict(word_logits: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """y_hat = l * p(low word) + u * p(high word), shape (B,)."""
    lo, hi = bounds
    p = F.softmax(word_logits.float(), dim=-1)
    return lo * p[:, 0] + hi * p[:, 1]


class PromptLearner:
    """A masked LM scored by its label words' logits at the template's ``<mask>``; a T5 by
    theirs at the decoder's second position, after ``<pad> <extra_id_0>`` (appendix A.3)."""

    def __init__(
        self,
        model,
        tokenizer,
        task: Task,
        template: str,
        verbalizer: Sequence[str],
        max_length: int,
        truncation: str = "sentences",
    ):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.template = parse_template(template)
        if self.template.num_sentences > len(task.text_columns):
            raise ValueError(
                f"template {template!r} reads {self.template.num_sentences} "
                f"sentences, {task.name} has {len(task.text_columns)}"
            )
        expected = 2 if task.is_regression else len(task.labels)
        if len(verbalizer) != expected:
            raise ValueError(f"{task.name} needs {expected} label words, got {list(verbalizer)}")
        self.verbalizer = torch.tensor(verbalizer_ids(tokenizer, verbalizer))
        self.max_length, self.truncation = max_length, truncation
        # LM-BFF caps the first sentence's tokens before the template is assembled
        self.limits = {0: task.first_sent_limit} if task.first_sent_limit else None
        # the head runs on the answer rows only; a T5 decoder starts from the sentinel
        self.adapter = adapter_for(model, answer_token_id(tokenizer))

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        enc = encode_prompts(self.template, self.tokenizer, [ex.texts for ex in examples],
                             self.max_length, self.limits, self.truncation)  # fmt: skip
        return [Features(e.input_ids, e.mask_position, ex.label) for e, ex in zip(enc, examples)]

    def head_features(self, batch: Batch) -> torch.Tensor:
        """The LM head's features at the answer slot, (B, H): the input of its vocabulary
        projection (``self.adapter.decoder``)."""
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
        prompts = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                   "mask_batch": rows, "mask_positions": batch.mask_positions}  # fmt: skip
        return self.adapter.features(self.adapter.answers(prompts).hidden)

    def word_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The label words' logits from ``head_features``, (B, C)."""
        return self.adapter.logits_at(features, self.verbalizer.to(features.device))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Label-word logits at the mask, (B, C); C = 2 (low, high) for regression."""
        return self.word_logits(self.head_features(batch))

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task.is_regression:
            return interpolation_loss(outputs, labels, self.task.bounds)
        return F.cross_entropy(outputs.float(), labels)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.task.is_regression:
            return interpolation_predict(outputs, self.task.bounds)
        return outputs.argmax(dim=-1)


class FinetuneLearner:
    """A sequence-classification model into a fresh head (one regression output trained with
    MSE for STS-B). Inputs are encoded as LM-BFF's non-prompt path does: ``<s> x0 </s> x1 </s>``
    (one separator between sentences, each sentence tokenized on its own, no space added), cut
    at ``max_length`` from the end. A T5 tokenizer has no ``<s>``: ``x0 </s> x1 </s>``, as
    appendix A.3 reads the templates."""

    def __init__(self, model, tokenizer, task: Task, max_length: int):
        self.model, self.tokenizer, self.task, self.max_length = model, tokenizer, task, max_length

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        tok = self.tokenizer
        pieces = [tok(list(texts), add_special_tokens=False)["input_ids"]
                  for texts in zip(*(ex.texts for ex in examples))]  # fmt: skip
        if is_sentinel_tokenizer(tok):  # T5: no <s>, </s> after each sentence
            start, sep = [], tok.eos_token_id
        else:
            start, sep = [tok.cls_token_id], tok.sep_token_id
        out = []
        for i, ex in enumerate(examples):
            ids = list(start)
            for sentence in pieces:
                ids += [*sentence[i], sep]
            out.append(Features(ids[: self.max_length], -1, ex.label))
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        """Head outputs: (B, C) logits, or (B,) scores for regression."""
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return logits[:, 0] if self.task.is_regression else logits

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task.is_regression:
            return F.mse_loss(outputs.float(), labels)
        return F.cross_entropy(outputs.float(), labels)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float() if self.task.is_regression else outputs.argmax(dim=-1)
