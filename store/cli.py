"""``smash-store``: inspect and verify a teacher store.

    smash-store inspect STORE [--json]   summary, producer config, teacher statistics
    smash-store verify STORE             every shard's checksum, decoding, k and vocabulary
                                         (and keys, where the producer lists example_keys);
                                         exit 1 naming the bad shards, or a store of no
                                         example

STORE is a folder, a manifest.json path, an http(s):// URL or a pipe: command. A read that
receives nothing for --stall-timeout seconds fails, naming the location.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from .codec import DecodedChunk
from .errors import StoreError
from .flags import FlagParser, integer, number, parse_flags
from .locations import DEFAULT_STALL_TIMEOUT
from .manifest import Manifest, ShardInfo, load_manifest, manifest_location
from .shards import read_shard

__all__ = ["build_parser", "main", "teacher_statistics", "verify_store"]


def _read_shards(
    store: str, manifest: Manifest, shards: list[ShardInfo], stall_timeout: float, desc: str
) -> Iterator[tuple[ShardInfo, list[DecodedChunk] | StoreError]]:
    """Each shard's checked chunks (against its checksum and the manifest's k and vocabulary),
    or the error that names what is wrong with it, with a progress bar."""
    _, base = manifest_location(store)
    for info in tqdm(shards, desc=desc, unit="shard", disable=len(shards) < 4):
        try:
            yield (
                info,
                read_shard(
                    f"{base}/{info.name}",
                    info,
                    k=manifest.k,
                    vocab_size=manifest.vocab_size,
                    targets=manifest.targets,
                    stall_timeout=stall_timeout,
                ),
            )
        except StoreError as err:
            yield info, err


def teacher_statistics(
    store: str,
    max_shards: int | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    manifest: Manifest | None = None,
) -> dict[str, Any]:
    """Teacher and length statistics of a store (``manifest``: the store's, when loaded).

    Top-k stores: mean top-k mass and top-1 probability, and the entropy over the top-k
    entries plus the tail mass as one bucket (a lower bound of the teacher's full entropy).
    Sampled stores: distinct ids per mask, the share of the most drawn id, and the teacher's
    exact entropy (stored). Hybrid stores: the top-k figures, distinct tail ids per mask and
    the stored entropy.
    """
    manifest = manifest or load_manifest(store, stall_timeout=stall_timeout)
    shards = manifest.shards[:max_shards]
    per_row: dict[str, list[np.ndarray]] = {}
    lengths, masks = [], []
    for _, chunks in _read_shards(store, manifest, shards, stall_timeout, "reading shards"):
        if isinstance(chunks, StoreError):
            raise chunks
        for chunk in chunks:
            rows = _ROWS[manifest.targets["mode"]](chunk)
            for key, values in rows.items():
                per_row.setdefault(key, []).append(values)
            lengths.append(chunk.lengths)
            masks.append(chunk.n_masks)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)
    lengths, masks = cat(lengths), cat(masks)
    names = _STATISTICS[manifest.targets["mode"]]
    out: dict[str, Any] = {
        "shards_read": len(shards),
        "examples": len(lengths),
        "mask_rows": int(masks.sum()),
        "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
        "max_length": int(lengths.max()) if len(lengths) else 0,
    }
    for key in (*names, "entropy_nats"):
        values = cat(per_row.get(key, []))
        out[f"mean_{key}"] = float(values.mean()) if len(values) else 0.0
        if key == "topk_mass":
            out["min_topk_mass"] = float(values.min()) if len(values) else 0.0
    return out


def _topk_rows(chunk: DecodedChunk) -> dict[str, np.ndarray]:
    lp = chunk["topk_logprobs"].astype(np.float64)
    p = np.exp(lp)
    tail_mass = np.exp(chunk["tail_logmass"].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        tail_term = np.where(tail_mass > 0, -tail_mass * np.log(tail_mass), 0.0)
    return {
        "topk_mass": p.sum(1),
        "entropy_nats": -(p * np.where(p > 0, lp, 0.0)).sum(1) + tail_term,
        "top1_prob": p.max(1) if p.shape[1] else np.zeros(len(p)),  # any ChunkLayout order
    }


def _sampled_rows(chunk: DecodedChunk) -> dict[str, np.ndarray]:
    counts = chunk["sample_counts"]
    return {
        "distinct_ids": (counts > 0).sum(1).astype(np.float64),
        "top1_share": counts.max(1) / np.maximum(counts.sum(1), 1),
        "entropy_nats": chunk["teacher_entropy"].astype(np.float64),
    }


def _hybrid_rows(chunk: DecodedChunk) -> dict[str, np.ndarray]:
    return {
        **_topk_rows(chunk),
        "tail_distinct_ids": (chunk["tail_counts"] > 0).sum(1).astype(np.float64),
        "entropy_nats": chunk["teacher_entropy"].astype(np.float64),  # exact, stored
    }


_ROWS = {"topk": _topk_rows, "sampled": _sampled_rows, "hybrid": _hybrid_rows}
_STATISTICS = {
    "topk": ("topk_mass", "top1_prob"),
    "sampled": ("distinct_ids", "top1_share"),
    "hybrid": ("topk_mass", "top1_prob", "tail_distinct_ids"),
}


def verify_store(
    store: str, stall_timeout: float = DEFAULT_STALL_TIMEOUT, manifest: Manifest | None = None
) -> list[tuple[str, str]]:
    """Check every shard (bytes, checksum, decoding, each chunk's k and vocabulary against the
    manifest's); returns (shard name, problem) for each bad one. ``manifest``: the store's,
    when already loaded."""
    manifest = manifest or load_manifest(store, stall_timeout=stall_timeout)
    keys = manifest.producer.get("example_keys")
    seen: dict[tuple, str] = {}
    bad = []
    for info, result in _read_shards(store, manifest, manifest.shards, stall_timeout, "verifying"):
        if isinstance(result, StoreError):
            bad.append((info.name, getattr(result, "problem", str(result))))
        elif keys is not None and (problem := _check_keys(result, keys, seen, info.name)):
            bad.append((info.name, problem))
    return bad


def _check_keys(
    chunks: list[DecodedChunk], keys: Any, seen: dict[tuple, str], shard: str
) -> str | None:
    """A store whose producer lists ``example_keys`` (a k-shot store: task, K, seed, split,
    row) keys every example by them in its ``meta``, each key once in the whole store."""
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return f"producer.example_keys is {json.dumps(keys)[:60]}; expected a list of names"
    index = 0
    for chunk in chunks:
        for meta in chunk["meta"]:
            where = f"{shard}/{index}"
            if not isinstance(meta, dict) or any(k not in meta for k in keys):
                return f"example {index}: its meta {json.dumps(meta)[:80]} lacks a key of {keys}"
            key = tuple(json.dumps(meta[k]) for k in keys)
            if key in seen:
                shown = json.dumps({k: meta[k] for k in keys})
                return f"example {index} repeats the key {shown} of {seen[key]}"
            seen[key] = where
            index += 1
    return None


def _inspect(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.store, stall_timeout=args.stall_timeout)
    stats = teacher_statistics(args.store, args.max_shards, args.stall_timeout, manifest)
    if args.json:
        print(
            json.dumps(
                {
                    "manifest": manifest.to_json() | {"shards": len(manifest.shards)},
                    "statistics": stats,
                },
                indent=1,
            )
        )
        return 0
    print(f"store       {args.store}")
    print(f"format      v{manifest.format_version}, layout {manifest.layout}")
    print(
        f"tokenizer   {manifest.tokenizer.get('name')} ({manifest.tokenizer['fingerprint']}, "
        f"vocab {manifest.vocab_size})"
    )
    print(f"k           {manifest.k}")
    print(f"targets     {json.dumps(manifest.targets)}")
    print(
        f"shards      {len(manifest.shards)}, {manifest.num_samples:,} examples, "
        f"{manifest.num_bytes / 1e6:,.2f} MB "
        f"({manifest.num_bytes / max(manifest.num_samples, 1):,.1f} bytes/example)"
    )
    print("producer")
    for key, value in manifest.producer.items():
        print(f"  {key:<24}{json.dumps(value)}")
    print(f"statistics  (from {stats['shards_read']} shards)")
    for key, value in stats.items():
        if key != "shards_read":
            print(
                f"  {key:<24}{value:,.4f}" if isinstance(value, float) else f"  {key:<24}{value:,}"
            )
    return 0


def _verify(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.store, stall_timeout=args.stall_timeout)
    bad = verify_store(args.store, args.stall_timeout, manifest)
    for name, problem in bad:
        print(f"BAD  {name}: {problem}", file=sys.stderr)
    empty = manifest.num_samples == 0  # sound shards, but nothing to train on
    if empty:
        shards = f"{len(manifest.shards)} shard{'s' * (len(manifest.shards) > 1)}"
        print(
            f"BAD  {args.store}: the store holds no example ({shards}, 0 samples)", file=sys.stderr
        )
    good = len(manifest.shards) - len(bad)
    print(
        f"{good}/{len(manifest.shards)} shards ok"
        + (f", {len(bad)} bad: {', '.join(n for n, _ in bad)}" if bad else "")
        + ("; the store holds no example" if empty else "")
    )
    return 1 if bad or empty else 0


def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory, manifest.json path, URL or pipe: command")
    p.add_argument(
        "--stall-timeout",
        type=number(above=0),
        default=DEFAULT_STALL_TIMEOUT,
        metavar="SECONDS",
        help="give up on a read that receives nothing for this long (default: %(default)g)",
    )


def build_parser() -> FlagParser:
    parser = FlagParser(
        prog="smash-store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="summary and teacher statistics")
    _store_arguments(p)
    p.add_argument(
        "--max-shards",
        type=integer(1),
        default=None,
        help="compute statistics from the first N shards only",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_inspect)
    p = sub.add_parser(
        "verify", help="check every shard's checksum, that it decodes, and its k and vocabulary"
    )
    _store_arguments(p)
    p.set_defaults(run=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_flags(build_parser(), argv)
    if args is None:
        return 2
    try:
        return args.run(args)
    except StoreError as err:
        print(f"smash-store: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
