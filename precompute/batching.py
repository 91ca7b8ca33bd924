"""Length-bucketed batches filled to a token budget, so that padding stays small."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["token_budget_batches"]


def token_budget_batches(
    lengths: Sequence[int], token_budget: int, max_batch: int = 4096
) -> list[np.ndarray]:
    """Group example indices into batches whose padded size (rows x longest) fits the budget.

    Examples are sorted by length (stable, so the grouping is deterministic), then cut into
    consecutive runs; neighbours in length order have near-equal lengths, which is what keeps
    padding efficiency (real tokens / computed tokens) close to 1.
    """
    lengths = np.asarray(lengths)
    if len(lengths) and lengths.max() > token_budget:
        raise ValueError(
            f"token budget {token_budget} is smaller than the longest example "
            f"({lengths.max()} tokens)"
        )
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        if end - start > max_batch or (end - start) * longest > token_budget:
            batches.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches
