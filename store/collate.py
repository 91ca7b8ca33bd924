"""Batching stored examples into padded tensors for a student step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["collate_examples"]


def collate_examples(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad and stack examples from ``StoreDataset``.

    Returns (B examples, R mask rows in total, L the longest example, k the store's k):
        input_ids (B, L) int64, attention_mask (B, L) int64,
        mask_batch (R,) int64 and mask_positions (R,) int64: where each row's mask sits,
        topk_ids (R, k) int64, topk_logprobs (R, k) float16, tail_logmass (R,) float32,
        labels (B,) int64 (-1 where none), keys: list of B sample keys.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(ex["input_ids"]) for ex in examples]
    input_ids = np.full((len(examples), max(lengths)), pad_id, dtype=np.int64)
    attention = np.zeros_like(input_ids)
    for b, ex in enumerate(examples):
        input_ids[b, : lengths[b]] = ex["input_ids"]
        attention[b, : lengths[b]] = 1
    n_masks = [len(ex["mask_positions"]) for ex in examples]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "mask_batch": torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(n_masks)),
        "mask_positions": torch.from_numpy(
            np.concatenate([ex["mask_positions"] for ex in examples]).astype(np.int64)
        ),
        "topk_ids": torch.from_numpy(np.concatenate([ex["topk_ids"] for ex in examples])),
        "topk_logprobs": torch.from_numpy(np.concatenate([ex["topk_logprobs"] for ex in examples])),
        "tail_logmass": torch.from_numpy(np.concatenate([ex["tail_logmass"] for ex in examples])),
        "labels": torch.tensor([ex["label"] for ex in examples], dtype=torch.int64),
        "keys": [ex.get("__key__") for ex in examples],
    }
