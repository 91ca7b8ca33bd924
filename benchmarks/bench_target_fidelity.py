"""Target fidelity: how many store bytes per mask a student needs to learn as well as from the
full teacher, for top-k targets (each tail mode) and sampled targets.

    python benchmarks/bench_target_fidelity.py                  # CPU, 3 seeds, a few minutes
    python benchmarks/bench_target_fidelity.py --seeds 5 --steps 300
    python benchmarks/bench_target_fidelity.py --quick      # a check that it runs: ~1 minute

Workspace (``smash.train.demo``'s pieces): a corpus of ``--docs`` documents from the tiny
fixture grammar, split by document into train and held-out (the demo's 120 documents give
under 300 sentence pairs: students would see each several times, and a sampled store's fixed
draws would be learnt as such), the tiny tokenizer, teacher (trained as a masked LM so that
its distributions are peaked) and smaller student. The teacher trains for 1,500 masked-LM
steps at lr 5e-4: its loss sits on the unigram plateau (~4.1 nats) for ~1,000 steps, and a
teacher stopped there (the demo's 300 steps) gives the *same* distribution at every answer
slot, which would let zstd fold every row of a store into one and a single draw per mask
average out over the examples; past the plateau (~2.9 nats) its answer depends on the
prompt. Stores, real shards written by ``precompute-teacher`` in this process:
sentence pairs of the train corpus (the same examples in every store) as top-k stores for
each ``--ks`` and sampled stores for each ``--samples`` (per seed: ``--sample-seed`` is the
run's seed), and a held-out store of the held-out corpus with the whole vocabulary (k = V),
which makes the held-out KL exact.

Runs (``train-student``'s ``Trainer`` on DeepSpeed, the same student, steps, batches and
schedule for all): the online teacher over the full vocabulary (the reference), every top-k
store under every ``--tails`` mode, every sampled store. For each, per seed (data order and,
for sampled stores, the draws):

- bytes per mask: ``shard B/mask`` is the store's shard files (tar framing included, so small
  stores pay for its 10 kB records) over its masks; ``teacher B/mask`` is what the targets
  add: the compressed chunks (tar members) of the store minus those of the same examples
  written with no targets (k = 0), over the masks. Both come from the real files;
- held-out KL(teacher || student) at the masks, exact, over the full vocabulary, and its
  ratio to the online reference of the same seed;
- ECE: the student's expected calibration error at the held-out masks, 15 equal-width bins of
  its top probability, against the accuracy the teacher gives that top token (its teacher
  probability: the expected accuracy were the answers drawn from the teacher);
- ms/step: the trainer's own samples/s over the run (after its first logging window).

Writes ``target_fidelity.json`` (every seed's values, means and standard deviations), prints
the Markdown table and plots held-out KL against teacher bytes per mask (log-log) to
``target_fidelity.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_result

ECE_BINS = 15


def precompute(corpus: Path, teacher: Path, out: Path, n: int, *options: str) -> Path:
    from smash.precompute.cli import main

    argv = ["--task", "sentence-pair", "--corpus", str(corpus), "--teacher", str(teacher),
            "--out", str(out), "--num-examples", str(n), "--shard-size", str(n), "--seed", "0",
            "--dtype", "fp32", "--device", "cpu", "--tokenize-workers", "0", *options]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError(f"precompute-teacher failed: {' '.join(argv)}")
    return out


def chunk_bytes(store: Path) -> int:
    """Bytes of the compressed chunks (tar members' data) in the store's shards."""
    total = 0
    for shard in sorted(store.glob("shard-*.tar")):
        with tarfile.open(fileobj=io.BytesIO(shard.read_bytes())) as tar:
            total += sum(m.size for m in tar.getmembers() if m.isfile())
    return total


def prompt_only_bytes(store: Path, work: Path) -> int:
    """Chunk bytes of ``store``'s examples written again with no teacher targets (k = 0)."""
    import numpy as np
    from smash.store.manifest import finalize_store, load_manifest
    from smash.store.reader import StoreDataset
    from smash.store.writer import StoreWriter

    manifest = load_manifest(store)
    writer = StoreWriter(work, producer={}, tokenizer=manifest.tokenizer, k=0)
    examples = [
        {
            "input_ids": ex["input_ids"],
            "mask_positions": ex["mask_positions"],
            "topk_ids": np.zeros((len(ex["mask_positions"]), 0), np.int64),
            "topk_logprobs": np.zeros((len(ex["mask_positions"]), 0), np.float16),
            "tail_logmass": np.zeros(len(ex["mask_positions"]), np.float32),
            "label": ex["label"],
            "meta": ex["meta"],
        }
        for ex in StoreDataset(store, shuffle=False, epochs=1, rank=0, world_size=1)
    ]
    writer.write_shard(0, examples)
    finalize_store(work)
    return chunk_bytes(work)


def store_sizes(store: Path, baseline: int) -> dict:
    from smash.store.manifest import load_manifest

    manifest = load_manifest(store)
    masks = manifest.num_samples  # one mask per sentence-pair example
    return {
        "shard_b_per_mask": manifest.num_bytes / masks,
        "teacher_b_per_mask": (chunk_bytes(store) - baseline) / masks,
    }


def train_config(run: Path, student: Path, store: Path, args, seed: int, **extra) -> dict:
    return {
        "student": str(student),
        "output_dir": str(run),
        "stores": [{"path": str(store), "weight": 1.0}],
        "objective": "ce",
        "max_steps": args.steps,
        "seed": seed,
        "num_workers": 0,
        "checkpoint_every": 0,
        "log_every": max(1, min(10, args.steps // 4)),  # a few timing windows in any run
        "deepspeed": {
            "train_micro_batch_size_per_gpu": args.batch,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 0},
            "optimizer": {"type": "AdamW", "params": {"lr": args.lr, "weight_decay": 0.01}},
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {
                    "total_num_steps": "auto",
                    "warmup_num_steps": "auto",
                    "warmup_max_lr": "auto",
                    "warmup_type": "linear",
                },
            },
        },
        **extra,
    }


@torch.no_grad()
def heldout_fidelity(student_dir: Path, heldout: Path, pad_id: int) -> dict:
    """Exact KL(teacher || student) and the student's ECE at the held-out masks (k = V store)."""
    from smash.precompute.shared.adapters import adapter_for
    from smash.store.collate import collate_examples
    from smash.store.reader import StoreDataset
    from smash.train.evaluate import masked_kl_rows
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(student_dir).eval()
    adapter = adapter_for(model)
    examples = list(StoreDataset(heldout, shuffle=False, epochs=1, rank=0, world_size=1))
    kl, conf, acc = [], [], []
    for start in range(0, len(examples), 64):
        b = collate_examples(examples[start : start + 64], pad_id)
        logits = adapter.logits(adapter.answers(b).hidden).float()
        kl.append(masked_kl_rows(logits, b["topk_ids"], b["topk_logprobs"], b["tail_logmass"]))
        teacher = torch.zeros_like(logits).scatter(
            1, b["topk_ids"], b["topk_logprobs"].float().exp()
        )
        top = torch.softmax(logits, -1).max(-1)
        conf.append(top.values)
        acc.append(teacher.gather(1, top.indices[:, None])[:, 0])
    conf, acc = torch.cat(conf), torch.cat(acc)
    bins = (conf * ECE_BINS).long().clamp(max=ECE_BINS - 1)
    ece = sum(
        (bins == i).sum() / len(conf) * (conf[bins == i].mean() - acc[bins == i].mean()).abs()
        for i in range(ECE_BINS)
        if (bins == i).any()
    )
    return {"kl": float(torch.cat(kl).mean()), "ece": float(ece)}


def run_one(config: dict, heldout: Path, pad_id: int) -> dict:
    from smash.train.config import load_config
    from smash.train.metrics import read_metrics
    from smash.train.trainer import Trainer

    trainer = Trainer(load_config(config))
    trainer.setup()
    trainer.train()
    trainer.cleanup()
    run = Path(config["output_dir"])
    windows = [r for r in read_metrics(run) if "samples_per_s" in r]
    windows = windows[1:] or windows  # the first window holds the start-up, when there are more
    batch = config["deepspeed"]["train_micro_batch_size_per_gpu"]
    ms = statistics.median(1000 * batch / r["samples_per_s"] for r in windows)
    return {**heldout_fidelity(run / "student", heldout, pad_id), "ms_per_step": ms}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each configuration's measures."""
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        runs = [r for r in rows if r["config"] == name]
        row = {k: runs[0][k] for k in ("config", "targets", "width", "tail")}
        for key in (
            "shard_b_per_mask",
            "teacher_b_per_mask",
            "kl",
            "kl_ratio",
            "ece",
            "ms_per_step",
        ):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(row)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    online = next(r for r in rows if r["targets"] == "online")
    ax.axhline(online["kl"], color="k", lw=1, label="online teacher, full vocabulary")
    ax.axhspan(online["kl"] * 0.98, online["kl"] * 1.02, color="k", alpha=0.08, label="±2%")
    ax.axvline(40, color="gray", ls=":", lw=1, label="40 B/mask")
    groups = [("sampled", None, "o-")] + [
        ("topk", t, "s--") for t in ("renorm", "bucket", "uniform")
    ]
    for targets, tail, style in groups:
        pts = [r for r in rows if r["targets"] == targets and r.get("tail") == tail]
        if not pts:
            continue
        label = "sampled N" if targets == "sampled" else f"top-k, {tail}"
        ax.errorbar(
            [r["teacher_b_per_mask"] for r in pts],
            [r["kl"] for r in pts],
            yerr=[r["kl_sd"] for r in pts],
            fmt=style,
            capsize=3,
            label=label,
        )
        for r in pts:
            ax.annotate(
                str(r["width"]),
                (r["teacher_b_per_mask"], r["kl"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("teacher bytes per mask in the store (log)")
    ax.set_ylabel("held-out KL(teacher || student), nats (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300, help="student optimizer steps per run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument("--teacher-lr", type=float, default=5e-4)
    p.add_argument("--docs", type=int, default=1500, help="documents in the generated corpus")
    p.add_argument("--ks", default="1,4,16,64")
    p.add_argument("--tails", default="renorm,bucket,uniform")
    p.add_argument("--samples", default="1,4,12,32")
    p.add_argument(
        "--proposal-temperature",
        type=float,
        default=1.0,
        help="sampled stores draw from the teacher at this temperature (importance-weighted)",
    )
    p.add_argument("--work", type=Path, default=None, help="workspace (default: a temp folder)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a check that the benchmark runs (about a minute; its figures mean little): "
        "1 seed, 40 steps, 300 documents, a 300-step teacher, top-4/64 bucket, N=12",
    )
    if p.parse_known_args()[0].quick:  # its sizes become the defaults; flags still win
        p.set_defaults(seeds=1, steps=40, docs=300, teacher_steps=300, ks="4,64", tails="bucket",
                       samples="12")  # fmt: skip
    args = p.parse_args()
    for name in ("seeds", "steps", "batch", "docs", "teacher_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    from smash.precompute.tiny import build_tiny_setup, write_tiny_corpus
    from smash.train.demo import corpus_examples, sharpen_teacher, split_corpus
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    tiny = build_tiny_setup(work / "tiny")
    corpus = write_tiny_corpus(work / "corpus.txt", n_docs=args.docs, seed=1)
    train_corpus, heldout_corpus = split_corpus(corpus, work / "corpus")
    first, last = sharpen_teacher(
        tiny["teacher"], train_corpus, steps=args.teacher_steps, lr=args.teacher_lr
    )
    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    n = corpus_examples("sentence-pair", train_corpus, 0)
    n -= n % 3
    stores = work / "stores"
    heldout = precompute(
        heldout_corpus,
        tiny["teacher"],
        stores / "heldout",
        corpus_examples("sentence-pair", heldout_corpus, 0) // 3 * 3,
        "--k",
        str(len(tok)),
    )
    ks = [int(x) for x in args.ks.split(",")]
    samples = [int(x) for x in args.samples.split(",")]
    topk = {
        k: precompute(train_corpus, tiny["teacher"], stores / f"top{k}", n, "--k", str(k))
        for k in ks
    }
    baseline = prompt_only_bytes(topk[ks[0]], work / "prompts-only")
    print(
        f"teacher MLM loss {first:.2f} -> {last:.2f}; {n} train examples; setup "
        f"{time.perf_counter() - started:.0f} s"
    )

    rows = []
    for seed in range(args.seeds):
        runs = [("online", "online", None, None, topk[ks[0]], {"teacher": str(tiny["teacher"])})]
        for k in ks:
            for tail in args.tails.split(","):
                runs.append((f"top-{k} {tail}", "topk", k, tail, topk[k], {"tail": tail}))
        tau = args.proposal_temperature
        for s in samples:
            name = f"sampled N={s}" + (f" tau={tau:g}" if tau != 1.0 else "")
            store = precompute(
                train_corpus,
                tiny["teacher"],
                stores / f"sampled{s}-tau{tau:g}-seed{seed}",
                n,
                "--targets",
                "sampled",
                "--samples",
                str(s),
                "--sample-seed",
                str(seed),
                "--proposal-temperature",
                str(args.proposal_temperature),
            )
            runs.append((name, "sampled", s, None, store, {}))
        for name, targets, width, tail, store, extra in runs:
            run = work / "runs" / f"seed{seed}" / name.replace(" ", "_").replace("=", "")
            config = train_config(run, tiny["student"], store, args, seed, **extra)
            result = run_one(config, heldout, tok.pad_token_id)
            sizes = store_sizes(store, baseline) if targets != "online" else {}
            rows.append(
                {
                    "config": name,
                    "targets": targets,
                    "width": width,
                    "tail": tail,
                    "seed": seed,
                    **sizes,
                    **result,
                }
            )
            print(
                f"seed {seed} {name:<18} KL {result['kl']:.4f} ECE {result['ece']:.4f} "
                f"{sizes.get('teacher_b_per_mask', 0):6.1f} B/mask "
                f"{result['ms_per_step']:.1f} ms/step"
            )
        online = next(r["kl"] for r in rows if r["seed"] == seed and r["targets"] == "online")
        for r in rows:
            if r["seed"] == seed:
                r["kl_ratio"] = r["kl"] / online
    summary = summarise(rows)
    columns = [
        ("config", "s"),
        ("teacher_b_per_mask", ".1f"),
        ("shard_b_per_mask", ".1f"),
        ("kl", ".4f"),
        ("kl_sd", ".4f"),
        ("kl_ratio", ".3f"),
        ("kl_ratio_sd", ".3f"),
        ("ece", ".4f"),
        ("ece_sd", ".4f"),
        ("ms_per_step", ".1f"),
    ]
    setup = {
        "seeds": args.seeds,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "proposal_temperature": args.proposal_temperature,
        "teacher_mlm_loss": [first, last],
        "train_examples": n,
        "heldout_examples": int(json.loads((heldout / "manifest.json").read_text())["num_samples"]),
        "vocab": len(tok),
        "prompt_only_chunk_bytes": baseline,
        "wall_s": time.perf_counter() - started,
    }
    write_result(
        "target_fidelity", {"setup": setup, "rows": summary, "runs": rows}, args.out, "cpu", columns
    )
    plot(summary, args.out / "target_fidelity.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
