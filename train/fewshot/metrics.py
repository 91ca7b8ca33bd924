"""Task metrics (accuracy, binary F1, Pearson, Spearman) and the rules that pick and summarise
results.

Metrics return fractions in [0, 1] (correlations in [-1, 1]); reports multiply by 100 as the
paper's Table 2 does. A metric that is undefined (the correlation of a constant prediction) is
NaN and loses every comparison in :func:`select_best`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "METRICS",
    "accuracy",
    "aggregate",
    "compute_metric",
    "f1_binary",
    "pearson",
    "select_best",
    "spearman",
]


def accuracy(preds: Sequence[float], labels: Sequence[float]) -> float:
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean())


def f1_binary(preds: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class (label index 1), as GLUE reports for MRPC and QQP."""
    p, y = np.asarray(preds) == 1, np.asarray(labels) == 1
    tp = float((p & y).sum())
    denom = float(p.sum() + y.sum())
    return 2.0 * tp / denom if denom else 0.0


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    p, y = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    p, y = p - p.mean(), y - y.mean()
    denom = math.sqrt(float((p * p).sum()) * float((y * y).sum()))
    return float((p * y).sum()) / denom if denom else math.nan


def _ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks (as GLUE's scipy.stats.spearmanr)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    _, first, counts = np.unique(v[order], return_index=True, return_counts=True)
    for start, n in zip(first, counts):
        if n > 1:
            ranks[order[start : start + n]] = start + (n + 1) / 2
    return ranks


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson's correlation of the ranks, reported beside Pearson for STS-B as GLUE does."""
    return pearson(_ranks(preds), _ranks(labels))


METRICS = {"acc": accuracy, "f1": f1_binary, "pearson": pearson, "spearman": spearman}


def compute_metric(name: str, preds: Sequence[float], labels: Sequence[float]) -> float:
    return METRICS[name](preds, labels)


def select_best(scores: Sequence[float]) -> int:
    """Index of the best score; the earliest wins ties (LM-BFF keeps a checkpoint only when
    the dev metric strictly improves) and NaN never wins over a number."""
    best = 0
    for i, s in enumerate(scores):
        if not math.isnan(s) and (math.isnan(scores[best]) or s > scores[best]):
            best = i
    return best


def aggregate(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds; population std (ddof=0), as LM-BFF's
    ``tools/gather_result.py`` computes it with ``np.std``."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std())
