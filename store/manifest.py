"""``manifest.json``: what a store holds, who produced it, and every shard with its checksum.

Each writing process keeps its own part file (``manifest.part-<name>.json``), rewritten
atomically after every closed shard, so processes never clash and a killed run knows which
shards are finished. ``finalize_store`` merges the parts into one ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "ShardInfo",
    "finalize_store",
    "load_manifest",
    "part_path",
    "read_part",
    "read_parts",
    "write_json_atomic",
]

FORMAT_NAME = "smash-teacher-store"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_PART_PREFIX = "manifest.part-"


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name relative to the store root
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """A store's description. ``producer`` is free-form but compared exactly across parts."""

    producer: dict[str, Any]
    tokenizer: dict[str, Any]  # {"fingerprint": ..., "name": ..., "vocab_size": ...}
    k: int
    layout: dict[str, Any]
    shards: list[ShardInfo] = field(default_factory=list)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["num_samples"], out["num_bytes"] = self.num_samples, self.num_bytes
        return {"format": out.pop("format"), "format_version": out.pop("format_version"), **out}

    @classmethod
    def from_json(cls, data: Any, source: str) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(source, "not a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise ManifestError(
                source,
                f"field 'format' is {data.get('format')!r}, expected "
                f"{FORMAT_NAME!r}: not a SMASH teacher store",
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                source,
                f"field 'format_version' is {version!r}; this version "
                f"of smash reads format version {FORMAT_VERSION} only",
            )
        try:
            shards = [ShardInfo(**s) for s in data["shards"]]
            return cls(
                producer=data["producer"],
                tokenizer=data["tokenizer"],
                k=int(data["k"]),
                layout=data["layout"],
                shards=shards,
            )
        except KeyError as err:
            raise ManifestError(source, f"missing field {err.args[0]!r}") from None
        except TypeError as err:
            raise ManifestError(source, f"malformed field 'shards': {err}") from None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(location: str) -> Any:
    from webdataset.gopen import gopen

    try:
        with gopen(location, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise ManifestError(location, "no such file") from None
    except OSError as err:
        raise ManifestError(location, f"cannot be read: {err}") from None
    if not raw:
        raise ManifestError(location, "empty (unreadable URL or empty file)")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(location, f"not valid JSON: {err}") from None


def manifest_location(store: str | os.PathLike) -> tuple[str, str]:
    """(manifest location, base for shard names) of a store directory, manifest path or URL."""
    s = str(store)
    if s.endswith(".json"):
        return s, s.rsplit("/", 1)[0] if "/" in s else "."
    return s.rstrip("/") + "/" + MANIFEST_NAME, s.rstrip("/")


def load_manifest(store: str | os.PathLike) -> Manifest:
    """Read a store's manifest from a directory, a ``manifest.json`` path or an http(s) URL."""
    location, _ = manifest_location(store)
    return Manifest.from_json(_read_json(location), location)


def part_path(root: Path, part: str) -> Path:
    return root / f"{_PART_PREFIX}{part}.json"


def read_part(root: Path, part: str) -> Manifest | None:
    path = part_path(root, part)
    if not path.exists():
        return None
    return Manifest.from_json(_read_json(str(path)), str(path))


def read_parts(root: str | os.PathLike) -> list[tuple[Path, Manifest]]:
    """Every part manifest under ``root``, by file name."""
    return [
        (path, Manifest.from_json(_read_json(str(path)), str(path)))
        for path in sorted(Path(root).glob(f"{_PART_PREFIX}*.json"))
    ]


def finalize_store(root: str | os.PathLike) -> Manifest:
    """Merge every part manifest under ``root`` into ``manifest.json``; shards sorted by name.

    Parts must agree on producer, tokenizer, k and layout; otherwise nothing is written and the
    error names the disagreeing part. A shard listed more than once (a resumed run rewrote a
    missing shard, perhaps from another process after the number of processes changed) gets
    one entry: the records if they are equal, else the one that matches the shard's file, the
    newest write since shards are replaced atomically; if none matches, nothing is written.
    """
    root = Path(root)
    parts = read_parts(root)
    if not parts:
        raise ManifestError(str(root), "no part manifests to finalize (no shard was written)")
    first = parts[0][1]
    merged = Manifest(first.producer, first.tokenizer, first.k, first.layout, [])
    listed: dict[str, list[tuple[str, ShardInfo]]] = {}
    for path, part in parts:
        for name in ("producer", "tokenizer", "k", "layout"):
            if getattr(part, name) != getattr(merged, name):
                raise ManifestError(
                    str(path),
                    f"field {name!r} differs from {parts[0][0].name}: "
                    f"parts of one store must share one configuration",
                )
        for shard in part.shards:
            listed.setdefault(shard.name, []).append((path.name, shard))
    merged.shards = sorted(
        (_newest_record(root / name, records) for name, records in listed.items()),
        key=lambda s: s.name,
    )
    write_json_atomic(root / MANIFEST_NAME, merged.to_json())
    return merged


def _newest_record(path: Path, records: list[tuple[str, ShardInfo]]) -> ShardInfo:
    """The one record of a shard listed (part file name, record) one or more times."""
    if len({info for _, info in records}) == 1:
        return records[0][1]
    where = ", ".join(sorted({part for part, _ in records}))
    if not path.exists():
        raise ManifestError(
            str(path), f"listed with different contents in {where}, and the file is missing"
        )
    data = path.read_bytes()  # one shard, as the writer and the reader hold it
    size, sha256 = len(data), "sha256:" + hashlib.sha256(data).hexdigest()
    for _, info in records:
        if (info.bytes, info.sha256) == (size, sha256):
            return info
    raise ManifestError(
        str(path),
        f"listed with different contents in {where}, and the file "
        f"({size} bytes, {sha256}) matches none of them",
    )
