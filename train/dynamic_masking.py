"""Dynamic masking: new masks for every batch of a masked-text store (DistilBERT's recipe,
setting 5b), instead of the masks fixed when the store was written.

The batch's text is restored (each masked position gets its ``mlm_labels`` token back) and
masked again by the store's own rule (``precompute/shared/masking.py``) with a generator seeded
by the run's seed, the rank, the step and the micro-batch, so a resumed run masks exactly as an
uninterrupted one. The stored teacher outputs belong to the old masks and are dropped: the
online teacher computes them for the new ones.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from smash.precompute.shared.masking import Masking
from smash.store.schema import FIELDS

__all__ = ["remask", "restored_ids"]


def restored_ids(batch: dict[str, Any]) -> torch.Tensor:
    """(B, L) the batch's input ids as they were before masking."""
    ids = batch["input_ids"].clone()
    labels = batch["mlm_labels"]
    known = labels != -100
    ids[batch["mask_batch"][known], batch["mask_positions"][known]] = labels[known]
    return ids


def remask(
    batch: dict[str, Any],
    masking: Masking,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
) -> dict[str, Any]:
    """``batch`` (a collated CPU batch of a masked-text store) with new masks: ``input_ids``,
    ``mask_batch``, ``mask_positions`` and ``mlm_labels`` replaced, the teacher fields removed."""
    original = restored_ids(batch).numpy()
    real = batch["attention_mask"].numpy().astype(bool)
    maskable = real & ~np.isin(original, np.fromiter(special_ids, np.int64))
    ids, rows, positions, labels = original.copy(), [], [], []
    for b in range(len(original)):
        masked = masking.apply(
            original[b], maskable[b], rng, mask_id=mask_id, vocab_size=vocab_size
        )
        ids[b] = masked.input_ids
        rows.append(np.full(len(masked.mask_positions), b))
        positions.append(masked.mask_positions)
        labels.append(masked.original_ids)
    teacher = {f.key for f in FIELDS if f.source == "teacher"}
    out = {k: v for k, v in batch.items() if k not in teacher}
    out.update(
        input_ids=torch.from_numpy(ids),
        mask_batch=torch.from_numpy(np.concatenate(rows)),
        mask_positions=torch.from_numpy(np.concatenate(positions)),
        mlm_labels=torch.from_numpy(np.concatenate(labels)),
    )
    return out
