"""The teacher over LM-BFF k-shot splits: soft labels for the ``distill`` baselines.

SMASH's Table 2 compares against prompt-based fine-tuning with an added soft-label loss (Eq. 1)
between the teacher's and the student's distributions at ``<mask>`` on the same inputs
(``distill``; ``distill bt10`` on a training set augmented by back-translation). The teacher is
never loaded during few-shot training: ``precompute-teacher --task kshot`` runs it once over
the k-shot files, through the teacher pass every store is made with, into one store per
downstream task (``OUT/<task folder>/``, e.g. ``stores/kshot/SST-2``).

Each example is keyed in its ``meta`` by ``KEY_FIELDS`` (task, K, seed, split, row: the
0-based data row of the file), and the manifest's ``producer`` records which files were read
(path under the k-shot root, sha256, rows), the template, max length and sentence limits, and
``example_keys``: what ``smash-store verify`` checks every example carries, once. No store
format change is needed: the keys are the existing ``meta`` column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from smash.precompute.kshot.data import DataError, kshot_dir, read_examples
from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.templates import parse_template, require_room
from smash.precompute.tasks import TaskExample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "KEY_FIELDS",
    "KSHOT_TASK",
    "SPLITS",
    "KShotTeacherTask",
    "file_sha256",
    "split_file",
]

KSHOT_TASK = "kshot"  # the producer's ``task`` of a k-shot store
KEY_FIELDS = ("task", "k", "seed", "split", "row")
SPLITS = ("train", "dev")


def file_sha256(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_file(task: Task, k: int, seed: int, split: str) -> str:
    """A split's file under the k-shot root, as a store records it (``SST-2/16-13/train.tsv``;
    ``dev`` is the task's dev file, ``dev_matched`` for MNLI)."""
    if split not in SPLITS:
        raise ValueError(f"unknown k-shot split {split!r}; expected one of {SPLITS}")
    stem = task.dev if split == "dev" else split
    return f"{task.dirname}/{k}-{seed}/{stem}.{task.fmt}"


class KShotTeacherTask:
    """One downstream task's k-shot splits as a teacher-pass task (``precompute/tasks.py``).

    Examples come from the files, not from a corpus: every row of each (K, seed, split) file
    in file order, K and seeds in the given order (one store serves a learning curve over K). The template and max length are the few-shot
    learner's (the student's prompt must be the same ids, which the trainer checks), and so is
    LM-BFF's first-sentence limit (``sentence_limits``).
    """

    name = KSHOT_TASK

    def __init__(
        self,
        task: Task,
        root: str | Path,
        ks: Sequence[int],
        seeds: Sequence[int],
        splits: Sequence[str] = ("train",),
        template: str | None = None,
        max_length: int | None = None,
    ):
        if not seeds:
            raise ValueError("--kshot-seeds: give at least one seed")
        self.task, self.ks = task, list(dict.fromkeys(ks))
        self.seeds, self.splits = list(seeds), list(dict.fromkeys(splits))
        self.template = template or task.template
        parse_template(self.template)  # a bad template fails before anything is read
        self.max_length = max_length or task.max_length
        self.verbalizer = tuple(task.verbalizer)
        self.sentence_limits = ((0, task.first_sent_limit),) if task.first_sent_limit else ()
        root = Path(root)
        self.files: dict[str, dict[str, Any]] = {}
        self._examples: list[TaskExample] = []
        self._first_row = ""  # FILE:LINE of the first example
        for k, seed in ((k, seed) for k in self.ks for seed in self.seeds):
            if not kshot_dir(root, task, k, seed).is_dir():
                raise DataError(
                    f"{kshot_dir(root, task, k, seed)}: no {k}-shot split of {task.name} for "
                    f"seed {seed} (make-kshot --k {k} builds it)"
                )
            for split in self.splits:
                rel = split_file(task, k, seed, split)
                rows = read_examples(task, root / rel)
                self._first_row = self._first_row or f"{root / rel}:{rows[0].line}"
                self.files[rel] = {"sha256": file_sha256(root / rel), "rows": len(rows)}
                for row, ex in enumerate(rows):
                    key = {"task": task.name, "k": k, "seed": seed, "split": split, "row": row}
                    label = -1 if task.is_regression else int(ex.label)
                    self._examples.append(TaskExample(ex.texts, label, key))

    def check_room(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse a max length that the template's own tokens fill: every prompt would lose
        all its sentence tokens (named at the first row)."""
        try:
            require_room(self.template, tokenizer, self.max_length)
        except ValueError as err:
            raise DataError(f"{self.task.name}: {self._first_row} (row 0): {err}") from None

    def __len__(self) -> int:
        return len(self._examples)

    def examples(self, corpus: Any = None, seed: int = 0) -> Iterator[TaskExample]:
        return iter(self._examples)

    def keep(self, verbalizer_logprobs: np.ndarray) -> None:
        return None  # every row gets its soft label

    def fingerprint(self) -> str:
        """The store's ``corpus_fingerprint``: the files read, by path and content."""
        h = hashlib.sha256()
        for rel, info in sorted(self.files.items()):
            h.update(f"{rel}\0{info['sha256']}\0".encode())
        return "sha256:" + h.hexdigest()

    def config(self) -> dict[str, Any]:
        return {
            "kshot_task": self.task.name,
            "k": self.ks,
            "seeds": self.seeds,
            "splits": self.splits,
            "sentence_limits": [list(pair) for pair in self.sentence_limits],
            "files": self.files,
        }
