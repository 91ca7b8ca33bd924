"""iPET's unlabelled in-domain data: a task's original training set without the k-shot examples.

PET labels a large set of unlabelled examples of the task itself (Schick and Schütze, 2021: up
to 10,000 per label, drawn from the training set with its labels removed). Here, for one
k-shot split (task, K, seed): the rows of ``ORIGINAL/TASK/train.*`` (LM-BFF's ``original/``
layout, read as ``make-kshot`` reads it) minus the split's train and dev rows, and minus every
row whose text equals one of theirs (a duplicate of a labelled example is not unlabelled
data); in the order of the seed's shuffle (``select_kshot``'s, so the k-shot rows are the ones
that would come first), the first ``per_label`` rows of each gold label are taken, and the
labels are then dropped. A pure function of (task, K, seed, per_label) and the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from smash.precompute.kshot.data import Example, parse_label, read_rows, require_file
from smash.precompute.kshot.splits import select_kshot
from smash.precompute.kshot.tasks import Task

__all__ = ["PET_PER_LABEL", "unlabelled_examples"]

PET_PER_LABEL = 10_000


def unlabelled_examples(
    original: str | Path, task: Task, k: int, seed: int, per_label: int = PET_PER_LABEL
) -> list[Example]:
    """The unlabelled set of (task, K, seed): examples with ``label`` -1 and ``line`` their
    line in the original training file."""
    if task.is_regression:
        raise ValueError(f"{task.name}: a regression task has no labels to draw per label from")
    path = require_file(
        task, Path(original) / task.dirname / f"train.{task.fmt}", "download the original files"
    )
    rows = [(line, row) for line, row in read_rows(task, path)]
    texts = [tuple(row[c] for c in task.text_columns) for _, row in rows]
    labels = [parse_label(task, row, path, line) for line, row in rows]
    train, dev = select_kshot(list(range(len(rows))), labels, seed, k)
    labelled = set(train) | set(dev)
    seen = {texts[i] for i in labelled}
    order = list(range(len(rows)))
    np.random.RandomState(seed).shuffle(order)  # select_kshot's order
    taken = dict.fromkeys(range(len(task.labels)), 0)
    out = []
    for i in order:
        if i in labelled or texts[i] in seen or taken[labels[i]] >= per_label:
            continue
        taken[labels[i]] += 1
        out.append(Example(texts=texts[i], label=-1, line=rows[i][0]))
    return out
