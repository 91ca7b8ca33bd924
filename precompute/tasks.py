"""Intermediate tasks: what an example is, and the registry that names them.

A task is a template (LM-BFF's language), a sampler that turns a corpus into examples, and an
optional filter that the teacher's own distribution over the task's verbalizer decides. To add
one, write a small module with a class like ``SentencePairTask`` and decorate it::

    @register_task("my-task")
    class MyTask:
        template = "*cls**sent_0*_In_short,*mask*.*sep+*"
        max_length = 64
        verbalizer = ()                     # words whose teacher probabilities a filter reads

        def __init__(self, splitter, **options): ...
        def examples(self, corpus, seed) -> Iterator[TaskExample]: ...   # deterministic
        def keep(self, verbalizer_logprobs) -> np.ndarray | None: ...   # None: keep all
        def config(self) -> dict: ...       # recorded in the manifest

Optional hooks: ``label(verbalizer_logprobs) -> np.ndarray`` replaces the examples' labels
by what the teacher says (the sentiment task stores its argmax over the verbalizer), and
``group_size`` makes the teacher pass take a multiple of it (3 for the balanced pair labels).
``classify(examples) -> np.ndarray | None`` gives scores of a shard's examples that the filter
and label hooks read in place of the teacher's verbalizer log-probabilities (with a
``label_source`` for the manifest; the sentiment task's ``--labeller``).
A filter that keeps the examples whose ``statistic(verbalizer_logprobs) -> np.ndarray | None``
reaches ``threshold`` can expose both, with ``statistic_name``: when it keeps no example, the
pass fails showing the statistic's spread (``teacher_pass.nothing_kept``).
``sentence_limits`` (pairs of sentence index and token cap) caps sentences before the template
is assembled, as LM-BFF's ``first_sent_limit`` (the k-shot task, ``kshot/teacher.py``).
A task with no template and a ``masking`` (``shared/masking.Masking``) gives raw text that the
teacher pass masks, several positions per example (``masked_lm.py``).
``sentiment.py`` is a complete example. Pass ``--task my-task --plugin my_module`` to
``precompute-teacher`` (the module is imported from the working folder or PYTHONPATH).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .corpus import Corpus
from .sentences import SentenceSplitter

__all__ = [
    "META_POSITIONS",
    "IntermediateTask",
    "TaskExample",
    "make_task",
    "register_task",
    "task_names",
]

# What the sentence tasks' ``meta`` positions count, recorded in their options: all of a
# document's sentences (``SentenceSplitter.sentences``), for every sentence of an example.
# Before, sentiment counted the kept sentences only and a cross-document pair had no position
# for one of its sentences; the record makes a store begun that way another configuration,
# rather than one resumed into a mix of both.
META_POSITIONS = "all sentences"


@dataclass(frozen=True)
class TaskExample:
    """Sentences to fill the template with, the rule label (-1: none) and provenance."""

    sentences: tuple[str, ...]
    label: int = -1
    meta: dict[str, Any] = field(default_factory=dict)


class IntermediateTask(Protocol):
    name: str
    template: str | None  # None: raw text masked by the task's ``masking`` (masked_lm.py)
    max_length: int
    verbalizer: tuple[str, ...]

    def examples(self, corpus: Corpus, seed: int) -> Iterator[TaskExample]: ...

    def keep(self, verbalizer_logprobs: np.ndarray) -> np.ndarray | None: ...

    def config(self) -> dict[str, Any]: ...


_REGISTRY: dict[str, Callable[..., IntermediateTask]] = {}


def register_task(name: str) -> Callable:
    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"an intermediate task named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def make_task(name: str, splitter: SentenceSplitter, **options: Any) -> IntermediateTask:
    """Build a registered task; unknown names and unknown options are errors."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown intermediate task {name!r}; registered: {task_names()}")
    for option in options:
        if not _takes(_REGISTRY[name], option):
            takers = [other for other in task_names() if _takes(_REGISTRY[other], option)]
            raise ValueError(
                f"task {name!r} takes no {option!r} option (--"
                f"{option.replace('_', '-')}); tasks that do: {takers or 'none'}"
            )
    return _REGISTRY[name](splitter, **options)


def _takes(factory: Callable[..., IntermediateTask], option: str) -> bool:
    params = inspect.signature(factory).parameters
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _load_builtin() -> None:
    from . import masked_lm, sentence_pair, sentiment  # noqa: F401  (registration side effect)
