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

import zstandard

from .codec import CHUNK_SUFFIX, DecodedChunk
from .errors import ShardError
from .manifest import ShardInfo

__all__ = ["check_shard_bytes", "decode_shard", "fetch_shard", "read_shard"]


def fetch_shard(url: str) -> bytes:
    """Read a shard from a local path or any URL WebDataset's ``gopen`` accepts."""
    from webdataset.gopen import gopen

    try:
        with gopen(url, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise ShardError(url, "missing: no such file") from None
    except Exception as err:  # noqa: BLE001 - gopen's pipes raise plain Exception
        raise ShardError(url, f"cannot be read: {err}") from None


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


def decode_shard(url: str, data: bytes) -> Iterator[DecodedChunk]:
    """Decode the chunks of a shard's bytes, in member order."""
    from webdataset.tariterators import tar_file_iterator

    try:
        members = tar_file_iterator(io.BytesIO(data))
        for member in members:
            name = member["fname"]
            if not name.endswith("." + CHUNK_SUFFIX):
                raise ShardError(url, f"unexpected member {name!r} (expected *.{CHUNK_SUFFIX})")
            try:
                yield DecodedChunk(member["data"])
            except (zstandard.ZstdError, ValueError, KeyError, TypeError, struct.error) as err:
                raise ShardError(url, f"member {name!r} does not decode: {err}") from None
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(url, f"not a readable tar archive: {err}") from None


def read_shard(url: str, info: ShardInfo, verify: bool = True) -> list[DecodedChunk]:
    """Fetch, check and decode a shard; the decoded sample count must match the manifest."""
    data = fetch_shard(url)
    if verify:
        check_shard_bytes(url, data, info)
    chunks = list(decode_shard(url, data))
    count = sum(c.n for c in chunks)
    if count != info.samples:
        raise ShardError(url, f"holds {count} samples, the manifest records {info.samples}")
    return chunks
