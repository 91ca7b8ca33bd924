"""The layout inside a shard: many examples per tar member, stored as compressed columns.

One tar member (``<key>.cols.zst``) holds a *chunk* of up to ``chunk_size`` examples as a
single zstd frame (with zstd's content checksum) over::

    uint32 header_length | header (JSON) | column bytes, one after another

The JSON header holds the chunk's example count ``n``, its ``k``, the vocabulary size it was
written for (from format version 2 on), its targets when they are not ``topk`` (``sampled``
from format version 3, ``hybrid`` from 4, which also records its draws per mask as
``samples``) and each column's name, dtype, shape and the reversible transforms applied to it,
so a chunk decodes by itself. Columns of a top-k chunk:

    length          (n,)       uint8/uint16   tokens per example
    input_ids       (sum L,)   uint16/uint32  concatenated token ids
    n_masks         (n,)       uint8          mask positions per example
    mask_positions  (sum M,)   uint8/uint16
    topk_ids        (R, k)     uint16/uint32  R = sum M rows, one per mask position
    topk_logprobs   (R, k)     float16        teacher log-probabilities at T=1
    tail_logmass    (R,)       float32        log(1 - sum of the row's top-k probabilities)
    mlm_labels      (R,)       uint16/uint32  masked-LM stores only (format 3): original tokens
    label           (n,)       int8           -1 where the example has none
    meta            JSON list  only when some example has metadata

A sampled chunk (``schema.py``) has ``sample_counts`` (R, k) uint8 (uint16 past 255 draws),
``sample_logratios`` (R, k) float32 (all 0, so next to free, at proposal temperature 1) and
``teacher_entropy`` (R,) float16 (float32 in format 3) in place of ``topk_logprobs`` and
``tail_logmass``; its ``topk_ids`` rows hold the distinct sampled ids, padded with count-0
entries. A hybrid chunk has the columns of a top-k chunk, then ``tail_ids`` (R, N) and
``tail_counts`` (R, N): the distinct ids drawn outside the top-k and their counts, and
``teacher_entropy``.

Transforms (all exactly invertible, so read-back values equal written values bit for bit):

- rows are put in canonical order: descending log-probability (sampled draws: count), ties by
  ascending id; a hybrid row's head and tail each in its own. The float16 bit patterns of negative numbers then *rise* along a row, so
  ``delta`` (differences of the uint16 patterns, modulo 2**16) turns them into small numbers;
- ``planes`` splits multi-byte integers into byte planes (all low bytes, then all high
  bytes), which lets zstd see the near-constant high bytes of small ids and deltas.

``benchmarks/bench_store_layout.py`` measures these choices against plain WebDataset and
Megatron-style per-sample ``torch.save`` payloads; ``benchmarks/RESULTS.md`` has the figures.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from .schema import Field, StoredExample, fields_of

__all__ = ["ChunkLayout", "DecodedChunk", "canonical_order", "encode_chunk"]

CHUNK_SUFFIX = "cols.zst"
_HEADER = struct.Struct("<I")


@dataclass(frozen=True)
class ChunkLayout:
    """Knobs of the chunk encoding; the store's defaults are the measured best."""

    level: int = 3  # zstd level (higher: ~2% smaller, 1.5x slower writes)
    planes: bool = True  # byte-plane split of multi-byte integer columns
    delta: bool = True  # delta-code the float16 patterns along each row
    order: str = "value"  # canonical row order: "value" (descending) or "id" (ascending)

    def to_json(self) -> dict:
        return {
            "level": self.level,
            "planes": self.planes,
            "delta": self.delta,
            "order": self.order,
        }


def canonical_order(ids: np.ndarray, logprobs: np.ndarray, order: str = "value") -> np.ndarray:
    """Per-row permutation (R, k) that sorts by descending value (ties: ascending id) or by id.
    ``logprobs``: the row's values (log-probabilities, or a sampled store's counts)."""
    if order == "id":
        return np.argsort(ids, axis=1, kind="stable")
    if order != "value":
        raise ValueError(f"unknown row order {order!r}; expected 'value' or 'id'")
    by_id = np.argsort(ids, axis=1, kind="stable")
    vals = np.take_along_axis(logprobs.astype(np.float32), by_id, axis=1)
    by_value = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(by_id, by_value, axis=1)


def _uint(max_value: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def _planes(raw: np.ndarray) -> bytes:
    width = raw.dtype.itemsize
    if width == 1:
        return raw.tobytes()
    return np.ascontiguousarray(raw.reshape(-1).view(np.uint8).reshape(-1, width).T).tobytes()


def _unplanes(buf: memoryview, dtype: np.dtype, count: int) -> np.ndarray:
    width = dtype.itemsize
    flat = np.frombuffer(buf, dtype=np.uint8, count=count * width)
    if width == 1:
        return flat.view(dtype)
    return np.ascontiguousarray(flat.reshape(width, count).T).view(dtype).reshape(-1)


# The column of per-example counts that cuts a level's concatenated values into examples.
_COUNT_COLUMN = {"token": "length", "mask": "n_masks"}
_FLOATS = {2: np.float16, 4: np.float32}  # a float column's precision, by its stored width


def _value(example: Mapping[str, Any], f: Field) -> Any:
    """``example``'s value of field ``f``: its default when missing or None, if it has one."""
    value = example.get(f.name)
    if value is None:
        if f.default is None and f.storage != "json":
            raise KeyError(f"an example has no {f.name!r}")
        return f.default
    return value


def _parts(examples: Sequence[Mapping[str, Any]], f: Field, width: int) -> list[np.ndarray]:
    """Each example's value of field ``f`` as an array; an empty sequence (e.g. ``[]``,
    which numpy makes float64) becomes an empty array of the field's own dtype and shape."""
    out = []
    for ex in examples:
        arr = np.asarray(_value(ex, f))
        if arr.ndim == 1 and arr.size == 0:
            arr = np.zeros(0 if f.width is None else (0, width), f.dtype)
        out.append(arr)
    return out


def _has(example: Mapping[str, Any], f: Field) -> bool | None:
    """Whether ``example`` gives optional field ``f``; None when it cannot tell (no rows).

    A value that is the field's default throughout is what a chunk without the column decodes
    to, so it counts as not given: a decoded example encodes back to the chunk it came from."""
    value = example.get(f.name)
    if value is None:
        return False
    arr = np.asarray(value)
    return None if arr.size == 0 else not bool((arr == f.default).all())


def _present(examples: Sequence[Mapping[str, Any]], f: Field) -> bool:
    """Whether a chunk stores field ``f``: always, unless it is optional and no example has it
    (an optional field given for some examples of a chunk but not all is an error)."""
    if not f.optional:
        return True
    given = [_has(ex, f) for ex in examples]
    if any(given) and False in given:
        missing = given.index(False)
        raise ValueError(
            f"example {missing} has no {f.name!r}, which other examples of its chunk have: "
            f"give it for all of them or none"
        )
    return any(given)


def _column(examples: Sequence[Mapping[str, Any]], f: Field, widths: dict[str, int]) -> np.ndarray:
    """One field of all examples, concatenated: (sum,) or, for a field with a width, (rows,
    width)."""
    width = widths[f.width] if f.width else 0
    parts = _parts(examples, f, width)
    if f.width is None:
        return np.concatenate([p.reshape(-1) for p in parts]) if parts else np.zeros(0, f.dtype)
    for i, p in enumerate(parts):
        if p.ndim != 2 or p.shape[1] != width:
            raise ValueError(
                f"example {i}: {f.name} must have one row of {f.width}={width} per mask "
                f"position, got shape {p.shape}"
            )
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, width), f.dtype)


def _stored(f: Field, values: np.ndarray, vocab_size: int) -> np.ndarray:
    """The column of field ``f`` in its storage type (checked, lossless)."""
    if f.storage == "ids":
        values = values.astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= vocab_size):
            raise ValueError(
                f"{f.name} out of range [0, {vocab_size}): min {values.min()}, max {values.max()}"
            )
        return values.astype(_uint(vocab_size - 1))
    if f.storage == "index":
        values = values.astype(np.int64)
        if values.size and values.min() < 0:
            raise ValueError(f"{f.name} must be >= 0, got {values.min()}")
        return values.astype(_uint(int(values.max(initial=0))))
    if f.storage in ("float16", "float32"):
        stored = values.astype(f.storage)
        # a wider float is taken when it holds the stored precision's values exactly (a
        # decoded float16 column comes back as float32), never rounded without a word
        same = stored.astype(values.dtype).view(f"u{values.dtype.itemsize}") == values.view(
            f"u{values.dtype.itemsize}"
        )
        if values.dtype.kind != "f" or not same.all():
            raise TypeError(
                f"{f.name} must be {f.storage} (the stored precision), got {values.dtype}"
                + (" values that it would round" if values.dtype.kind == "f" else "")
            )
        return stored.view(np.uint16 if f.storage == "float16" else np.uint32)
    values = values.astype(np.int64)  # int8
    if values.size and (values.min() < -1 or values.max() > 127):
        raise ValueError(f"{f.name} must be in [-1, 127], got {values.min()}..{values.max()}")
    return values.astype(np.int8).view(np.uint8)


# The field whose values put each kind of targets' rows of a width in canonical order.
_ORDER_BY = {
    ("topk", "k"): "topk_logprobs",
    ("sampled", "k"): "sample_counts",
    ("hybrid", "k"): "topk_logprobs",
    ("hybrid", "samples"): "tail_counts",
}
_ROW_IDS = {"k": "topk_ids", "samples": "tail_ids"}  # the ids a row of a width orders


def encode_chunk(
    examples: Sequence[Mapping[str, Any]],
    *,
    k: int,
    vocab_size: int,
    layout: ChunkLayout = ChunkLayout(),
    targets: str = "topk",
    samples: int | None = None,
) -> bytes:
    """Encode examples (``StoredExample`` dicts, the fields of ``schema.fields_of(targets)``)
    into one chunk; ``samples``: a hybrid store's draws per mask (N).

    Float fields must come in their stored precision (``topk_logprobs`` and
    ``teacher_entropy`` float16, ``tail_logmass`` float32), or in a wider float that holds
    those values exactly: the store keeps exactly those bits. Rows are put in the layout's
    canonical order. ``label`` may be missing or None (stored as -1), ``meta`` missing or None.
    """
    fields = fields_of(targets)
    if (targets == "hybrid") != (samples is not None):
        raise ValueError("samples (N) is given for hybrid targets, and only for them")
    widths = {"k": k, "samples": samples or 0}
    counts = {
        "token": np.array([len(ex["input_ids"]) for ex in examples], dtype=np.int64),
        "mask": np.array([len(ex["mask_positions"]) for ex in examples], dtype=np.int64),
    }
    rows = int(counts["mask"].sum())
    values = {
        f.name: _column(examples, f, widths)
        for f in fields
        if f.storage != "json" and _present(examples, f)
    }
    for f in fields:
        if f.name not in values:
            continue
        width = widths[f.width] if f.width else None
        want = (rows, width) if f.width else (rows,) if f.level == "mask" else None
        if want is not None and values[f.name].shape != want:
            of = f" of {f.width}={width}" if f.width else ""
            raise ValueError(
                f"mask-row fields must have one row{of} per mask position ({rows} rows); got "
                f"{f.name} {values[f.name].shape}"
            )
    stored = {f.name: _stored(f, values[f.name], vocab_size) for f in fields if f.name in values}
    offsets = np.repeat(np.arange(len(examples)), counts["mask"])
    positions = values["mask_positions"]
    if positions.size and ((positions < 0).any() or (positions >= counts["token"][offsets]).any()):
        raise ValueError("mask_positions must lie inside their example's input_ids")
    for width in ("k", "samples"):
        if widths[width] and (targets, width) in _ORDER_BY:
            ids, by = values[_ROW_IDS[width]], values[_ORDER_BY[(targets, width)]]
            perm = canonical_order(ids, by, layout.order)
            for f in fields:
                if f.width == width:
                    stored[f.name] = np.take_along_axis(stored[f.name], perm, axis=1)

    header: dict[str, Any] = {
        "n": len(examples),
        "k": k,
        "vocab_size": vocab_size,
        "layout": layout.to_json(),
    }
    if targets != "topk":  # absent: top-k, which keeps top-k chunks as format 2 wrote them
        header["targets"] = targets
    if samples is not None:
        header["samples"] = samples
    header["columns"] = []
    body = []

    def add(name: str, arr: np.ndarray, delta: bool = False) -> None:
        transforms = []
        if delta:  # value-ordered float16 rows: differences of their bit patterns are small
            arr = np.diff(arr, axis=1, prepend=np.uint16(0)).astype(np.uint16)
            transforms.append("delta")
        raw = np.ascontiguousarray(arr).reshape(-1)
        if layout.planes and raw.dtype.itemsize > 1:
            data = _planes(raw)
            transforms.append("planes")
        else:
            data = raw.tobytes()
        header["columns"].append(
            {
                "name": name,
                "dtype": raw.dtype.str,
                "shape": list(arr.shape),
                "transforms": transforms,
            }
        )
        body.append(data)

    started = set()
    for f in fields:
        if f.level in counts and f.level not in started:  # per-example counts before the level
            started.add(f.level)
            count = counts[f.level]
            add(_COUNT_COLUMN[f.level], count.astype(_uint(int(count.max(initial=0)))))
        if f.storage == "json":
            found = [_value(ex, f) for ex in examples]
            if any(m is not None for m in found):
                data = json.dumps(found, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                header["columns"].append(
                    {"name": f.name, "dtype": "json", "shape": [len(data)], "transforms": []}
                )
                body.append(data)
            continue
        if f.name not in stored:
            continue
        add(
            f.name,
            stored[f.name],
            delta=bool(layout.delta and f.width and k and f.storage == "float16"),
        )
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    payload = b"".join([_HEADER.pack(len(head)), head, *body])
    return zstandard.ZstdCompressor(level=layout.level, write_checksum=True).compress(payload)


class DecodedChunk:
    """Columns of one chunk; ``example(i)`` and iteration give ``StoredExample`` dicts of views.

    ``chunk[name]`` is a field's whole column (decoded dtype), ``lengths`` and ``n_masks`` the
    per-example token and mask-row counts, ``targets`` the kind of teacher targets it holds
    (the fields of ``schema.fields_of(targets)``).
    """

    def __init__(self, blob: bytes):
        # A decompressor per chunk: they are cheap, and one shared object is not thread-safe.
        payload = memoryview(zstandard.ZstdDecompressor().decompress(blob))
        (head_len,) = _HEADER.unpack_from(payload, 0)
        header = json.loads(bytes(payload[4 : 4 + head_len]))
        self.n: int = header["n"]
        self.k: int = header["k"]
        self.vocab_size: int | None = header.get("vocab_size")  # None: format version 1
        self.targets: str = header.get("targets", "topk")
        self.samples: int | None = header.get("samples")  # a hybrid chunk's draws per mask
        fields = fields_of(self.targets)  # ValueError: an unknown kind
        cols: dict[str, Any] = {}
        pos = 4 + head_len
        for col in header["columns"]:
            if col["dtype"] == "json":
                cols[col["name"]] = json.loads(bytes(payload[pos : pos + col["shape"][0]]))
                pos += col["shape"][0]
                continue
            dtype, count = np.dtype(col["dtype"]), int(np.prod(col["shape"]))
            nbytes = dtype.itemsize * count
            buf = payload[pos : pos + nbytes]
            if len(buf) != nbytes:
                raise ValueError(f"column {col['name']} is cut short")
            if "planes" in col["transforms"]:
                arr = _unplanes(buf, dtype, count)
            else:
                arr = np.frombuffer(buf, dtype=dtype, count=count)
            arr = arr.reshape(col["shape"])
            if "delta" in col["transforms"]:
                arr = np.cumsum(arr, axis=1, dtype=np.uint16)
            cols[col["name"]] = arr
            pos += nbytes
        if pos != len(payload):
            raise ValueError(f"{len(payload) - pos} trailing bytes after the last column")
        self.lengths = cols["length"].astype(np.int64)
        self.n_masks = cols["n_masks"].astype(np.int64)
        if len(self.lengths) != self.n or len(self.n_masks) != self.n:
            raise ValueError("column lengths disagree with the example counts")
        self._columns: dict[str, Any] = {}
        for f in fields:
            if f.storage == "json":
                self._columns[f.name] = cols.get(f.name) or [None] * self.n
            elif f.optional and f.name not in cols:
                rows = self.lengths.sum() if f.level == "token" else self.n_masks.sum()
                self._columns[f.name] = np.full(int(rows), f.default, f.dtype)
            elif f.storage in ("float16", "float32"):  # the precision the column was written in
                view = cols[f.name].view(_FLOATS[cols[f.name].dtype.itemsize])
                self._columns[f.name] = view if view.dtype == f.dtype else view.astype(f.dtype)
            elif f.storage == "int8":
                self._columns[f.name] = cols[f.name].view(np.int8).astype(f.dtype)
            else:
                self._columns[f.name] = cols[f.name].astype(f.dtype)
        # Per level: the offsets (Python ints: fast to index) and the columns cut by them.
        self._levels = []
        for level, counts in (("token", self.lengths), ("mask", self.n_masks)):
            offsets = [0, *np.cumsum(counts).tolist()]
            cut = [(f.name, self._columns[f.name]) for f in fields if f.level == level]
            if any(len(column) != offsets[-1] for _, column in cut):
                raise ValueError("column lengths disagree with the example counts")
            self._levels.append((offsets, cut))
        self._per_example = []  # (name, Python list): an example's value is an int or JSON
        for f in fields:
            if f.level == "example":
                column = self._columns[f.name]
                as_list = column.tolist() if isinstance(column, np.ndarray) else column
                self._per_example.append((f.name, as_list))

    def __getitem__(self, name: str) -> Any:
        return self._columns[name]

    def example(self, i: int) -> StoredExample:
        out: dict[str, Any] = {}
        for offsets, fields in self._levels:
            start, stop = offsets[i], offsets[i + 1]
            for name, column in fields:
                out[name] = column[start:stop]
        for name, column in self._per_example:
            out[name] = column[i]
        return out  # type: ignore[return-value]

    def __iter__(self) -> Iterator[StoredExample]:
        return (self.example(i) for i in range(self.n))
