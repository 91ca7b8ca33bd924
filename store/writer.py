"""Writing teacher outputs into WebDataset tar shards.

``ShardFile`` writes one shard: chunks of examples go into a tar under a temporary name;
``close`` makes it durable, renames it into place and returns its ``ShardInfo`` (samples,
bytes, sha256). ``StoreWriter`` writes shards under given indices and records every closed
shard in its process's part manifest, so several processes can write one store without
clashing.
Tar headers carry a fixed mtime and owner, so the same examples give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import webdataset as wds

from .codec import CHUNK_SUFFIX, ChunkLayout, encode_chunk
from .errors import ManifestError
from .manifest import TOPK_TARGETS, Manifest, ShardInfo, part_path, read_part, write_json_atomic

__all__ = ["ShardFile", "StoreWriter", "shard_name"]

DEFAULT_CHUNK_SIZE = 1024
DEFAULT_LAYOUT = ChunkLayout()


def shard_name(index: int, prefix: str = "shard") -> str:
    return f"{prefix}-{index:06d}.tar"


class ShardFile:
    """One shard being written: ``write`` examples, then ``close()`` (or ``abort()``).
    ``targets``: the kind of teacher targets the examples carry (``schema.TARGET_KINDS``);
    ``samples``: a hybrid store's draws per mask."""

    def __init__(
        self,
        path: str | Path,
        *,
        k: int,
        vocab_size: int,
        layout: ChunkLayout = DEFAULT_LAYOUT,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        targets: str = "topk",
        samples: int | None = None,
    ):
        self.path = Path(path)
        self.targets, self.draws = targets, samples
        self.k, self.vocab_size, self.layout, self.chunk_size = k, vocab_size, layout, chunk_size
        self._tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - open until close()/abort()
        try:
            self._tar = wds.TarWriter(self._file, mtime=0, user="smash", group="smash")
        except BaseException:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._pending: list[Mapping[str, Any]] = []
        self._chunks = 0
        self.samples = 0
        self.compressed_bytes = 0

    def write(self, example: Mapping[str, Any]) -> None:
        self._pending.append(example)
        self.samples += 1
        if len(self._pending) >= self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        blob = encode_chunk(
            self._pending,
            k=self.k,
            vocab_size=self.vocab_size,
            layout=self.layout,
            targets=self.targets,
            samples=self.draws,
        )
        self._tar.write({"__key__": f"{self._chunks:06d}", CHUNK_SUFFIX: blob})
        self.compressed_bytes += len(blob)
        self._chunks += 1
        self._pending = []

    def close(self) -> ShardInfo:
        """Finish the shard, make it durable (fsync), then publish it under its name."""
        self._flush()
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        data = self._tmp.read_bytes()
        info = ShardInfo(
            self.path.name, self.samples, len(data), "sha256:" + hashlib.sha256(data).hexdigest()
        )
        os.replace(self._tmp, self.path)
        return info

    def abort(self) -> None:
        """Drop the unfinished shard; nothing under its final name is touched."""
        try:
            self._tar.close()
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)


class StoreWriter:
    """Writes numbered shards of a store directory and keeps this process's part manifest.

    ``part`` names the part manifest (one per process, e.g. its rank). Finished shards already
    recorded in it (by an earlier, interrupted run) are kept; that part must have been written
    with the same producer, tokenizer, k, layout and targets (the manifest's ``targets``
    section: ``{"mode": "topk"}``, a sampled store's mode, samples, temperature, estimator
    and seed, or a hybrid store's mode, samples, estimator and seed). ``write_shard`` writes one whole shard
    under a given index: the teacher pass assigns fixed example ranges to shard indices, so
    processes never clash and a rerun knows which shards are done.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        producer: dict[str, Any],
        tokenizer: dict[str, Any],
        k: int,
        layout: ChunkLayout = DEFAULT_LAYOUT,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        part: str = "0",
        targets: dict[str, Any] | None = None,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.part, self.layout, self.chunk_size = part, layout, chunk_size
        fresh = Manifest(
            producer=producer,
            tokenizer=tokenizer,
            k=k,
            layout=layout.to_json(),
            targets=dict(targets or TOPK_TARGETS),
        )
        self.manifest = read_part(self.root, part) or fresh
        for name in ("format_version", "producer", "tokenizer", "k", "layout", "targets"):
            if getattr(self.manifest, name) != getattr(fresh, name):
                raise ManifestError(
                    str(part_path(self.root, part)),
                    f"field {name!r} differs from this writer's: the part "
                    f"belongs to a store of another configuration",
                )

    def write_shard(self, index: int, examples: Iterable[Mapping[str, Any]]) -> ShardInfo:
        """Write ``examples`` as shard number ``index`` and record it; on error nothing is
        left under the shard's name and the part manifest is unchanged."""
        shard = ShardFile(
            self.root / shard_name(index),
            k=self.manifest.k,
            vocab_size=self.manifest.vocab_size,
            layout=self.layout,
            chunk_size=self.chunk_size,
            targets=self.manifest.targets["mode"],
            samples=self.manifest.samples,
        )
        try:
            for example in examples:
                shard.write(example)
            info = shard.close()
        except BaseException:
            shard.abort()
            raise
        self.record(info)
        return info

    def record(self, info: ShardInfo) -> None:
        """Add a closed shard to the part manifest (written atomically).

        A shard written again under a name this part already lists (a resumed run redoing a
        shard whose file was missing) replaces that entry, so each name is listed once. Other
        processes' parts are never touched: if one of them lists the name too,
        ``finalize_store`` keeps the entry that matches the file, i.e. the newest write.
        """
        self.manifest.shards = [s for s in self.manifest.shards if s.name != info.name]
        self.manifest.shards.append(info)
        write_json_atomic(part_path(self.root, self.part), self.manifest.to_json())
