"""The student step and the online teacher.

``DistillStudent`` is what DeepSpeed wraps: the HF model, its adapter and the run's weighted
objectives. Its forward runs the model once through the adapter (the encoder, then the LM head
on the R answer rows alone, (R, H) instead of (B * L, H), exactly as the teacher pass did),
hands the outputs to each objective and returns the weighted sum of their losses.

``OnlineTeacher`` is the one place a teacher model is loaded during distillation. It fills a
batch with what the objectives need from the teacher: the same ``TeacherTopK`` numbers the
teacher pass stores, and (for objectives that distil them) its hidden states and attentions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from smash.precompute.shared.adapters import adapter_for, auto_model_class, family_of
from smash.precompute.shared.attention_probabilities import PROBABILITIES
from smash.precompute.shared.teacher_targets import topk_targets
from smash.store.schema import TEACHER_FIELDS
from torch import nn

from .objectives import Objective, StudentOutputs
from .soft_prompt import SoftPrompt, SoftPromptAdapter

__all__ = ["DistillStudent", "OnlineTeacher", "attention_path"]


def attention_path(attentions: bool) -> dict[str, str]:
    """``from_pretrained`` arguments: attention probabilities (before dropout) come only from
    the ``PROBABILITIES`` path, an eager one, chosen for runs whose objectives distil them;
    else the default (SDPA)."""
    return {"attn_implementation": PROBABILITIES} if attentions else {}


class DistillStudent(nn.Module):
    """Student model + weighted objectives; ``forward(**batch, store=i)`` returns the loss.

    Args:
        model: an HF ``AutoModelForMaskedLM``, or a T5 ``AutoModelForSeq2SeqLM``.
        objectives: (objective, weight) pairs; the loss is the weighted sum.
        store_states: per store, per objective, what ``Objective.for_store`` prepared.
        sentinel_id: for T5, the tokenizer's ``<extra_id_0>`` (``templates.answer_token_id``).
        soft_prompt: train only these vectors in front of every input, ``model`` frozen
            (``smash.train.soft_prompt``; PPT's prompt pre-training).
    """

    def __init__(
        self,
        model: nn.Module,
        objectives: Sequence[tuple[Objective, float]],
        store_states: Sequence[Sequence[Any]],
        *,
        sentinel_id: int | None = None,
        soft_prompt: SoftPrompt | None = None,
    ):
        super().__init__()
        if not objectives:
            raise ValueError("DistillStudent needs at least one objective")
        self.model = model
        self.adapter = adapter_for(model, sentinel_id)
        self.soft_prompt = soft_prompt
        if soft_prompt is not None:
            self.adapter = SoftPromptAdapter(self.adapter, soft_prompt)
        self.objectives = list(objectives)
        self.store_states = [list(states) for states in store_states]
        wanted = set().union(*(o.student_needs for o, _ in self.objectives))
        self._hidden_states, self._attentions = "hidden_states" in wanted, "attentions" in wanted

    def forward(self, store: int = 0, **batch: torch.Tensor) -> torch.Tensor:
        answers = self.adapter.answers(
            batch, hidden_states=self._hidden_states, attentions=self._attentions
        )
        outputs = StudentOutputs(self.adapter, answers)
        total = None
        for (objective, weight), state in zip(self.objectives, self.store_states[store]):
            loss = objective.loss(outputs, batch, state)
            loss = loss if weight == 1.0 else weight * loss
            total = loss if total is None else total + loss
        return total


class OnlineTeacher:
    """A live teacher giving the stored targets' numbers (``teacher_topk``) for any batch.

    This is the only mode in which ``train-student`` loads a teacher. ``k`` defaults to the
    vocabulary, i.e. the full distribution (tail mass -inf). ``attentions``: load it on the
    attention path that gives attention probabilities (``attention_path``). A T5 teacher is loaded
    with ``AutoModelForSeq2SeqLM`` and needs ``sentinel_id`` (its tokenizer's ``<extra_id_0>``).
    """

    def __init__(
        self,
        path: str,
        device: torch.device,
        *,
        k: int | None = None,
        dtype: torch.dtype = torch.float32,
        attentions: bool = False,
        sentinel_id: int | None = None,
    ):
        from transformers import AutoConfig

        family = family_of(AutoConfig.from_pretrained(path))
        model = auto_model_class(family).from_pretrained(
            path, dtype=dtype, **attention_path(attentions)
        )
        model = model.to(device).eval()
        self.adapter, self.path = adapter_for(model, sentinel_id), path
        vocab = self.adapter.decoder.weight.shape[0]
        self.k = vocab if k is None else k
        if self.k > vocab:
            raise ValueError(
                f"teacher_k={self.k} is larger than the teacher's vocabulary ({vocab})"
            )

    def fill(
        self, batch: dict[str, Any], needs: frozenset[str] = frozenset(TEACHER_FIELDS)
    ) -> dict[str, Any]:
        """``batch`` with what ``needs`` asks of the live teacher: its top-k fields (the names of
        ``schema.TEACHER_FIELDS``, as the teacher pass stores them) and ``teacher_hidden_states``
        / ``teacher_attentions`` (tuples over its layers, see ``Answers``)."""
        with torch.inference_mode():
            answers = self.adapter.answers(
                batch,
                hidden_states="teacher_hidden_states" in needs,
                attentions="teacher_attentions" in needs,
            )
        values: dict[str, Any] = {}
        if needs & set(TEACHER_FIELDS):
            values.update(topk_targets(self.adapter, answers.hidden, self.k).stored_fields())
        if answers.hidden_states is not None:
            values["teacher_hidden_states"] = answers.hidden_states
        if answers.attentions is not None:
            values["teacher_attentions"] = answers.attentions
        # inference-mode tensors cannot enter an autograd graph: copy them out
        return {**batch, **{name: _copied(value) for name, value in values.items()}}


def _copied(value: torch.Tensor | tuple[torch.Tensor, ...]) -> Any:
    return tuple(v.clone() for v in value) if isinstance(value, tuple) else value.clone()
