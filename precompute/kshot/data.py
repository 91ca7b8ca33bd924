"""Read task files (LM-BFF's k-shot layout and the original task files) into examples.

Every row is checked as it is read: bytes that are not UTF-8, a wrong column count, a label
outside the task's set or an unparsable STS-B score raise :class:`DataError` naming the file
and the 1-based line, so a bad download is found before any training starts.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.text_files import utf8_lines

__all__ = [
    "DataError",
    "Example",
    "KShotData",
    "kshot_dir",
    "load_kshot",
    "parse_label",
    "read_examples",
    "read_rows",
    "require_file",
]


class DataError(ValueError):
    """A task file is missing or malformed; the message names the file and the line."""


@dataclass(frozen=True)
class Example:
    """One example: its sentence(s), its label (class index, or the score for regression) and
    the line of the file it came from."""

    texts: tuple[str, ...]
    label: int | float
    line: int


@dataclass(frozen=True)
class KShotData:
    """One k-shot split: ``train`` and ``dev`` examples and one test set per results column."""

    train: list[Example]
    dev: list[Example]
    tests: dict[str, list[Example]]


def kshot_dir(root: str | Path, task: Task, k: int, seed: int) -> Path:
    """``ROOT/TASK/K-SEED``, LM-BFF's k-shot layout (``data/k-shot/SST-2/16-13``)."""
    return Path(root) / task.dirname / f"{k}-{seed}"


def load_kshot(root: str | Path, task: Task, k: int, seed: int) -> KShotData:
    """Read the train, dev and test files of one k-shot split of ``task``."""
    folder = kshot_dir(root, task, k, seed)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no {k}-shot split of {task.name} for seed {seed} (make-kshot --k {k} "
            "builds it from the original task files)"
        )
    ext = task.fmt

    def read(stem: str) -> list[Example]:
        return read_examples(task, folder / f"{stem}.{ext}")

    return KShotData(
        train=read("train"),
        dev=read(task.dev),
        tests={col: read(stem) for col, stem in task.tests.items()},
    )


def read_examples(task: Task, path: str | Path) -> list[Example]:
    """All examples of one file of ``task``; raises DataError on the first bad row."""
    examples = []
    for line, row in read_rows(task, path):
        texts = tuple(row[c] for c in task.text_columns)
        examples.append(Example(texts=texts, label=parse_label(task, row, path, line), line=line))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def read_rows(task: Task, path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, columns)`` for each data row, checking the column count.

    TSV files (GLUE) have a header, rows are split on tabs without quoting (as GLUE's readers
    do) and every row must have at least as many columns as the header. A row with more (the
    public SNLI ``train.tsv`` has some, with extra annotator labels) is read as LM-BFF reads
    it: the task's fixed text columns and the last column as the label. CSV files have no
    header and exactly ``label,sentence`` per line; blank lines are skipped, as pandas does.
    """
    path = require_file(task, path)
    lines = utf8_lines(path, DataError, newline="" if task.fmt == "csv" else None)
    if task.fmt == "csv":
        reader = csv.reader(text for _, text in lines)
        for row in reader:
            if not row:  # a blank line: pandas, which LM-BFF reads CSVs with, skips it
                continue
            if len(row) != 2:
                raise DataError(
                    f"{path}:{reader.line_num}: expected 2 comma-separated "
                    f"columns (label,sentence), found {len(row)}"
                )
            yield reader.line_num, row
        return
    _, first = next(lines, (1, ""))
    header = first.rstrip("\n").split("\t")
    if len(header) < task.min_columns:
        raise DataError(
            f"{path}:1: header has {len(header)} tab-separated columns, "
            f"{task.name} needs at least {task.min_columns}"
        )
    for line, text in lines:
        row = text.rstrip("\n").split("\t")
        if len(row) < len(header):
            raise DataError(
                f"{path}:{line}: expected {len(header)} tab-separated columns "
                f"(as in the header), found {len(row)}"
            )
        yield line, row


_KSHOT_HINT = "make-kshot builds it from the original task files"


def require_file(task: Task, path: str | Path, hint: str = _KSHOT_HINT) -> Path:
    """``path`` as a Path; raises DataError naming it (and ``hint``) when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (expected LM-BFF's layout for {task.name}; {hint})"
        )
    return path


def parse_label(task: Task, row: list[str], path: str | Path, line: int) -> int | float:
    """The row's label as a class index, or as a float score in ``task.bounds``."""
    raw = row[task.label_column].strip()
    if task.is_regression:
        lo, hi = task.bounds
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not lo <= score <= hi:
            raise DataError(
                f"{path}:{line}: {task.name} score {raw!r} is not a number in [{lo:g}, {hi:g}]"
            )
        return score
    if raw not in task.labels:
        raise DataError(
            f"{path}:{line}: label {raw!r} is not one of {task.name}'s labels {list(task.labels)}"
        )
    return task.labels.index(raw)
