"""Reading one shard: fetch its bytes (path or URL), check them, and decode its chunks.

A shard is fetched whole (shards are a few MB) and checked against the manifest's byte count
and sha256 *before* any example is decoded, so a damaged shard never yields a sample.
Every failure becomes a ``ShardError`` that names the shard and the problem.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from collections.abc import Iterator

import numpy as np
import zstandard

from .codec import CHUNK_SUFFIX, DecodedChunk
from .errors import ShardError
from .locations import DEFAULT_STALL_TIMEOUT, read_store_file
from .manifest import ShardInfo
from .schema import fields_of

__all__ = ["check_shard_bytes", "decode_shard", "fetch_shard", "read_shard"]


def fetch_shard(url: str, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> bytes:
    """Read a shard whole from a local path, an http(s) URL or a ``pipe:`` command."""
    return read_store_file(url, ShardError, stall_timeout, missing="missing: no such file")


def check_shard_bytes(url: str, data: bytes, info: ShardInfo) -> None:
    if len(data) != info.bytes:
        what = "truncated" if len(data) < info.bytes else "longer than recorded"
        if not data:
            what = "empty (missing or unreadable)"
        raise ShardError(url, f"{what}: {len(data)} bytes, the manifest records {info.bytes}")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise ShardError(
            url, f"corrupted: checksum {digest} differs from the manifest's {info.sha256}"
        )


def decode_shard(
    url: str,
    data: bytes,
    k: int | None = None,
    vocab_size: int | None = None,
    targets: dict | None = None,
) -> Iterator[DecodedChunk]:
    """Decode the chunks of a shard's bytes, in member order. With ``k`` and ``vocab_size``
    (the manifest's), each chunk must have been written for them, and for the manifest's
    ``targets`` (default: top-k)."""
    from webdataset.tariterators import tar_file_iterator

    try:
        members = tar_file_iterator(io.BytesIO(data))
        for member in members:
            name = member["fname"]
            if not name.endswith("." + CHUNK_SUFFIX):
                raise ShardError(url, f"unexpected member {name!r} (expected *.{CHUNK_SUFFIX})")
            try:
                chunk = DecodedChunk(member["data"])
            except (zstandard.ZstdError, ValueError, KeyError, TypeError, struct.error) as err:
                raise ShardError(url, f"member {name!r} does not decode: {err}") from None
            if k is not None and vocab_size is not None:
                _check_chunk(url, name, chunk, k, vocab_size, targets or {"mode": "topk"})
            yield chunk
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(url, f"not a readable tar archive: {err}") from None


def _check_chunk(
    url: str, name: str, chunk: DecodedChunk, k: int, vocab_size: int, targets: dict
) -> None:
    if chunk.targets != targets["mode"]:
        raise ShardError(
            url,
            f"member {name!r} holds {chunk.targets} targets, the manifest records "
            f"{targets['mode']}",
        )
    if chunk.k != k:
        raise ShardError(url, f"member {name!r} holds k={chunk.k}, the manifest records k={k}")
    if chunk.vocab_size is not None and chunk.vocab_size != vocab_size:
        raise ShardError(
            url,
            f"member {name!r} was written for a vocabulary of {chunk.vocab_size}, the "
            f"manifest records {vocab_size}",
        )
    if chunk.targets == "hybrid" and chunk.samples != targets["samples"]:
        raise ShardError(
            url,
            f"member {name!r} holds samples={chunk.samples}, the manifest records "
            f"samples={targets['samples']}",
        )
    if chunk.targets in ("sampled", "hybrid"):
        counts = "sample_counts" if chunk.targets == "sampled" else "tail_counts"
        drawn = chunk[counts].sum(axis=1)
        wrong = drawn != targets["samples"]
        if chunk.targets == "hybrid":  # a row whose top-k holds all the mass draws nothing
            wrong &= ~((drawn == 0) & np.isneginf(chunk["tail_logmass"]))
        if wrong.any():
            row = int(wrong.nonzero()[0][0])
            raise ShardError(
                url,
                f"member {name!r}: mask row {row} counts {int(drawn[row])} draws, the manifest "
                f"records samples={targets['samples']}",
            )
    for f in fields_of(chunk.targets):
        ids = chunk[f.name]
        if f.storage == "ids" and ids.size and int(ids.max()) >= vocab_size:
            raise ShardError(
                url,
                f"member {name!r}: {f.name} holds id {int(ids.max())}, outside the manifest's "
                f"vocabulary of {vocab_size}",
            )


def read_shard(
    url: str,
    info: ShardInfo,
    verify: bool = True,
    *,
    k: int | None = None,
    vocab_size: int | None = None,
    targets: dict | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> list[DecodedChunk]:
    """Fetch, check and decode a shard; the decoded sample count must match the manifest, and
    with ``k`` and ``vocab_size`` every chunk's own (see ``decode_shard``)."""
    data = fetch_shard(url, stall_timeout)
    if verify:
        check_shard_bytes(url, data, info)
    chunks = list(decode_shard(url, data, k, vocab_size, targets))
    count = sum(c.n for c in chunks)
    if count != info.samples:
        raise ShardError(url, f"holds {count} samples, the manifest records {info.samples}")
    return chunks
