"""Batching stored examples into padded tensors for a student step, field by field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .schema import FIELDS, StoredExample

__all__ = ["collate_examples"]


def collate_examples(examples: Sequence[StoredExample], pad_id: int) -> dict[str, Any]:
    """Pad and stack examples from ``StoreDataset``, each field by its level (``schema.py``).

    Returns (B examples, R mask rows in total, L the longest example, k the store's k), under
    each field's ``batch_key``:
        token level: input_ids (B, L) int64, padded with ``pad_id``, and attention_mask (B, L);
        mask level: mask_positions (R,), topk_ids (R, k), topk_logprobs (R, k) float16 and
            tail_logmass (R,) float32 (top-k targets) or sample_counts (R, k) int64 and
            teacher_entropy (R,) float32 (sampled targets), and mask_batch (R,): the example
            each row belongs to;
        example level: labels (B,) int64 (-1 where none);
        keys: list of B sample keys. JSON fields (meta) are not batched.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(ex["input_ids"]) for ex in examples]
    n_masks = [len(ex["mask_positions"]) for ex in examples]
    attention = np.zeros((len(examples), max(lengths)), dtype=np.int64)
    for b, length in enumerate(lengths):
        attention[b, :length] = 1
    batch: dict[str, Any] = {
        "attention_mask": torch.from_numpy(attention),
        "mask_batch": torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(n_masks)),
    }
    for f in FIELDS:
        if f.storage == "json" or f.name not in examples[0]:  # the other targets' fields
            continue
        values = [ex[f.name] for ex in examples]
        if f.level == "token":
            padded = np.full(attention.shape, pad_id if f.name == "input_ids" else 0, f.dtype)
            for b, value in enumerate(values):
                padded[b, : lengths[b]] = value
            batch[f.key] = torch.from_numpy(padded)
        elif f.level == "mask":
            batch[f.key] = torch.from_numpy(np.concatenate(values).astype(f.dtype, copy=False))
        else:
            batch[f.key] = torch.from_numpy(np.asarray(values, dtype=f.dtype))
    batch["keys"] = [ex.get("__key__") for ex in examples]
    return batch
