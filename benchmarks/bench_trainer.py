"""Trainer benchmark: streaming overhead, and offline against online distillation.

    python benchmarks/bench_trainer.py                      # CPU, shapes scaled down by 4
    python benchmarks/bench_trainer.py --device cuda        # GPU, the real shapes, bf16

Both measurements run the real ``train-student`` recipe (``smash.train.trainer.Trainer`` on
DeepSpeed), each configuration in its own process so that peak memory is its own:

1. Streaming overhead: samples/s with micro-batches streamed from a store (DataLoader
   workers reading and decoding shards) against the *same* micro-batches collated
   beforehand and held in memory. Target: at most 2% slower.
2. Offline against online: step time and peak memory of distilling from the store
   against distilling from a live teacher (``--teacher``, targets computed each step by
   the same ``teacher_topk`` as the teacher pass, same k), at the same shapes.
   Target on a GPU at the real shapes: at least 3x faster per step, zero teacher memory.
3. The paper's other settings (section 4.4), with its RoBERTa-base teacher (DistilRoBERTa's
   width and heads, which ``hidn``, ``attn`` and ``cos`` need): ``ce`` online with that
   teacher, ``ce + 0.01 hidn``, ``ce + 0.01 attn`` (student and teacher on the eager attention
   path), and DistilBERT's ``5 ce + 2 mlm`` offline and ``5 ce + 2 mlm + 1 cos`` online with
   dynamic masking, on a masked-text store (15% of the tokens masked). Each is read against
   ``ce`` offline (and the attention row against ``ce`` online with the same teacher, for what
   the eager path and the attention maps cost).

Shapes: the teacher has RoBERTa-large's dimensions and the student DistilRoBERTa's (random
weights, no downloads; vocab 50,265). On CPU every width and depth is divided by ``--scale``
(default 4; depth rounded up), keeping the teacher/student proportions. Examples are the
synthetic teacher outputs of ``synthetic_teacher.py`` (lengths 20-128, one mask, k=64).
Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU and the process's peak RSS on a
CPU (which includes the Python/torch baseline, the same in every configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_name, write_result
from shapes import BASE_TEACHER, STUDENT, TEACHER, model_config

K = 64
# configuration -> (label, objective, teacher model folder or None, store, extra config)
MODES = {
    "memory": ("in-memory batches", "ce", None, "store", {}),
    "offline": ("streamed from store (offline)", "ce", None, "store", {}),
    "online": ("online teacher (large)", "ce", "teacher", "store", {}),
    "online-base": ("online teacher (base)", "ce", "teacher-base", "store", {}),
    "ce+hidn": ("ce + 0.01 hidn (base, online)", {"ce": 1.0, "hidn": 0.01}, "teacher-base",
                "store", {}),
    "ce+attn": ("ce + 0.01 attn (base, online)", {"ce": 1.0, "attn": 0.01}, "teacher-base",
                "store", {}),
    "distilbert-offline": ("5 ce + 2 mlm (offline)", {"ce": 5.0, "mlm": 2.0}, None, "mlm-store",
                           {"temperature": 2.0, "scale_t2": True}),
    "distilbert-online": ("5 ce + 2 mlm + 1 cos (base, online)",
                          {"ce": 5.0, "mlm": 2.0, "cos": 1.0}, "teacher-base", "mlm-store",
                          {"temperature": 2.0, "scale_t2": True, "dynamic_masking": True}),
}  # fmt: skip


def masked_text(examples: list[dict], vocab: int, mask_id: int, seed: int) -> list[dict]:
    """The synthetic examples as a masked-text store holds them: 15% of each one's tokens
    masked (BERT's rule), a top-k row and the original token per masked position."""
    from smash.precompute.shared.masking import Masking, example_rng

    out = []
    for i, ex in enumerate(examples):
        ids = np.asarray(ex["input_ids"])
        maskable = np.ones(len(ids), bool)
        maskable[[0, -1]] = False
        masked = Masking().apply(
            ids, maskable, example_rng(seed, i), mask_id=mask_id, vocab_size=vocab
        )
        rows = np.arange(len(masked.mask_positions))  # top-k rows borrowed from the next examples
        out.append(
            {
                "input_ids": masked.input_ids,
                "mask_positions": masked.mask_positions,
                "mlm_labels": masked.original_ids,
                **{
                    name: np.concatenate([examples[r][name] for r in (i + rows) % len(examples)])
                    for name in ("topk_ids", "topk_logprobs", "tail_logmass")
                },
            }
        )
    return out


def write_store(path: Path, tok, examples: list[dict], producer: dict) -> None:
    from smash.store.fingerprint import tokenizer_record
    from smash.store.manifest import finalize_store
    from smash.store.writer import StoreWriter

    writer = StoreWriter(path, producer=producer, tokenizer=tokenizer_record(tok), k=K)
    per_shard = max(len(examples) // 8, 1)
    for i, start in enumerate(range(0, len(examples), per_shard)):
        writer.write_shard(i, examples[start : start + per_shard])
    finalize_store(path)


def build_workspace(work: Path, args) -> dict:
    """Tokenizer padded to RoBERTa's vocabulary, random teachers and student, the stores."""
    import torch
    from smash.precompute.tiny import train_tiny_tokenizer, write_tiny_corpus
    from synthetic_teacher import synthetic_examples
    from tokenizers import AddedToken
    from transformers import RobertaForMaskedLM

    vocab = model_config(STUDENT).vocab_size
    tok = train_tiny_tokenizer([write_tiny_corpus(work / "corpus.txt")], work / "tok")
    tok.add_tokens([AddedToken(f"<unused{i}>", special=True) for i in range(vocab - len(tok))])
    dims = {}
    models = (("teacher", TEACHER, 0), ("student", STUDENT, 1), ("teacher-base", BASE_TEACHER, 2))
    for role, name, seed in models:
        config = model_config(name, args.scale, pad_token_id=tok.pad_token_id)
        dims[role] = {key: getattr(config, key) for key in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}  # fmt: skip
        torch.manual_seed(seed)
        RobertaForMaskedLM(config).save_pretrained(work / role)
        tok.save_pretrained(work / role)
    n = args.batch * (args.warmup + args.steps) * (1 + args.workers)
    examples = synthetic_examples(n, vocab=vocab, k=K, seed=0)
    write_store(work / "store", tok, examples, {"task": "bench", "max_length": 128})
    masking = {"probability": 0.15, "replace_mask": 0.8, "replace_random": 0.1}
    write_store(
        work / "mlm-store",
        tok,
        masked_text(examples, vocab, tok.mask_token_id, seed=0),
        {"task": "bench-mlm", "max_length": 128, "task_options": {"masking": masking}},
    )
    return {"shapes": dims, "examples": n}


def config_for(work: Path, out: Path, args, mode: str) -> dict:
    from smash.train.config import load_config

    _, objective, teacher, store, extra = MODES[mode]
    precision = "bf16" if args.device == "cuda" else "fp32"
    return load_config(
        {
            **extra,
            "student": str(work / "student"),
            "output_dir": str(out),
            "stores": [{"path": str(work / store)}],
            "objective": objective,
            "max_steps": args.warmup + args.steps,
            "log_every": args.warmup if args.warmup else args.steps,
            "checkpoint_every": 0,
            "num_workers": args.workers,
            "seed": 0,
            "teacher": str(work / teacher) if teacher else None,
            "teacher_k": K if teacher else None,
            "deepspeed": {
                "train_micro_batch_size_per_gpu": args.batch,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 1.0,
                "zero_optimization": {"stage": 0},
                "bf16": {"enabled": precision == "bf16"},
                "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
            },
        }
    )


class InMemory:
    """Pre-collated micro-batches, iterated like the trainer's DataLoader."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def state_dict(self) -> dict:
        return {}


def child(mode: str, work: Path, args) -> dict:
    """One configuration (``MODES``) in this process."""
    import torch
    from smash.train.metrics import read_metrics
    from smash.train.trainer import Trainer

    out = work / f"run-{mode}"
    shutil.rmtree(out, ignore_errors=True)  # the previous repeat's run
    trainer = Trainer(config_for(work, out, args, mode))
    trainer.setup()
    if mode == "memory":
        stream = iter(trainer.loader)
        batches = [next(stream) for _ in range(args.warmup + args.steps)]
        if args.device == "cuda":
            batches = [
                {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in b.items()}
                for b in batches
            ]
        trainer.loader = InMemory(batches)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    trainer.cleanup()
    windows = [r for r in read_metrics(out) if "samples_per_s" in r][1:]  # skip the warm-up
    samples = sum(r["samples"] for r in windows)
    seconds = sum(r["samples"] / r["samples_per_s"] for r in windows)
    peak = (
        torch.cuda.max_memory_allocated()
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    teacher_bytes = (
        0
        if trainer.teacher is None
        else sum(p.numel() * p.element_size() for p in trainer.teacher.adapter.model.parameters())
    )
    result = {
        "mode": mode,
        "samples_per_s": samples / seconds,
        "step_s": seconds / (samples / args.batch),
        "peak_bytes": peak,
        "teacher_param_bytes": teacher_bytes,
    }
    if mode == "offline":
        result["load_s_per_batch"] = serial_load_time(work, trainer, args)
    return result


def serial_load_time(work: Path, trainer, args) -> float:
    """Seconds to read, check, decode and collate one micro-batch in the main process: what
    streaming would add to every step with no DataLoader worker to hide it."""
    from smash.train.data import make_loader

    loader = make_loader(
        [str(work / "store")],
        [1.0],
        batch_size=args.batch,
        pad_id=trainer.tokenizer.pad_token_id,
        seed=1,
        num_workers=0,
    )
    stream = iter(loader)
    next(stream)
    started = time.perf_counter()
    for _ in range(args.steps):
        next(stream)
    return (time.perf_counter() - started) / args.steps


def median_run(results: list[dict]) -> dict:
    """Per-field median over repeats."""
    return {
        key: (
            statistics.median(r[key] for r in results)
            if isinstance(results[0][key], (int, float))
            else results[0][key]
        )
        for key in results[0]
    }


def run_child(mode: str, work: Path, args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, __file__, "--child", mode, "--work", str(work), *sys.argv[1:]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(result: dict) -> None:
    runs = result["runs"]
    mb = 2**20
    print(
        f"\ntrainer benchmark on {result['device']}, {result['precision']}, micro-batch "
        f"{result['batch']}, {result['steps']} timed steps; shapes {result['shape_note']}"
    )
    print(f"{'configuration':<38}{'samples/s':>11}{'ms/step':>10}{'peak MB':>10}{'x ce':>7}")
    for key, r in runs.items():
        print(
            f"{MODES[key][0]:<38}{r['samples_per_s']:>11.1f}{1e3 * r['step_s']:>10.1f}"
            f"{r['peak_bytes'] / mb:>10.0f}{r['step_s'] / runs['offline']['step_s']:>7.2f}"
        )
    s = result["summary"]
    print(
        f"\nstreaming overhead: {100 * s['streaming_overhead']:+.2f}% (target <= 2%; median of "
        f"{result['repeats']} interleaved repeats); reading one micro-batch in the main process "
        f"takes {100 * s['serial_load_fraction']:.2f}% of a step"
    )
    print(
        f"offline vs online: {s['speedup']:.2f}x faster per step (target >= 3x on GPU at real "
        f"shapes); peak memory {s['memory_saved_bytes'] / mb:.0f} MB lower "
        f"({100 * s['memory_saved_fraction']:.0f}%); teacher weights alone "
        f"{s['teacher_param_bytes'] / mb:.0f} MB, none of it loaded offline"
    )
    if "eager_attention_cost" in s:
        print(
            f"ce + 0.01 attn takes {s['eager_attention_cost']:.2f}x the step of ce online with "
            f"the same teacher (eager attention path and the attention maps)"
        )
    print("x ce: step time against ce streamed from the store (offline)")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="divide widths and depths by this (default: 4 on CPU, 1 on GPU)",
    )
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default 16 CPU, 64 GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers (default 0 on CPU, where a worker process would take "
        "a core from the step; 4 on GPU)",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        help="configurations to run (memory, offline and online are always run)",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.scale = args.scale or (1 if gpu else 4)
    args.batch = args.batch or (64 if gpu else 16)
    args.steps = args.steps or (50 if gpu else 20)
    args.workers = args.workers if args.workers is not None else (4 if gpu else 0)
    if args.child:
        print(json.dumps(child(args.child, args.work, args)))
        return

    work = Path(tempfile.mkdtemp(prefix="smash-trainer-bench-"))
    started = time.perf_counter()
    info = build_workspace(work, args)
    print(
        f"workspace {work}: {info['examples']} synthetic examples; teacher "
        f"{info['shapes']['teacher']}, student {info['shapes']['student']}"
    )
    modes = ["memory", "offline", "online", *(m for m in MODES if m in set(args.modes) - {
        "memory", "offline", "online"})]  # fmt: skip
    trials: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):  # interleaved, order alternating: drifting load hits all
        for mode in list(trials)[:: 1 if repeat % 2 == 0 else -1]:
            results = trials[mode]
            results.append(run_child(mode, work, args))
            print(
                f"  {mode} #{repeat + 1}: {results[-1]['samples_per_s']:.1f} samples/s, "
                f"{1e3 * results[-1]['step_s']:.1f} ms/step"
            )
    runs = {mode: median_run(results) for mode, results in trials.items()}
    summary = {
        "streaming_overhead": 1
        - runs["offline"]["samples_per_s"] / runs["memory"]["samples_per_s"],
        "speedup": runs["online"]["step_s"] / runs["offline"]["step_s"],
        "memory_saved_bytes": runs["online"]["peak_bytes"] - runs["offline"]["peak_bytes"],
        "memory_saved_fraction": 1 - runs["offline"]["peak_bytes"] / runs["online"]["peak_bytes"],
        "teacher_param_bytes": runs["online"]["teacher_param_bytes"],
        "serial_load_fraction": runs["offline"]["load_s_per_batch"] / runs["offline"]["step_s"],
    }
    if {"ce+attn", "online-base"} <= runs.keys():
        summary["eager_attention_cost"] = runs["ce+attn"]["step_s"] / runs["online-base"]["step_s"]
    result = {
        "precision": "bf16" if gpu else "fp32",
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "scale": args.scale,
        "shapes": info["shapes"],
        "shape_note": (
            "real (RoBERTa-large teacher, DistilRoBERTa student)"
            if args.scale == 1
            else f"RoBERTa-large and DistilRoBERTa scaled down {args.scale}x"
        ),
        "repeats": args.repeats,
        "runs": runs,
        "trials": trials,
        "summary": summary,
        "seconds": time.perf_counter() - started,
        "rows": [{"configuration": mode, **run} for mode, run in runs.items()],
    }
    shutil.rmtree(work, ignore_errors=True)
    print_table({**result, "device": device_name(args.device)})
    write_result(f"trainer_{args.device}", result, args.out, args.device)


if __name__ == "__main__":
    main()
