"""The stored example, defined once: its fields, their dtypes, shapes and where they come from.

An example is a prompt (``input_ids``) with one or more answer positions (``mask_positions``),
what the teacher said at each of them, for masked-LM text the token each position held before
masking (``mlm_labels``), a label and provenance. What the teacher said takes one
of three forms, the store's *targets* (``TARGET_KINDS``, recorded in its manifest):

    topk     the k most likely ids with their log-probabilities and the exact tail mass
             (``topk_ids``, ``topk_logprobs``, ``tail_logmass``)
    sampled  N tokens drawn from the teacher's full distribution (or from it at a proposal
             temperature), as their distinct ids, how often each was drawn and its importance
             ratio (``topk_ids``, ``sample_counts``, ``sample_logratios``; k = N, rows padded
             with count-0 entries), plus the teacher's entropy (``teacher_entropy``) for
             held-out KL
    hybrid   the top-k as ``topk`` keeps it (the head, exact), and N tokens drawn from the
             teacher restricted to the ids outside it (the tail), as distinct ids and counts
             (``tail_ids``, ``tail_counts``; N columns, padded with count-0 entries), plus
             ``teacher_entropy`` (format 4)

A field belongs to the targets of its ``kinds``; a chunk holds the columns of its own kind.
A field with a ``width`` has a row of that many values per mask: ``k`` (the store's k) or
``samples`` (a hybrid store's N). Each field has a *level*:

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
    "TARGET_KINDS",
    "TEACHER_FIELDS",
    "Field",
    "StoredExample",
    "fields_of",
]

Level = Literal["token", "mask", "example"]
TARGET_KINDS: tuple[str, ...] = ("topk", "sampled", "hybrid")
Storage = Literal["ids", "index", "float16", "float32", "int8", "json"]
Width = Literal["k", "samples"]


@dataclass(frozen=True)
class Field:
    """One field of a stored example.

    ``storage`` is how a column keeps it, losslessly: ``ids`` token ids (narrowed to the
    smallest unsigned type that holds the vocabulary), ``index`` small non-negative integers
    (narrowed to their maximum), ``float16``/``float32`` the exact bit patterns of values that
    must be given in that dtype, ``int8`` integers in [-1, 127], ``json`` a JSON value per
    example (only stored when some example has one); a float column written in another float
    precision by an older version (format 3's float32 ``teacher_entropy``) is read as such.
    ``width``: a row of the store's k (``"k"``) or N (``"samples"``) values per mask row. ``source``: who fills it (the prompt, the teacher, or the task).
    ``optional``: a column only in chunks whose examples have the field (all of them, or
    none); a chunk without it decodes to ``default`` (from format version 3 on).
    """

    name: str
    level: Level
    dtype: Any  # decoded numpy dtype (object for json)
    storage: Storage
    source: Literal["prompt", "teacher", "task"]
    width: Width | None = None
    batch_key: str | None = None  # its name in a collated batch, when not ``name``
    default: Any = None  # what a writer stores when an example has none (None: required)
    kinds: tuple[str, ...] = TARGET_KINDS  # the stores' targets that carry this field
    optional: bool = False

    @property
    def key(self) -> str:
        return self.batch_key or self.name


_HEAD = ("topk", "hybrid")  # the kinds that keep the teacher's top-k with its tail mass

FIELDS: tuple[Field, ...] = (
    Field("input_ids", "token", np.int64, "ids", "prompt"),
    Field("mask_positions", "mask", np.int64, "index", "prompt"),
    Field("topk_ids", "mask", np.int64, "ids", "teacher", width="k"),
    Field("topk_logprobs", "mask", np.float16, "float16", "teacher", width="k", kinds=_HEAD),
    Field("tail_logmass", "mask", np.float32, "float32", "teacher", kinds=_HEAD),
    Field("sample_counts", "mask", np.int64, "index", "teacher", width="k", kinds=("sampled",)),
    Field(
        "sample_logratios", "mask", np.float32, "float32", "teacher", width="k", kinds=("sampled",)
    ),
    Field("tail_ids", "mask", np.int64, "ids", "teacher", width="samples", kinds=("hybrid",)),
    Field("tail_counts", "mask", np.int64, "index", "teacher", width="samples", kinds=("hybrid",)),
    # float16 from format 4 on (2 bytes a mask; held-out KL keeps its precision,
    # benchmarks/RESULTS.md); format 3's sampled stores hold float32
    Field("teacher_entropy", "mask", np.float32, "float16", "teacher", kinds=("sampled", "hybrid")),
    # masked-LM stores: the token each masked position held before masking (-100: none)
    Field("mlm_labels", "mask", np.int64, "ids", "task", default=-100, optional=True),
    Field("label", "example", np.int64, "int8", "task", batch_key="labels", default=-1),
    # provenance. Corpus tasks: the document (``doc``, its index among the corpus's non-blank
    # documents, in reading order) and position of each sentence, counted among all of the
    # document's sentences (``SentenceSplitter.sentences``, the dropped ones included):
    # sentiment {doc, i}; mlm {doc, i} (the segment's first sentence); sentence pairs
    # {doc, i, j}, plus ``other`` across documents: x1 is sentence i of doc, x2 sentence j of
    # ``other`` (else of doc). k-shot stores: {task, k, seed, split, row} (``row``: 0-based
    # data row of the split's file).
    Field("meta", "example", object, "json", "task"),
)


def fields_of(targets: str) -> tuple[Field, ...]:
    """The fields a store of ``targets`` (one of ``TARGET_KINDS``) holds, in column order."""
    if targets not in TARGET_KINDS:
        raise ValueError(f"unknown targets {targets!r}; expected one of {TARGET_KINDS}")
    return tuple(f for f in FIELDS if targets in f.kinds)


# What the teacher fills in for top-k targets (the online teacher gives exactly these).
TEACHER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields_of("topk") if f.source == "teacher")

# The tensors of a collated batch that a training step may read: every non-JSON field (those
# of the store's targets are present), plus the attention mask of the padded tokens and the
# example each mask row belongs to.
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
    topk_logprobs: np.ndarray  # (M, k) float16, in the store's canonical order (top-k)
    tail_logmass: np.ndarray  # (M,) float32 (top-k)
    sample_counts: np.ndarray  # (M, k) int64, draws per id, 0 on padding (sampled)
    sample_logratios: np.ndarray  # (M, k) float32, log(p/q) per id, 0 at tau = 1 (sampled)
    tail_ids: np.ndarray  # (M, N) int64, distinct ids drawn outside the top-k (hybrid)
    tail_counts: np.ndarray  # (M, N) int64, draws per id, 0 on padding (hybrid)
    teacher_entropy: np.ndarray  # (M,) float32, nats (sampled, hybrid)
    mlm_labels: np.ndarray  # (M,) int64, the original tokens (masked-LM stores; else -100)
    label: int  # -1: none
    meta: Any  # JSON, or None
    __key__: str  # "<shard name>/<index in shard>" (reader only)
