"""The stored example, defined once: its fields, their dtypes, shapes and where they come from.

An example is a prompt (``input_ids``) with one or more answer positions (``mask_positions``),
what the teacher said at each of them (``topk_ids``, ``topk_logprobs``, ``tail_logmass``), for
masked-LM text the token each position held before masking (``mlm_labels``), a label and
provenance. Each field has a *level*:

    token    one value per input token        concatenated over a chunk; padded to (B, L)
    mask     one value (or row of k) per answer position, a "mask row"; concatenated to (R, ...)
    example  one value per example             stacked to (B,)

The codec (``codec.py``) stores each field as a column by its level and ``storage``; the reader
decodes it back to ``dtype``; ``collate_examples`` batches it by its level under its
``batch_key``; the student step and the online teacher take their inputs from ``STEP_KEYS``
and ``TEACHER_FIELDS``. Adding a field is one line here (and whoever produces it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np

__all__ = [
    "FIELDS",
    "STEP_KEYS",
    "TEACHER_FIELDS",
    "Field",
    "StoredExample",
]

Level = Literal["token", "mask", "example"]
Storage = Literal["ids", "index", "float16", "float32", "int8", "json"]


@dataclass(frozen=True)
class Field:
    """One field of a stored example.

    ``storage`` is how a column keeps it, losslessly: ``ids`` token ids (narrowed to the
    smallest unsigned type that holds the vocabulary), ``index`` small non-negative integers
    (narrowed to their maximum), ``float16``/``float32`` the exact bit patterns of values that
    must be given in that dtype, ``int8`` integers in [-1, 127], ``json`` a JSON value per
    example (only stored when some example has one). ``width="k"``: a row of the store's k
    values per mask row. ``source``: who fills it (the prompt, the teacher, or the task).
    """

    name: str
    level: Level
    dtype: Any  # decoded numpy dtype (object for json)
    storage: Storage
    source: Literal["prompt", "teacher", "task"]
    width: Literal["k"] | None = None
    batch_key: str | None = None  # its name in a collated batch, when not ``name``
    default: Any = None  # what a writer stores when an example has none (None: required)
    optional: bool = False

    @property
    def key(self) -> str:
        return self.batch_key or self.name


FIELDS: tuple[Field, ...] = (
    Field("input_ids", "token", np.int64, "ids", "prompt"),
    Field("mask_positions", "mask", np.int64, "index", "prompt"),
    Field("topk_ids", "mask", np.int64, "ids", "teacher", width="k"),
    Field("topk_logprobs", "mask", np.float16, "float16", "teacher", width="k"),
    Field("tail_logmass", "mask", np.float32, "float32", "teacher"),
    # masked-LM stores: the token each masked position held before masking (-100: none)
    Field("mlm_labels", "mask", np.int64, "ids", "task", default=-100, optional=True),
    Field("label", "example", np.int64, "int8", "task", batch_key="labels", default=-1),
    Field("meta", "example", object, "json", "task"),
)

# What the teacher fills in (the online teacher replaces exactly these in a batch).
TEACHER_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.source == "teacher")

# The tensors of a collated batch that a training step reads: every non-JSON field, plus the
# attention mask of the padded tokens and the example each mask row belongs to.
STEP_KEYS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "mask_batch",
    *(f.key for f in FIELDS if f.storage != "json" and f.name != "input_ids"),
)


class StoredExample(TypedDict, total=False):
    """One example as ``StoreDataset`` yields it (the writer takes the same keys)."""

    input_ids: np.ndarray  # (L,) int64
    mask_positions: np.ndarray  # (M,) int64
    topk_ids: np.ndarray  # (M, k) int64
    topk_logprobs: np.ndarray  # (M, k) float16, in the store's canonical order
    tail_logmass: np.ndarray  # (M,) float32
    mlm_labels: np.ndarray  # (M,) int64, the original tokens (masked-LM stores; else -100)
    label: int  # -1: none
    meta: Any  # JSON, or None
    __key__: str  # "<shard name>/<index in shard>" (reader only)
