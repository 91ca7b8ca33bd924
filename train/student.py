"""The student step and the online teacher.

``DistillStudent`` is what DeepSpeed wraps: the HF masked LM plus its loss. Its forward runs
the encoder only, gathers the hidden states at the R mask positions, and applies the LM head
to those rows alone, (R, H) instead of (B*L, H), exactly as the teacher pass did
(``smash.precompute.teacher_head``). The loss goes through ``smash.kernels``: either the LM
head then ``soft_cross_entropy`` (``loss="kernel"``), or the head's transform then
``fused_linear_soft_cross_entropy`` (``loss="fused_linear"``), which never makes the (R, V)
logits.

``OnlineTeacher`` is the one place a teacher model is loaded during distillation. It produces
the same ``TeacherTopK`` numbers as the teacher pass, from a live model, for the
offline-equals-online test and the offline-vs-online benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from smash.kernels import fused_linear_soft_cross_entropy, soft_cross_entropy
from smash.precompute.teacher_head import (
    TeacherTopK,
    lm_head_of,
    mask_hidden_states,
    teacher_topk,
)
from torch import nn

from .objectives import hard_labels, label_word_loss, rule_labels

__all__ = ["STEP_KEYS", "DistillStudent", "OnlineTeacher", "head_features"]

# The batch entries a step reads (collate_examples' names).
STEP_KEYS = (
    "input_ids",
    "attention_mask",
    "mask_batch",
    "mask_positions",
    "topk_ids",
    "topk_logprobs",
    "tail_logmass",
    "labels",
)


def _decoder_slot(head: nn.Module, decoder: nn.Module) -> tuple[nn.Module, str] | None:
    """(parent module, attribute) holding ``decoder`` inside ``head``; None if head is it."""
    if head is decoder:
        return None
    for module in head.modules():
        for attr, child in module.named_children():
            if child is decoder:
                return module, attr
    raise ValueError(
        f"{type(head).__name__} does not contain the output embeddings "
        f"{type(decoder).__name__}: cannot split its LM head"
    )


def head_features(
    head: nn.Module, slot: tuple[nn.Module, str] | None, hidden: torch.Tensor
) -> torch.Tensor:
    """The LM head's output *before* its vocabulary projection: (R, H) -> (R, H).

    The head's own forward runs with the decoder swapped for an identity, so the transform
    (dense, activation, layer norm for RoBERTa and BERT) is the model's code, not a copy.
    """
    if slot is None:
        return hidden
    parent, attr = slot
    decoder = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    try:
        return head(hidden)
    finally:
        setattr(parent, attr, decoder)


class DistillStudent(nn.Module):
    """Student masked LM + distillation loss; ``forward(**batch)`` returns the scalar loss.

    Args:
        model: an HF ``AutoModelForMaskedLM``.
        objective: ``ce`` | ``hard`` | ``rule`` (see ``smash.train.objectives``).
        verbalizers: per store, the label-word ids (``hard``/``rule``) or None.
        stored_labels: per store, whether ``hard`` takes the batch's ``labels`` (the teacher's
            argmax, written by the teacher pass) instead of deriving it from the top-k.
        loss: ``kernel`` | ``fused_linear`` (``ce`` only; label-word losses apply the C
            label-word rows of the decoder either way).
        tail, temperature, scale_t2, kernel_impl: passed to the kernel.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        objective: str = "ce",
        verbalizers: Sequence[Sequence[int] | None] = (None,),
        stored_labels: Sequence[bool] = (False,),
        loss: str = "kernel",
        tail: str = "bucket",
        temperature: float = 1.0,
        scale_t2: bool = False,
        kernel_impl: str = "auto",
    ):
        super().__init__()
        self.model = model
        self.objective, self.loss_impl = objective, loss
        self.kernel_args = {
            "tail": tail,
            "temperature": temperature,
            "scale_t2": scale_t2,
            "impl": kernel_impl,
        }
        self.verbalizers = [
            None if v is None else torch.tensor(list(v), dtype=torch.int64) for v in verbalizers
        ]
        self.stored_labels = list(stored_labels)
        self._slot = _decoder_slot(lm_head_of(model), model.get_output_embeddings())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_batch: torch.Tensor,
        mask_positions: torch.Tensor,
        topk_ids: torch.Tensor,
        topk_logprobs: torch.Tensor,
        tail_logmass: torch.Tensor,
        labels: torch.Tensor,
        store: int = 0,
    ) -> torch.Tensor:
        hidden = mask_hidden_states(
            self.model, input_ids, attention_mask, mask_batch, mask_positions
        )  # (R, H)
        head, decoder = lm_head_of(self.model), self.model.get_output_embeddings()
        if self.objective == "ce":
            # check_ids=False: the ids come from a checksummed store written by the teacher
            # pass (or from a live teacher's top-k), and the check costs a host sync per step.
            if self.loss_impl == "kernel":
                logits = head(hidden)  # (R, V)
                # grad_in_forward=False: DeepSpeed divides the loss by the accumulation steps
                # (and fp16 scales it), so the upstream gradient is not 1; recomputing in
                # backward avoids the host sync and the extra pass over the saved gradient.
                return soft_cross_entropy(
                    logits,
                    topk_ids,
                    topk_logprobs,
                    tail_logmass=tail_logmass,
                    check_ids=False,
                    grad_in_forward=False,
                    **self.kernel_args,
                )
            features = head_features(head, self._slot, hidden)  # (R, H)
            return fused_linear_soft_cross_entropy(
                features,
                decoder.weight,
                decoder.bias,
                topk_ids,
                topk_logprobs,
                tail_logmass=tail_logmass,
                check_ids=False,
                **self.kernel_args,
            )
        words = self.verbalizers[store].to(input_ids.device)
        if self.objective == "hard" and not self.stored_labels[store]:
            targets = hard_labels(topk_ids, topk_logprobs, words)
        else:
            targets = rule_labels(labels, mask_batch, len(words))
        return label_word_loss(head_features(head, self._slot, hidden), decoder, words, targets)


class OnlineTeacher:
    """A live teacher giving the stored targets' numbers (``teacher_topk``) for any batch.

    This is the only mode in which ``train-student`` loads a teacher. ``k`` defaults to the
    vocabulary, i.e. the full distribution (tail mass -inf).
    """

    def __init__(
        self,
        path: str,
        device: torch.device,
        *,
        k: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoModelForMaskedLM

        self.model = AutoModelForMaskedLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.path = path
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self.k = vocab if k is None else k
        if self.k > vocab:
            raise ValueError(
                f"teacher_k={self.k} is larger than the teacher's vocabulary ({vocab})"
            )

    def targets(self, batch: dict[str, Any]) -> TeacherTopK:
        top = teacher_topk(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["mask_batch"],
            batch["mask_positions"],
            self.k,
        )
        # inference-mode tensors cannot enter an autograd graph: copy them out
        return TeacherTopK(top.ids.clone(), top.logprobs.clone(), top.tail_logmass.clone())

    def fill(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its teacher entries replaced by the live teacher's."""
        top = self.targets(batch)
        return {
            **batch,
            "topk_ids": top.ids,
            "topk_logprobs": top.logprobs,
            "tail_logmass": top.tail_logmass,
        }
