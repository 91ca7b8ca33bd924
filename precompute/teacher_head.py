"""The teacher's output at mask positions: top-k log-probabilities plus the exact tail mass.

Only the hidden states at mask positions go through the LM head (a (R, H) @ (H, V) product
instead of (B*L, H) @ (H, V)); the log-softmax is taken in float32 whatever the model's
dtype. ``tail_logmass = log(sum of the probabilities outside the top-k)`` is a logsumexp over
the non-top-k entries, so it keeps full float32 precision even when the top-k holds almost all
of the mass (``log(1 - sum p)`` would cancel). The trainer's online-teacher mode uses the
same function, so offline and online targets are the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TeacherTopK", "lm_head_of", "mask_hidden_states", "max_sequence_length", "teacher_topk"]


@dataclass
class TeacherTopK:
    ids: torch.Tensor  # (R, k) int64
    logprobs: torch.Tensor  # (R, k) float16, sorted descending
    tail_logmass: torch.Tensor  # (R,) float32
    verbalizer_logprobs: torch.Tensor | None = None  # (R, C) float32 at ``verbalizer_ids``


def lm_head_of(model: torch.nn.Module) -> torch.nn.Module:
    """The whole masked-LM head of an HF model (hidden states -> vocabulary logits).

    RoBERTa-style models call it ``lm_head``, BERT-style ones ``cls``. Other architectures
    spread the head over several attributes and are refused rather than given a head
    without its transform (which would silently produce wrong logits).
    """
    for name in ("lm_head", "cls"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(
        f"{type(model).__name__}: no masked-LM head named 'lm_head' or 'cls'; "
        f"supported are RoBERTa/XLM-R/BERT-style masked LMs"
    )


def mask_hidden_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_batch: torch.Tensor,
    mask_positions: torch.Tensor,
) -> torch.Tensor:
    """Run the encoder only and gather its last hidden states at the mask positions: (R, H)."""
    encoder = getattr(model, model.base_model_prefix)
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden[mask_batch, mask_positions]


@torch.inference_mode()
def teacher_topk(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_batch: torch.Tensor,
    mask_positions: torch.Tensor,
    k: int,
    verbalizer_ids: torch.Tensor | None = None,
) -> TeacherTopK:
    """Top-k of the teacher's float32 log-softmax at each mask position; with ``verbalizer_ids``
    (e.g. a verbalizer's token ids) also their log-probabilities from the same forward."""
    hidden = mask_hidden_states(model, input_ids, attention_mask, mask_batch, mask_positions)
    logits = lm_head_of(model)(hidden).float()  # (R, V)
    if k > logits.shape[-1]:
        raise ValueError(f"k={k} is larger than the vocabulary ({logits.shape[-1]})")
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, k, dim=-1, sorted=True)
    rest = logp.scatter(1, top.indices, float("-inf"))
    tail = (
        torch.logsumexp(rest, dim=-1)
        if k < logp.shape[-1]
        else torch.full_like(logp[:, 0], float("-inf"))
    )
    verbalizer = logp[:, verbalizer_ids] if verbalizer_ids is not None else None
    return TeacherTopK(top.indices, top.values.to(torch.float16), tail, verbalizer)


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
