"""``manifest.json``: what a store holds, who produced it, and every shard with its checksum.

Each writing process keeps its own part file (``manifest.part-<name>.json``), rewritten
atomically after every closed shard, so processes never clash and a killed run knows which
shards are finished. ``finalize_store`` merges the parts into one ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .locations import DEFAULT_STALL_TIMEOUT, read_store_file

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SAMPLED_ESTIMATOR",
    "TOPK_TARGETS",
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
# 1: the first format. 2: the tokenizer fingerprint also covers how text becomes ids
# (``fingerprint.py``, scheme 2) and each chunk records the vocabulary size it was written for.
# 3: a store's teacher targets are top-k or sampled (the manifest's ``targets``; a sampled
# chunk says so in its header and holds other columns, ``schema.py``), and chunks may hold
# optional columns (``schema.Field.optional``: a masked-LM store's original tokens,
# ``mlm_labels``). Top-k chunks without them are unchanged, but a version-2 reader must refuse
# such stores rather than misread them or drop a column without a word.
# 4: a store's targets may be hybrid (the top-k exact, N draws from outside it: ``targets``
# has ``samples``, a chunk's header too) and ``teacher_entropy`` is float16 (format 3: float32;
# a chunk's column says which). Top-k chunks are unchanged.
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
TOPK_TARGETS: dict[str, Any] = {"mode": "topk"}
# The estimator of Eq. 1 that sampled and hybrid targets are stored for (sampled:
# -sum (c_i/N) log s_i; hybrid: the head exact plus the tail mass times that over the tail's
# draws; both unbiased, ``precompute/shared/sampled_targets.py``): another name is refused.
SAMPLED_ESTIMATOR = "unbiased"
MANIFEST_NAME = "manifest.json"
_PART_PREFIX = "manifest.part-"
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ShardInfo:
    name: str  # a plain file name beside the manifest
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
    # {"mode": "topk"}, or {"mode": "sampled", "samples": N, "proposal_temperature": tau,
    # "estimator": "unbiased", "seed": s} (see ``precompute/shared/sampled_targets.py``)
    targets: dict[str, Any] = field(default_factory=lambda: dict(TOPK_TARGETS))
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def sampled(self) -> bool:
        return self.targets["mode"] == "sampled"

    @property
    def samples(self) -> int | None:
        """A hybrid store's draws per mask from outside the top-k (N); None for other kinds."""
        return self.targets["samples"] if self.targets["mode"] == "hybrid" else None

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
    def from_json(cls, data: Any, source: str, *, unique_names: bool = True) -> Manifest:
        """A validated manifest: every field of the right type and range, named when not.
        ``unique_names``: refuse a shard listed twice (which would be read twice an epoch)."""
        fields = _Fields(data, source)
        if data.get("format") != FORMAT_NAME:
            raise ManifestError(
                source,
                f"field 'format' is {data.get('format')!r}, expected "
                f"{FORMAT_NAME!r}: not a SMASH teacher store",
            )
        version = data.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ManifestError(
                source,
                f"field 'format_version' is {version!r}; this version of smash reads format "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}",
            )
        tokenizer = fields.get("tokenizer", dict)
        fields.get("tokenizer.fingerprint", str, tokenizer)
        vocab = fields.count("tokenizer.vocab_size", tokenizer, minimum=1)
        k = fields.count("k", data)
        if k > vocab:
            raise ManifestError(source, f"field 'k' is {k}, more than tokenizer.vocab_size {vocab}")
        shards = [_shard(fields, i, raw) for i, raw in enumerate(fields.get("shards", list))]
        if not shards:
            raise ManifestError(source, "field 'shards' is empty: the store holds no shard")
        if "targets" in data and version < 3:
            raise ManifestError(
                source, f"field 'targets' appears in format version {version}; it is new in 3"
            )
        targets = _targets(fields, k, vocab) if "targets" in data else dict(TOPK_TARGETS)
        if targets["mode"] == "hybrid" and version < 4:
            raise ManifestError(
                source,
                f"field 'targets.mode' is 'hybrid' in format version {version}; it is new in 4",
            )
        seen: set[str] = set()
        for i, shard in enumerate(shards):
            if unique_names and shard.name in seen:
                raise ManifestError(source, f"shards[{i}]: {shard.name!r} is listed more than once")
            seen.add(shard.name)
        return cls(
            producer=fields.get("producer", dict),
            tokenizer=tokenizer,
            k=k,
            layout=fields.get("layout", dict),
            shards=shards,
            targets=targets,
            format_version=version,
        )


class _Fields:
    """Reads fields of a manifest's JSON object; a missing or mistyped one is a ManifestError
    that names it."""

    def __init__(self, data: Any, source: str):
        if not isinstance(data, dict):
            raise ManifestError(source, "not a JSON object")
        self.data, self.source = data, source

    def get(self, name: str, kind: type, parent: dict | None = None) -> Any:
        where = self.data if parent is None else parent
        key = name.rsplit(".", 1)[-1]
        if key not in where:
            raise ManifestError(self.source, f"missing field {name!r}")
        value = where[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ManifestError(
                self.source,
                f"field {name!r} is {json.dumps(value)[:60]} ({_JSON_NAMES[type(value)]}); "
                f"expected {_JSON_NAMES[kind]}",
            )
        return value

    def count(self, name: str, parent: dict, minimum: int = 0) -> int:
        value = self.get(name, int, parent)
        if value < minimum:
            raise ManifestError(self.source, f"field {name!r} is {value}; expected >= {minimum}")
        return value


_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a whole number",
    float: "a number with a fraction",
    bool: "true/false",
    type(None): "null",
}


def _targets(fields: _Fields, k: int, vocab: int) -> dict[str, Any]:
    """The validated ``targets`` section (absent in versions 1 and 2: top-k)."""
    targets = fields.get("targets", dict)
    mode = fields.get("targets.mode", str, targets)
    if mode == "topk":
        expected = {"mode"}
    elif mode == "hybrid":
        expected = {"mode", "samples", "estimator", "seed"}
        samples = fields.count("targets.samples", targets, minimum=1)
        if k + samples > vocab:
            raise ManifestError(
                fields.source,
                f"field 'targets.samples' is {samples} and 'k' is {k}: more than "
                f"tokenizer.vocab_size {vocab} ids per mask",
            )
        _check_estimator(fields, targets)
        fields.count("targets.seed", targets)
    elif mode == "sampled":
        expected = {"mode", "samples", "proposal_temperature", "estimator", "seed"}
        samples = fields.count("targets.samples", targets, minimum=1)
        if samples != k:
            raise ManifestError(
                fields.source,
                f"field 'targets.samples' is {samples} but 'k' is {k}: a sampled store keeps "
                f"one entry per draw at most (k = samples)",
            )
        tau = fields.get("targets.proposal_temperature", float, targets)
        if not (math.isfinite(tau) and tau > 0):
            raise ManifestError(
                fields.source,
                f"field 'targets.proposal_temperature' is {json.dumps(tau)}; "
                f"expected a finite number > 0",
            )
        _check_estimator(fields, targets)
        fields.count("targets.seed", targets)
    else:
        raise ManifestError(
            fields.source,
            f"field 'targets.mode' is {mode!r}; expected 'topk', 'sampled' or 'hybrid'",
        )
    if set(targets) != expected:
        raise ManifestError(
            fields.source,
            f"field 'targets' has keys {sorted(targets)}; {mode} targets have {sorted(expected)}",
        )
    return targets


def _check_estimator(fields: _Fields, targets: dict[str, Any]) -> None:
    estimator = fields.get("targets.estimator", str, targets)
    if estimator != SAMPLED_ESTIMATOR:
        raise ManifestError(
            fields.source,
            f"field 'targets.estimator' is {estimator!r}; this version of smash knows "
            f"{SAMPLED_ESTIMATOR!r} only",
        )


def _shard(fields: _Fields, i: int, raw: Any) -> ShardInfo:
    where = f"shards[{i}]"
    if not isinstance(raw, dict):
        raise ManifestError(fields.source, f"field {where!r} is not an object")
    name = fields.get(f"{where}.name", str, raw)
    if not is_plain_file_name(name):
        raise ManifestError(
            fields.source,
            f"field '{where}.name' is {name!r}: shard names must be plain file names inside "
            f"the store (no '/', '..' or absolute paths)",
        )
    sha256 = fields.get(f"{where}.sha256", str, raw)
    if not _SHA256.match(sha256):
        raise ManifestError(
            fields.source,
            f"field '{where}.sha256' is {sha256!r}; expected 'sha256:' + 64 hex digits",
        )
    unknown = sorted(set(raw) - {"name", "samples", "bytes", "sha256"})
    if unknown:
        raise ManifestError(fields.source, f"field {where!r} has unknown keys {unknown}")
    return ShardInfo(
        name, fields.count(f"{where}.samples", raw), fields.count(f"{where}.bytes", raw), sha256
    )


def is_plain_file_name(name: str) -> bool:
    """A name that stays inside its folder: no separators, not ``.``/``..``, not empty."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(location: str, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> Any:
    raw = read_store_file(location, ManifestError, stall_timeout)
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


def load_manifest(
    store: str | os.PathLike,
    *,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    unique_names: bool = True,
) -> Manifest:
    """Read and validate a store's manifest from a directory, a ``manifest.json`` path, an
    http(s) URL or a ``pipe:`` command (see ``locations.py``). ``unique_names=False`` reads a
    part manifest, which may list a rewritten shard twice."""
    location, _ = manifest_location(store)
    data = _read_json(location, stall_timeout)
    return Manifest.from_json(data, location, unique_names=unique_names)


def part_path(root: Path, part: str) -> Path:
    return root / f"{_PART_PREFIX}{part}.json"


def _read_part(path: Path) -> Manifest:
    # Parts written before a rewrite replaced its entry may list a shard more than once;
    # finalize keeps one entry per name (the final manifest never lists one twice).
    return load_manifest(path, unique_names=False)


def read_part(root: Path, part: str) -> Manifest | None:
    path = part_path(root, part)
    if not path.exists():
        return None
    return _read_part(path)


def read_parts(root: str | os.PathLike) -> list[tuple[Path, Manifest]]:
    """Every part manifest under ``root``, by file name."""
    return [(path, _read_part(path)) for path in sorted(Path(root).glob(f"{_PART_PREFIX}*.json"))]


def finalize_store(root: str | os.PathLike) -> Manifest:
    """Merge every part manifest under ``root`` into ``manifest.json``; shards sorted by name.

    Parts must agree on format version, producer, tokenizer, k and layout; otherwise nothing is
    written and the
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
    merged = Manifest(
        first.producer, first.tokenizer, first.k, first.layout, [],
        targets=first.targets, format_version=first.format_version,
    )  # fmt: skip
    listed: dict[str, list[tuple[str, ShardInfo]]] = {}
    for path, part in parts:
        for name in ("format_version", "producer", "tokenizer", "k", "layout", "targets"):
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
