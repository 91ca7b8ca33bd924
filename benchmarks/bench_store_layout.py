"""Store layout benchmark: this store's columnar chunks against two common alternatives.

    python benchmarks/bench_store_layout.py [--examples 20000] [--out benchmarks/out]

Layouts, on the same realistic synthetic teacher outputs (vocab 50,265, k=64):
  (a) smash: columnar zstd chunks in a WebDataset tar (``smash.store``), plus variants;
  (b) plain WebDataset: one ``.npy`` member per field per sample, natural dtypes
      (int64 ids, float16 log-probs, float32 tail);
  (c) Megatron-style: one ``torch.save`` payload per sample, zstd-compressed, in a tar.

Reported: bytes/example; teacher bytes per top-k entry (ids, values, tail, written alone:
token ids replaced by one token); all-in bytes per top-k entry; write MB/s (of the arrays as
the teacher pass hands them over) and examples/s; decode examples/s on one core (file bytes
in memory -> one dict of arrays per example). Every layout's read-back is checked bit for bit.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_result
from smash.store.codec import ChunkLayout, canonical_order
from smash.store.manifest import ShardInfo
from smash.store.schema import FIELDS as SCHEMA
from smash.store.schema import TEACHER_FIELDS
from smash.store.shards import read_shard
from smash.store.writer import ShardFile
from synthetic_teacher import synthetic_examples

FIELDS = tuple(f.name for f in SCHEMA if f.level != "example")  # the per-token and per-mask arrays


def logical_bytes(examples: list[dict]) -> int:
    """Bytes of the arrays as handed over: int64 ids and positions, fp16 values, fp32 tail."""
    return sum(
        8 * (len(e["input_ids"]) + len(e["mask_positions"]) + e["topk_ids"].size)
        + 2 * e["topk_logprobs"].size
        + 4 * e["tail_logmass"].size
        + 1
        for e in examples
    )


def teacher_only(examples: list[dict]) -> list[dict]:
    return [
        {
            **e,
            "input_ids": np.zeros(1, np.int64),
            "mask_positions": np.zeros(1, np.int64),
            "label": -1,
        }
        for e in examples
    ]


# ----- (a) this store -------------------------------------------------------------------------
def write_smash(examples, path: Path, layout: ChunkLayout, vocab: int, k: int) -> ShardInfo:
    shard = ShardFile(path, k=k, vocab_size=vocab, layout=layout)
    for e in examples:
        shard.write(e)
    return shard.close()


def read_smash(path: Path, info: ShardInfo) -> list[dict]:
    return [ex for chunk in read_shard(str(path), info) for ex in chunk]


# ----- (b) plain WebDataset, .npy per field ---------------------------------------------------
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def write_npy(examples, path: Path, fields=FIELDS) -> None:
    with wds.TarWriter(str(path), mtime=0) as tar:
        for i, e in enumerate(examples):
            sample = {"__key__": f"{i:08d}", "cls": str(e["label"]).encode()}
            for f in fields:
                arr = e[f].astype(np.int64) if f.endswith(("ids", "positions")) else e[f]
                sample[f + ".npy"] = _npy(arr)
            tar.write(sample)


def read_npy(path: Path) -> list[dict]:
    out = []
    for sample in wds.WebDataset(str(path), shardshuffle=False):
        ex = {k[:-4]: np.load(io.BytesIO(v)) for k, v in sample.items() if k.endswith(".npy")}
        ex["label"] = int(sample["cls"])
        out.append(ex)
    return out


# ----- (c) torch.save + zstd per sample (Megatron-LM's offline-logit cache) ------------------
def write_torch(examples, path: Path, fields=FIELDS) -> None:
    cctx = zstandard.ZstdCompressor(level=3)
    with wds.TarWriter(str(path), mtime=0) as tar:
        for i, e in enumerate(examples):
            buf = io.BytesIO()
            torch.save(
                {
                    f: torch.from_numpy(
                        np.ascontiguousarray(
                            e[f].astype(np.int64) if f.endswith(("ids", "positions")) else e[f]
                        )
                    )
                    for f in fields
                }
                | {"label": e["label"]},
                buf,
            )
            tar.write({"__key__": f"{i:08d}", "pt.zst": cctx.compress(buf.getvalue())})


def read_torch(path: Path) -> list[dict]:
    dctx = zstandard.ZstdDecompressor()
    out = []
    for sample in wds.WebDataset(str(path), shardshuffle=False):
        d = torch.load(io.BytesIO(dctx.decompress(sample["pt.zst"])), weights_only=True)
        out.append({k: (v.numpy() if torch.is_tensor(v) else v) for k, v in d.items()})
    return out


def check_lossless(written: list[dict], read: list[dict], canonical: str | None) -> bool:
    for w, r in zip(written, read, strict=True):
        ids, lps = w["topk_ids"], w["topk_logprobs"]
        if canonical:
            perm = canonical_order(ids, lps, canonical)
            ids, lps = np.take_along_axis(ids, perm, 1), np.take_along_axis(lps, perm, 1)
        same = (
            np.array_equal(w["input_ids"], r["input_ids"])
            and np.array_equal(ids, r["topk_ids"])
            and np.array_equal(lps.view(np.uint16), r["topk_logprobs"].view(np.uint16))
            and np.array_equal(w["tail_logmass"].view(np.uint32), r["tail_logmass"].view(np.uint32))
        )
        if not same:
            return False
    return True


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def run(n: int, k: int, vocab: int, out_dir: Path) -> dict:
    torch.set_num_threads(1)
    print(f"generating {n:,} synthetic teacher outputs (vocab {vocab:,}, k={k}) ...", flush=True)
    examples = synthetic_examples(n, vocab=vocab, k=k)
    teacher = teacher_only(examples)
    entries = n * k
    logical = logical_bytes(examples)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="smash-bench-"))

    smash_variants = [
        ("(a) smash (default)", ChunkLayout()),
        ("(a) smash, zstd -10", ChunkLayout(level=10)),
        ("(a) smash, zstd -19", ChunkLayout(level=19)),
        ("(a) smash, no delta/planes", ChunkLayout(delta=False, planes=False)),
        ("(a) smash, ids sorted + delta", ChunkLayout(order="id")),
    ]
    for name, layout in smash_variants:
        info, t_write = timed(write_smash, examples, tmp / "a.tar", layout, vocab, k)
        t_info = write_smash(teacher, tmp / "a_t.tar", layout, vocab, k)
        read, t_read = timed(read_smash, tmp / "a.tar", info)
        rows.append(
            {
                "layout": name,
                "bytes": info.bytes,
                "teacher_bytes": t_info.bytes,
                "t_write": t_write,
                "t_read": t_read,
                "lossless": check_lossless(examples, read, layout.order),
            }
        )
    for name, write, read_fn in (
        ("(b) webdataset .npy per field", write_npy, read_npy),
        ("(c) torch.save + zstd per sample", write_torch, read_torch),
    ):
        _, t_write = timed(write, examples, tmp / "x.tar")
        write(teacher, tmp / "x_t.tar", TEACHER_FIELDS)
        read, t_read = timed(read_fn, tmp / "x.tar")
        rows.append(
            {
                "layout": name,
                "bytes": (tmp / "x.tar").stat().st_size,
                "teacher_bytes": (tmp / "x_t.tar").stat().st_size,
                "t_write": t_write,
                "t_read": t_read,
                "lossless": check_lossless(examples, read, None),
            }
        )
    for r in rows:
        r["bytes_per_example"] = r["bytes"] / n
        r["teacher_bytes_per_entry"] = r["teacher_bytes"] / entries
        r["allin_bytes_per_entry"] = r["bytes"] / entries
        r["write_MB_s"] = logical / r["t_write"] / 1e6
        r["write_examples_s"] = n / r["t_write"]
        r["decode_examples_s"] = n / r["t_read"]
    ours = rows[0]
    b = next(r for r in rows if r["layout"].startswith("(b)"))
    c = next(r for r in rows if r["layout"].startswith("(c)"))
    targets = {
        "lossless": all(r["lossless"] for r in rows[: len(smash_variants)]),
        "teacher <= 2.5 B/entry": ours["teacher_bytes_per_entry"] <= 2.5,
        "all-in <= 4 B/entry": ours["allin_bytes_per_entry"] <= 4.0,
        ">= 8x smaller than (b)": b["bytes"] / ours["bytes"] >= 8,
        ">= 2x smaller than (c)": c["bytes"] / ours["bytes"] >= 2,
        ">= 100k examples/s decode": ours["decode_examples_s"] >= 100_000,
    }
    result = {
        "examples": n,
        "k": k,
        "vocab": vocab,
        "mean_length": float(np.mean([len(e["input_ids"]) for e in examples])),
        "logical_bytes_per_example": logical / n,
        "torch_threads": 1,
        "rows": rows,
        "ratios": {"b_over_a": b["bytes"] / ours["bytes"], "c_over_a": c["bytes"] / ours["bytes"]},
        "targets": targets,
    }
    print_table(result)
    write_result("store_layout", result, out_dir, "cpu")
    return result


def print_table(result: dict) -> None:
    print(
        f"\n{result['examples']:,} examples, k={result['k']}, vocab {result['vocab']:,}, "
        f"mean length {result['mean_length']:.1f} tokens\n"
    )
    head = (
        f"{'layout':<34}{'B/example':>10}{'teacher B/entry':>16}{'all-in B/entry':>15}"
        f"{'write MB/s':>11}{'decode ex/s':>12}{'lossless':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        print(
            f"{r['layout']:<34}{r['bytes_per_example']:>10.1f}"
            f"{r['teacher_bytes_per_entry']:>16.3f}{r['allin_bytes_per_entry']:>15.3f}"
            f"{r['write_MB_s']:>11.1f}{r['decode_examples_s']:>12,.0f}"
            f"{'yes' if r['lossless'] else 'NO':>9}"
        )
    print(
        f"\n(b)/(a) size: {result['ratios']['b_over_a']:.1f}x   "
        f"(c)/(a) size: {result['ratios']['c_over_a']:.1f}x"
    )
    for name, ok in result["targets"].items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=50_265)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    run(args.examples, args.k, args.vocab, args.out)


if __name__ == "__main__":
    main()
