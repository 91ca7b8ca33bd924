"""Teacher pass throughput: the whole ``precompute-teacher`` pipeline against a bare forward.

    python benchmarks/bench_teacher_pass.py                      # CPU, RoBERTa-large / 8
    python benchmarks/bench_teacher_pass.py --device cuda --dtype fp16   # the real shape

Runs ``run_teacher_pass`` (tokenize, bucket, teacher, top-k, background compress + write) on
sentence pairs whose lengths follow short sentence pairs (20-128 tokens, lognormal around 48),
then the bare teacher (``teacher_topk`` only) on exactly the same batches. Reports
examples/s, real tokens/s, padding efficiency (real / computed tokens), overlap efficiency
(pipeline throughput / bare-forward throughput; also after start-up, i.e. once the first
shard is tokenized, which nothing can overlap) and, on GPU, achieved TFLOP/s and MFU.
The teacher is RoBERTa-large's published config (``shapes.py``; widths and depths divided by
``--scale`` on CPU) with random weights (no downloads); the tokenizer is the tiny
BPE, padded with never-used tokens to the model's vocabulary size so ids span it all.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from smash.precompute.batching import token_budget_batches
from smash.precompute.provenance import producer_config
from smash.precompute.shared.adapters import adapter_for
from smash.precompute.shared.precisions import PRECISIONS
from smash.precompute.shared.teacher_targets import teacher_topk
from smash.precompute.shared.templates import parse_template
from smash.precompute.tasks import TaskExample
from smash.precompute.teacher_pass import PassConfig, run_teacher_pass, start_preparer
from smash.precompute.tiny import train_tiny_tokenizer, write_tiny_corpus
from transformers import AddedToken, RobertaConfig, RobertaForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_name, write_result
from shapes import TEACHER, model_config

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense fp16/bf16 tensor cores


class SyntheticPairs:
    """Sentence pairs from the tiny corpus's words with realistic total lengths."""

    name = "bench-pairs"
    template = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
    max_length = 128
    verbalizer = ()
    group_size = 1

    def __init__(self, words: list[str], seed: int = 0):
        self.words, self.seed = words, seed

    def examples(self, corpus, seed):
        rng = random.Random(self.seed)
        while True:
            n = int(np.clip(round(rng.lognormvariate(np.log(40), 0.4)), 14, 115))
            a = rng.randint(max(3, n // 4), max(4, 3 * n // 4))
            yield TaskExample(
                (
                    " ".join(rng.choices(self.words, k=a)) + ".",
                    " ".join(rng.choices(self.words, k=max(n - a, 3))) + ".",
                ),
                -1,
            )

    def keep(self, verbalizer_logprobs):
        return None

    def config(self):
        return {"seed": self.seed}


def padded_tokenizer(root: Path, vocab_size: int):
    corpus = write_tiny_corpus(root / "corpus.txt", n_docs=200)
    tok = train_tiny_tokenizer([corpus], root / "tok")
    tok.add_tokens([AddedToken(f"<unused{i}>", special=True) for i in range(vocab_size - len(tok))])
    words = sorted({w.strip(".,?") for w in corpus.read_text().split()} - {""})
    return tok, words


def model_flops(config: RobertaConfig, batches: list[tuple[int, int]], rows: int) -> float:
    """Forward FLOPs: 2 x (non-embedding weights) per computed token, attention scores and
    values (4 x L x H per token per layer), and the LM head on mask rows only."""
    h, layers, ff, v = (
        config.hidden_size,
        config.num_hidden_layers,
        config.intermediate_size,
        config.vocab_size,
    )
    per_token = 2 * layers * (4 * h * h + 2 * h * ff)
    total = 0.0
    for b, length in batches:
        total += b * length * per_token + 4 * layers * b * length * length * h
    return total + rows * 2 * (h * h + h * v)


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = PRECISIONS[args.dtype]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="smash-teacher-bench-"))
    scale = args.scale or (1 if device.type == "cuda" else 8)
    config = model_config(TEACHER, scale)
    tok, words = padded_tokenizer(work, config.vocab_size)
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    model = RobertaForMaskedLM(config).to(device=device, dtype=dtype).eval()
    model.config._attn_implementation = "sdpa"
    task = SyntheticPairs(words)
    cfg = PassConfig(
        out=work / "store",
        k=args.k,
        num_examples=args.examples,
        shard_size=args.shard_size,
        token_budget=args.token_budget,
        tokenize_workers=args.tokenize_workers,
    )
    producer = producer_config(
        task,
        tok,
        {"name": f"random {TEACHER} / {scale}", "dtype": args.dtype},
        cfg,
        "synthetic",
        {},
    )
    # Started before the warm-up, as the CLI starts it before loading the model.
    preparer = start_preparer(task, tok, cfg)
    # Warm-up (kernels, allocator) on a separate store.
    warm = PassConfig(
        out=work / "warm",
        k=args.k,
        num_examples=min(512, args.examples),
        shard_size=512,
        token_budget=args.token_budget,
        tokenize_workers=args.tokenize_workers,
    )
    run_teacher_pass(task, task.examples(None, 0), model, tok, warm, producer, device)
    summary = run_teacher_pass(
        task, task.examples(None, 0), model, tok, cfg, producer, device, preparer
    )

    # The bare teacher on exactly the same batches, inputs already on the device.
    template = parse_template(task.template)
    stream = task.examples(None, 0)
    batches, rows_total = [], 0
    for start in range(0, args.examples, args.shard_size):
        chunk = [next(stream) for _ in range(min(args.shard_size, args.examples - start))]
        prompts = template.encode_batch(tok, [ex.sentences for ex in chunk], task.max_length)
        lengths = [len(p.input_ids) for p in prompts]
        for rows in token_budget_batches(lengths, args.token_budget):
            longest = max(lengths[i] for i in rows)
            ids = torch.full((len(rows), longest), tok.pad_token_id, dtype=torch.long)
            for b, i in enumerate(rows):
                ids[b, : lengths[i]] = torch.tensor(prompts[i].input_ids)
            att = (ids != tok.pad_token_id).long()
            pos = torch.tensor([prompts[i].mask_position for i in rows])
            batches.append((ids.to(device), att.to(device), pos.to(device)))
            rows_total += len(rows)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    adapter = adapter_for(model)
    t0 = time.perf_counter()
    for ids, att, pos in batches:
        prompts = {"input_ids": ids, "attention_mask": att, "mask_positions": pos,
                   "mask_batch": torch.arange(len(ids), device=device)}  # fmt: skip
        teacher_topk(adapter, prompts, args.k)
    sync()
    bare_s = time.perf_counter() - t0

    flops = model_flops(config, [tuple(b[0].shape) for b in batches], rows_total)
    name = device_name(args.device)
    peak = next((v for key, v in PEAK_TFLOPS.items() if key in name), None)
    result = {
        "model": TEACHER,
        "scale": scale,
        "dtype": args.dtype,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "examples": summary.examples,
        "shards": summary.shards,
        "k": args.k,
        "token_budget": args.token_budget,
        "batches": len(batches),
        "mean_length": summary.real_tokens / summary.examples,
        "pipeline_s": summary.wall_s,
        "bare_forward_s": bare_s,
        "examples_per_s": summary.examples / summary.wall_s,
        "real_tokens_per_s": summary.real_tokens / summary.wall_s,
        "bare_real_tokens_per_s": summary.real_tokens / bare_s,
        "padding_efficiency": summary.padding_efficiency,
        "overlap_efficiency": bare_s / summary.wall_s,
        "startup_s": summary.startup_s,
        "steady_overlap_efficiency": bare_s / (summary.wall_s - summary.startup_s),
        "achieved_tflops": flops / summary.wall_s / 1e12,
        "mfu": (flops / summary.wall_s / 1e12 / peak) if peak else None,
        "store_bytes_per_example": summary.bytes / max(summary.kept, 1),
    }
    result["targets"] = {
        "padding efficiency >= 0.95": result["padding_efficiency"] >= 0.95,
        "overlap efficiency >= 0.97": result["overlap_efficiency"] >= 0.97,
    }
    if device.type == "cuda":
        result["targets"][">= 1,000,000 real tokens/s"] = result["real_tokens_per_s"] >= 1e6
    return result


def summary_rows(r: dict) -> list[dict]:
    return [
        {"metric": "examples/s", "value": r["examples_per_s"]},
        {"metric": "real tokens/s (pipeline)", "value": r["real_tokens_per_s"]},
        {"metric": "real tokens/s (bare forward)", "value": r["bare_real_tokens_per_s"]},
        {"metric": "padding efficiency", "value": r["padding_efficiency"]},
        {"metric": "overlap efficiency", "value": r["overlap_efficiency"]},
        {"metric": "start-up s (first shard's prep)", "value": r["startup_s"]},
        {"metric": "overlap after start-up", "value": r["steady_overlap_efficiency"]},
        {"metric": "achieved TFLOP/s", "value": r["achieved_tflops"]},
        {"metric": "MFU", "value": r["mfu"]},
        {"metric": "store bytes/example", "value": r["store_bytes_per_example"]},
    ]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help=f"divide {TEACHER}'s widths and depths by this (default: 8 on CPU, 1 on GPU)",
    )
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--examples", type=int, default=16_384)
    p.add_argument("--shard-size", type=int, default=2048)
    p.add_argument("--token-budget", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    p.add_argument("--tokenize-workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = p.parse_args()
    result = run(args)
    print(
        f"\nteacher pass: {TEACHER} / {result['scale']} ({result['params_M']:.0f}M params, "
        f"{result['dtype']}), {result['examples']:,} examples in {result['shards']} shards, "
        f"k={result['k']}, token budget {result['token_budget']:,}, mean length "
        f"{result['mean_length']:.1f}"
    )
    result["rows"] = summary_rows(result)
    write_result(
        f"teacher_pass_{args.device.split(':')[0]}",
        result,
        args.out,
        args.device,
        [("metric", "s"), ("value", ",.3f")],
    )
    for name, ok in result["targets"].items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")


if __name__ == "__main__":
    main()
