"""What every distillation objective is: a registered component that names what it needs and
turns the student's outputs on a batch into a loss.

An objective declares

``name``
    how configs and ``--objective`` call it;
``needs``
    what it reads from a batch: stored fields (``schema.FIELDS`` batch keys such as
    ``topk_ids`` or ``labels``) or the online teacher's internals (``TEACHER_INTERNALS``:
    ``teacher_hidden_states``, ``teacher_attentions``). Stored fields come from the store, or
    from the online teacher when a run loads one; an objective that needs the teacher's
    internals needs the online-teacher mode (the config must name the teacher);
``student_needs``
    what it reads of the student beyond the answer rows: ``hidden_states``, ``attentions``;

and implements ``loss(student, batch, state)``, where ``state`` is what ``for_store`` prepared
for the store the batch came from (for example the label words' token ids).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from smash.precompute.shared.adapters import Answers, ModelAdapter

if TYPE_CHECKING:
    from smash.store.manifest import Manifest

    from ..config import StoreSpec, TrainConfig

__all__ = ["TEACHER_INTERNALS", "Objective", "StoreContext", "StudentOutputs"]

TEACHER_INTERNALS = frozenset({"teacher_hidden_states", "teacher_attentions"})


@dataclass(frozen=True)
class StoreContext:
    """One input store as an objective prepares for it."""

    path: str
    manifest: Manifest
    spec: StoreSpec
    tokenizer: Any


class StudentOutputs:
    """The student's outputs on one batch, each computed once and only when asked for.

    ``hidden`` (R, H) are the answer rows before the LM head; ``features`` the head's transform
    of them; ``logits`` (R, V) the whole head; ``decoder`` the vocabulary projection.
    """

    def __init__(self, adapter: ModelAdapter, answers: Answers):
        self.adapter, self.answers = adapter, answers
        self.hidden = answers.hidden
        self.decoder = adapter.decoder

    @cached_property
    def features(self) -> torch.Tensor:
        return self.adapter.features(self.hidden)

    @cached_property
    def logits(self) -> torch.Tensor:
        return self.decoder(self.features)


class Objective(abc.ABC):
    """A distillation objective (see the module doc). Subclasses register themselves with
    ``@register_objective`` in a module of this package."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    student_needs: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Objective:
        """The objective with its options from a run's config."""
        return cls()

    def for_store(self, store: StoreContext) -> Any:
        """What ``loss`` needs to know about one store (None by default); raise ValueError
        naming the store when it cannot be trained on with this objective."""
        return None

    def check_teacher(self, student: Any, teacher: Any) -> None:
        """Raise ValueError when this objective cannot compare the student with the online
        teacher (their Hugging Face configs), naming both; called once both are loaded."""

    @abc.abstractmethod
    def loss(
        self, student: StudentOutputs, batch: Mapping[str, torch.Tensor], state: Any
    ) -> torch.Tensor:
        """A 0-d float32 loss for the batch (mean over its rows)."""
