"""Distillation objectives as components: each objective module of this package registers one.

    ce     prediction distillation (the paper's Eq. 1) against the stored top-k + tail
    hard   the teacher's argmax over the store's label words, as prompt-based fine-tuning
    rule   the sentence-pair task's rule-based labels (setting 6; no teacher outputs)
    mlm    masked-LM cross-entropy against a masked-text store's original tokens (setting 5)
    hidn   hidden-state distillation (Eq. 2, setting 3; the online teacher's hidden states)
    attn   attention distillation (Eq. 3, setting 4; the online teacher's attentions)
    cos    DistilBERT's cosine loss on the last hidden states (setting 5b; online teacher)

A run names its objectives with weights: ``"objective": "ce"`` or ``{"ce": 1.0, "hard": 0.5}``
(as the paper writes ``Lce + 0.01 Lhidn``); the loss is the weighted sum. To add one, write a
module here with a subclass of ``Objective`` decorated with
``@register_objective`` (``rule.py`` is a small complete example) and its tests: modules of
this package are found and imported by name, nothing else changes.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING

from .base import TEACHER_INTERNALS, Objective, StoreContext, StudentOutputs

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = [
    "TEACHER_INTERNALS",
    "Objective",
    "StoreContext",
    "StudentOutputs",
    "make_objectives",
    "objective_class",
    "objective_names",
    "register_objective",
]

_REGISTRY: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` available by ``cls.name``."""
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"an objective named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


@functools.cache
def _load() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def objective_names() -> tuple[str, ...]:
    """Every registered objective's name, sorted."""
    _load()
    return tuple(sorted(_REGISTRY))


def objective_class(name: str) -> type[Objective]:
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"objective must be one of {objective_names()}, got {name!r}")
    return _REGISTRY[name]


def make_objectives(cfg: TrainConfig) -> list[tuple[Objective, float]]:
    """The run's objectives with their weights, built from its config."""
    return [(objective_class(name).from_config(cfg), w) for name, w in cfg.objectives.items()]
