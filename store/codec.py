"""The layout inside a shard: many examples per tar member, stored as compressed columns.

One tar member (``<key>.cols.zst``) holds a *chunk* of up to ``chunk_size`` examples as a
single zstd frame (with zstd's content checksum) over::

    uint32 header_length | header (JSON) | column bytes, one after another

The JSON header holds the chunk's example count ``n``, its ``k``, the vocabulary size it was
written for (from format version 2 on) and each column's name, dtype, shape and the reversible
transforms applied to it, so a chunk decodes by itself. Columns:

    length          (n,)       uint8/uint16   tokens per example
    input_ids       (sum L,)   uint16/uint32  concatenated token ids
    n_masks         (n,)       uint8          mask positions per example
    mask_positions  (sum M,)   uint8/uint16
    topk_ids        (R, k)     uint16/uint32  R = sum M rows, one per mask position
    topk_logprobs   (R, k)     float16        teacher log-probabilities at T=1
    tail_logmass    (R,)       float32        log(1 - sum of the row's top-k probabilities)
    label           (n,)       int8           -1 where the example has none
    meta            JSON list  only when some example has metadata

Transforms (all exactly invertible, so read-back values equal written values bit for bit):

- rows are put in canonical order: descending log-probability, ties by ascending id. The
  float16 bit patterns of negative numbers then *rise* along a row, so ``delta`` (differences
  of the uint16 patterns, modulo 2**16) turns them into small numbers;
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

__all__ = ["ChunkLayout", "DecodedChunk", "canonical_order", "decode_chunk", "encode_chunk"]

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
    """Per-row permutation (R, k) that sorts by descending value (ties: ascending id) or by id."""
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


def _field(value: Any, dtype, width: int | None) -> np.ndarray:
    """One example's field as an array; an empty sequence (e.g. ``[]``, which numpy makes
    float64) becomes an empty array of the field's own dtype and shape."""
    arr = np.asarray(value)
    if arr.ndim == 1 and arr.size == 0:
        return np.zeros(0 if width is None else (0, width), dtype)
    return arr


def _stack(examples: Sequence[Mapping[str, Any]], key: str, dtype, width: int | None = None):
    """Concatenate one field of all examples; 2-D fields must be (rows, width) each."""
    parts = [_field(ex[key], dtype, width) for ex in examples]
    if width is None:
        return np.concatenate([p.reshape(-1) for p in parts]) if parts else np.zeros(0, dtype)
    for i, p in enumerate(parts):
        if p.ndim != 2 or p.shape[1] != width:
            raise ValueError(
                f"example {i}: {key} must have one row of k={width} per mask "
                f"position, got shape {p.shape}"
            )
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, width), dtype)


def encode_chunk(
    examples: Sequence[Mapping[str, Any]],
    *,
    k: int,
    vocab_size: int,
    layout: ChunkLayout = ChunkLayout(),
) -> bytes:
    """Encode examples (dicts with the keys of ``DecodedChunk.example``) into one chunk.

    ``topk_logprobs`` must be float16 and ``tail_logmass`` float32: the store keeps exactly
    those bits. Rows are reordered into the layout's canonical order.
    """
    n = len(examples)
    lengths = np.array([len(ex["input_ids"]) for ex in examples], dtype=np.int64)
    n_masks = np.array([len(ex["mask_positions"]) for ex in examples], dtype=np.int64)
    input_ids = _stack(examples, "input_ids", np.int64).astype(np.int64)
    mask_pos = _stack(examples, "mask_positions", np.int64).astype(np.int64)
    rows = int(n_masks.sum())
    ids = _stack(examples, "topk_ids", np.int64, width=k).astype(np.int64)
    lps = _stack(examples, "topk_logprobs", np.float16, width=k)
    tail = _stack(examples, "tail_logmass", np.float32)
    if lps.dtype != np.float16:
        raise TypeError(f"topk_logprobs must be float16 (the stored precision), got {lps.dtype}")
    if tail.dtype != np.float32:
        raise TypeError(f"tail_logmass must be float32, got {tail.dtype}")
    if ids.shape != (rows, k) or lps.shape != (rows, k) or tail.shape != (rows,):
        raise ValueError(
            f"top-k arrays must have one row of k={k} per mask position "
            f"({rows} rows); got ids {ids.shape}, logprobs {lps.shape}, "
            f"tail {tail.shape}"
        )
    for name, arr, bound in (("input_ids", input_ids, vocab_size), ("topk_ids", ids, vocab_size)):
        if arr.size and (arr.min() < 0 or arr.max() >= bound):
            raise ValueError(f"{name} out of range [0, {bound}): min {arr.min()}, max {arr.max()}")
    offsets = np.repeat(np.arange(n), n_masks)
    if mask_pos.size and ((mask_pos < 0).any() or (mask_pos >= lengths[offsets]).any()):
        raise ValueError("mask_positions must lie inside their example's input_ids")
    labels = np.array(
        [ex.get("label", -1) if ex.get("label") is not None else -1 for ex in examples],
        dtype=np.int64,
    )
    if labels.size and (labels.min() < -1 or labels.max() > 127):
        raise ValueError(f"labels must be in [-1, 127], got {labels.min()}..{labels.max()}")

    if k:
        perm = canonical_order(ids, lps, layout.order)
        ids = np.take_along_axis(ids, perm, axis=1)
        lps = np.take_along_axis(lps, perm, axis=1)
    id_dtype = _uint(vocab_size - 1)
    columns = [
        ("length", lengths.astype(_uint(int(lengths.max(initial=0))))),
        ("input_ids", input_ids.astype(id_dtype)),
        ("n_masks", n_masks.astype(_uint(int(n_masks.max(initial=0))))),
        ("mask_positions", mask_pos.astype(_uint(int(mask_pos.max(initial=0))))),
        ("topk_ids", ids.astype(id_dtype)),
        ("topk_logprobs", lps.view(np.uint16)),
        ("tail_logmass", tail.view(np.uint32)),
        ("label", labels.astype(np.int8).view(np.uint8)),
    ]
    header: dict[str, Any] = {
        "n": n,
        "k": k,
        "vocab_size": vocab_size,
        "layout": layout.to_json(),
        "columns": [],
    }
    body = []
    for name, arr in columns:
        transforms = []
        if name == "topk_logprobs" and layout.delta and k:
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
    metas = [ex.get("meta") for ex in examples]
    if any(m is not None for m in metas):
        data = json.dumps(metas, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        header["columns"].append(
            {"name": "meta", "dtype": "json", "shape": [len(data)], "transforms": []}
        )
        body.append(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    payload = b"".join([_HEADER.pack(len(head)), head, *body])
    return zstandard.ZstdCompressor(level=layout.level, write_checksum=True).compress(payload)


class DecodedChunk:
    """Columns of one chunk; ``example(i)`` and iteration give per-example dicts of views."""

    def __init__(self, blob: bytes):
        # A decompressor per chunk: they are cheap, and one shared object is not thread-safe.
        payload = memoryview(zstandard.ZstdDecompressor().decompress(blob))
        (head_len,) = _HEADER.unpack_from(payload, 0)
        header = json.loads(bytes(payload[4 : 4 + head_len]))
        self.n: int = header["n"]
        self.k: int = header["k"]
        self.vocab_size: int | None = header.get("vocab_size")  # None: format version 1
        cols: dict[str, Any] = {}
        pos = 4 + head_len
        for col in header["columns"]:
            if col["dtype"] == "json":
                cols["meta"] = json.loads(bytes(payload[pos : pos + col["shape"][0]]))
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
        self.input_ids = cols["input_ids"].astype(np.int64)
        self.n_masks = cols["n_masks"].astype(np.int64)
        self.mask_positions = cols["mask_positions"].astype(np.int64)
        self.topk_ids = cols["topk_ids"].astype(np.int64)
        self.topk_logprobs = cols["topk_logprobs"].view(np.float16)
        self.tail_logmass = cols["tail_logmass"].view(np.float32)
        self.labels = cols["label"].view(np.int8).astype(np.int64)
        self.meta: list | None = cols.get("meta")
        self.token_offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.row_offsets = np.concatenate([[0], np.cumsum(self.n_masks)])
        if (
            self.token_offsets[-1] != len(self.input_ids)
            or self.row_offsets[-1] != len(self.tail_logmass)
            or len(self.lengths) != self.n
        ):
            raise ValueError("column lengths disagree with the example counts")

    def example(self, i: int) -> dict[str, Any]:
        t0, t1 = self.token_offsets[i], self.token_offsets[i + 1]
        r0, r1 = self.row_offsets[i], self.row_offsets[i + 1]
        return {
            "input_ids": self.input_ids[t0:t1],
            "mask_positions": self.mask_positions[r0:r1],
            "topk_ids": self.topk_ids[r0:r1],
            "topk_logprobs": self.topk_logprobs[r0:r1],
            "tail_logmass": self.tail_logmass[r0:r1],
            "label": int(self.labels[i]),
            "meta": self.meta[i] if self.meta is not None else None,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.example(i) for i in range(self.n))


def decode_chunk(blob: bytes) -> DecodedChunk:
    return DecodedChunk(blob)
