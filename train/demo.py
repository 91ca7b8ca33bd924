"""``make demo``: the whole SMASH pipeline on the bundled tiny models, on a CPU, offline.

    python -m smash.train.demo --out demo-out
    python -m smash.train.demo --out demo-t5 --family t5     # the same with T5 (paper 4.7)

1. builds the fixture corpus, tokenizer, tiny teacher and smaller student
   (``smash.precompute.tiny``; ``--family t5``: ``smash.precompute.tiny_t5``, a unigram
   tokenizer and T5s), and splits the corpus by document into train and held-out;
2. briefly trains the tiny teacher as a masked LM on the train corpus (a T5 on one-token
   span corruption: ``x <extra_id_0> y`` -> ``<extra_id_0> token``): a randomly initialised
   teacher predicts an almost uniform distribution, which leaves nothing to distil;
3. ``precompute-teacher`` writes a sentence-pair store and a sentiment store from the train
   corpus (k=64, the real default) and a held-out sentence-pair store from the held-out
   corpus with the whole vocabulary (k=V, so the KL below is exact);
4. ``train-student`` distils the student from the two stores mixed 2:1, on DeepSpeed;
5. the exported student is loaded back with ``AutoModelForMaskedLM.from_pretrained``
   (``AutoModelForSeq2SeqLM`` for T5);
6. the few-shot runner evaluates the student before and after distillation on a tiny
   sentence-pair task in RTE's layout (``write_tiny_pair_task``: are two sentences about one
   topic? K=8, seeds 13 and 21, prompt-based fine-tuning and zero-shot), the paper's promise
   at CPU size.

It prints where everything went, how far the held-out KL(teacher || student) at the mask
positions fell, and the two few-shot rows side by side, whatever they show. A rerun with the same ``--out`` replaces the earlier demo's output there; a
non-empty folder that the demo did not write is refused, so nothing else is deleted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported anywhere
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

__all__ = [
    "MARKER",
    "corpus_examples",
    "demo_config",
    "fewshot_before_after",
    "main",
    "prepare_out",
    "run_outputs",
    "sharpen_t5_teacher",
    "sharpen_teacher",
    "split_corpus",
]

FEWSHOT_STEPS = 100  # prompt-based fine-tuning steps per seed in the demo's few-shot rows
MARKER = ".smash-demo"  # written first into --out: a rerun may replace a folder holding it


def prepare_out(out: Path) -> bool:
    """Make ``out`` an empty folder holding ``MARKER``; True if an earlier demo's was replaced.

    Only a folder that a demo wrote (it holds ``MARKER``) is removed; any other non-empty
    folder, or a file, is refused (SystemExit).
    """
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out}: a file, not a folder: pass another --out")
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    replace = MARKER in names
    if names and not replace:
        raise SystemExit(
            f"--out {out}: a non-empty folder that no demo wrote (no {MARKER} in "
            f"it): pass a new or empty folder, so that nothing in it is deleted"
        )
    if replace:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "written by python -m smash.train.demo: a rerun with this --out replaces this folder\n",
        encoding="utf-8",
    )
    return replace


def split_corpus(corpus: Path, out_dir: Path, held_out: float = 0.2) -> tuple[Path, Path]:
    """Write the blank-line-separated documents of ``corpus`` to train.txt and heldout.txt."""
    docs = [d for d in corpus.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    cut = int(len(docs) * (1 - held_out))
    out_dir.mkdir(parents=True, exist_ok=True)
    train, heldout = out_dir / "train.txt", out_dir / "heldout.txt"
    train.write_text("\n\n".join(docs[:cut]) + "\n", encoding="utf-8")
    heldout.write_text("\n\n".join(docs[cut:]) + "\n", encoding="utf-8")
    return train, heldout


def sharpen_teacher(teacher: Path, corpus: Path, **options: Any) -> tuple[float, float]:
    """Train the tiny teacher as a masked LM (15% masks) in place; returns first/last loss.
    ``options``: ``steps``, ``batch_size``, ``length``, ``lr``, ``seed`` (``_sharpen``)."""
    from transformers import AutoModelForMaskedLM

    def corrupt(batch, tok, gen):
        special = torch.tensor(tok.all_special_ids)
        masked = (torch.rand(batch.shape, generator=gen) < 0.15) & ~torch.isin(batch, special)
        return batch.masked_fill(masked, tok.mask_token_id), batch.masked_fill(~masked, -100)

    return _sharpen(teacher, corpus, AutoModelForMaskedLM, corrupt, **options)


def sharpen_t5_teacher(teacher: Path, corpus: Path, **options: Any) -> tuple[float, float]:
    """Train the tiny T5 teacher on one-token span corruption in place (one token per window
    replaced by ``<extra_id_0>``; the target ``<extra_id_0> token </s>``, so the decoder's
    second position learns the token, where prompts read it); returns first/last loss."""
    from transformers import AutoModelForSeq2SeqLM

    def corrupt(batch, tok, gen):
        sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
        special = torch.tensor(tok.all_special_ids)
        # one random ordinary token per row: the largest of uniform draws off the specials
        draws = torch.rand(batch.shape, generator=gen).masked_fill(torch.isin(batch, special), -1)
        where = draws.argmax(dim=1, keepdim=True)  # (B, 1)
        labels = torch.cat(
            [torch.full_like(where, sentinel), batch.gather(1, where),
             torch.full_like(where, tok.eos_token_id)], dim=1
        )  # fmt: skip
        return batch.scatter(1, where, sentinel), labels

    return _sharpen(teacher, corpus, AutoModelForSeq2SeqLM, corrupt, **options)


def _sharpen(
    teacher: Path,
    corpus: Path,
    model_class: Any,
    corrupt: Callable,
    *,
    steps: int = 300,
    batch_size: int = 32,
    length: int = 48,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[float, float]:
    """Train ``teacher`` (loaded with ``model_class``) in place on windows of ``length`` tokens
    of ``corpus``, ``corrupt(batch, tokenizer, generator) -> (inputs, labels)`` making each
    batch's task; returns the mean loss of the first and of the last ten steps."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    model = model_class.from_pretrained(teacher)
    docs = [d for d in corpus.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    ids = torch.tensor([t for d in docs for t in tok.encode(d)])
    windows = ids[: len(ids) // length * length].view(-1, length)  # (N, L)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (batch_size,), generator=gen)]
        inputs, labels = corrupt(batch, tok, gen)
        loss = model(input_ids=inputs, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.save_pretrained(teacher)
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def corpus_examples(task: str, corpus: Path, seed: int) -> int:
    """How many candidate examples ``precompute-teacher --task TASK`` can draw from ``corpus``."""
    from smash.precompute.corpus import open_corpus
    from smash.precompute.sentences import SentenceSplitter
    from smash.precompute.tasks import make_task

    examples = make_task(task, SentenceSplitter()).examples(open_corpus(corpus), seed)
    return sum(1 for _ in examples)


def run_outputs(run: Path) -> str:
    """The logging outputs that ``run`` holds, e.g. ``metrics.jsonl, checkpoints/``."""
    names = [n for n in ("metrics.jsonl", "tensorboard", "checkpoints") if (run / n).exists()]
    return ", ".join(n + "/" if (run / n).is_dir() else n for n in names)


def demo_config(
    out: Path, student: Path, stores: Sequence[tuple[Path, float]], eval_store: Path, steps: int
) -> dict:
    """A train-student config sized for a CPU: micro-batches of 16, lr 2e-3, linear decay."""
    return {
        "student": str(student),
        "output_dir": str(out),
        "stores": [{"path": str(p), "weight": w} for p, w in stores],
        "objective": "ce",
        "tail": "bucket",
        "max_steps": steps,
        "seed": 0,
        "num_workers": 1,
        "checkpoint_every": max(steps // 2, 1),
        "log_every": 10,
        "eval_store": str(eval_store),
        "eval_every": max(steps // 4, 1),
        "eval_examples": 256,
        "deepspeed": {
            "train_micro_batch_size_per_gpu": 16,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 0},
            "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.01}},
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {
                    "total_num_steps": "auto",
                    "warmup_num_steps": max(steps // 20, 1),
                    "warmup_max_lr": "auto",
                    "warmup_type": "linear",
                },
            },
        },
    }


def fewshot_before_after(
    before: Path,
    after: Path,
    out: Path,
    seeds: Sequence[int] = (13, 21),
    steps: int = FEWSHOT_STEPS,
) -> str:
    """Evaluate the student before and after distillation few-shot on the tiny sentence-pair
    task (results in ``out/results.md``); returns the two rows side by side as text."""
    from smash.precompute.kshot.splits import make_kshot
    from smash.precompute.kshot.tasks import get_task
    from smash.precompute.tiny import write_tiny_pair_task
    from smash.train.fewshot.protocol import Protocol
    from smash.train.fewshot.report import table_rows, write_report
    from smash.train.fewshot.runner import evaluate_models

    task, k, modes = get_task("RTE"), 8, ("prompt", "zero-shot")
    original = write_tiny_pair_task(out / "original")
    make_kshot(original, out / "k-shot", [task], seeds=seeds, k=k)
    protocol = Protocol(learning_rates=(3e-3,), batch_sizes=(4,), max_steps=steps, eval_every=10)
    models = [("before", str(before)), ("after", str(after))]
    entries = evaluate_models(
        models, [task], out / "k-shot", modes, protocol, seeds, k, max_length=64
    )
    config = {"k": k, "seeds": list(seeds), **dataclasses.asdict(protocol)}
    write_report(out, entries, config)
    cells = {(model, mode): c[task.name] for model, mode, c in table_rows(entries)[1]}
    lines = [f"    {'':<26}{'before':>13}{'after':>13}"]
    for mode, label in zip(modes, ("prompt-based fine-tuning", "zero-shot")):
        row = [f"{m:.1f} ({s:.1f})" for m, s in (cells[(n, mode)] for n in ("before", "after"))]
        lines.append(f"    {label:<26}{row[0]:>13}{row[1]:>13}")
    return "\n".join(lines)


def _precompute(
    task: str,
    corpus: Path,
    teacher: Path,
    out: Path,
    k: int,
    n: int | None,
    seed: int,
    extra: Sequence[str] = (),
) -> None:
    """Run precompute-teacher for ``n`` examples, at most (and by default) all the corpus has."""
    from smash.precompute.cli import main as precompute

    available = corpus_examples(task, corpus, seed)
    n = available if n is None else min(n, available)
    argv = ["--task", task, "--corpus", str(corpus), "--teacher", str(teacher), "--out", str(out),
            "--k", str(k), "--num-examples", str(n), "--seed", str(seed), "--dtype", "fp32",
            "--device", "cpu", "--shard-size", str(max((n + 3) // 4, 1)), "--overwrite",
            *extra]  # fmt: skip
    if precompute(argv) != 0:
        raise RuntimeError(f"precompute-teacher failed: {' '.join(argv)}")


def main(argv: Sequence[str] | None = None) -> int:
    import json

    from smash.precompute.shared.adapters import auto_model_class
    from smash.precompute.tiny import build_tiny_setup
    from smash.precompute.tiny_t5 import build_tiny_t5_setup
    from smash.store.manifest import load_manifest
    from smash.train.cli import main as train_student
    from smash.train.metrics import read_metrics
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(
        prog="smash.train.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument(
        "--family",
        choices=("masked-lm", "t5"),
        default="masked-lm",
        help="RoBERTa-style masked LMs, or T5s (paper 4.7: answers at the decoder's second token)",
    )
    p.add_argument("--steps", type=int, default=200, help="student optimizer steps")
    p.add_argument("--teacher-steps", type=int, default=300, help="teacher MLM steps")
    p.add_argument(
        "--examples",
        type=int,
        default=None,
        help="sentence pairs to precompute, at most (and by default) all that the "
        "bundled corpus gives; half as many sentiment and an eighth as many "
        "held-out candidates",
    )
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    out = args.out.resolve()
    if prepare_out(out):
        print(f"replacing the output of an earlier demo in {out}")

    print(f"1/6 tiny corpus, tokenizer, teacher and student ({args.family})")
    t5 = args.family == "t5"
    tiny = (build_tiny_t5_setup if t5 else build_tiny_setup)(out / "tiny")
    train_corpus, heldout_corpus = split_corpus(tiny["corpus"], out / "corpus")
    vocab = len(AutoTokenizer.from_pretrained(tiny["tokenizer"]))

    objective = "span-corruption" if t5 else "masked-LM"
    print(f"2/6 teacher: {args.teacher_steps} {objective} steps on {train_corpus.name}")
    sharpen = sharpen_t5_teacher if t5 else sharpen_teacher
    first, last = sharpen(tiny["teacher"], train_corpus, steps=args.teacher_steps)
    print(f"    teacher {objective} loss {first:.2f} -> {last:.2f}")

    print("3/6 precompute-teacher (tiny teacher, CPU, fp32)")
    stores = out / "stores"
    n = args.examples
    pairs, sentiment, heldout = (None,) * 3 if n is None else (n, max(n // 2, 1), max(n // 8, 32))
    _precompute("sentence-pair", train_corpus, tiny["teacher"], stores / "pairs", 64, pairs, seed=0)
    _precompute(
        "sentiment",
        train_corpus,
        tiny["teacher"],
        stores / "sentiment",
        64,
        sentiment,
        seed=0,
        extra=["--filter-rule", "max-prob", "--threshold", "0.3"],
    )
    _precompute(
        "sentence-pair",
        heldout_corpus,
        tiny["teacher"],
        stores / "heldout-pairs",
        vocab,
        heldout,
        seed=1,
    )
    for name in ("pairs", "sentiment", "heldout-pairs"):
        m = load_manifest(stores / name)
        print(f"    {stores / name}: {m.num_samples} examples, k={m.k}, {m.num_bytes / 1e3:.0f} kB")

    print(f"4/6 train-student: {args.steps} steps, pairs:sentiment = 2:1, DeepSpeed on CPU")
    config = demo_config(
        out / "run",
        tiny["student"],
        [(stores / "pairs", 2.0), (stores / "sentiment", 1.0)],
        stores / "heldout-pairs",
        args.steps,
    )
    config_path = out / "train_config.json"
    config_path.write_text(json.dumps(config, indent=1) + "\n")
    if train_student(["--config", str(config_path)]) != 0:
        raise RuntimeError("train-student failed")

    print("5/6 exported student")
    exported = out / "run" / "student"
    auto = auto_model_class(args.family)
    model = auto.from_pretrained(exported)
    params = sum(p.numel() for p in model.parameters())
    kl = [r["eval_kl"] for r in read_metrics(out / "run") if "eval_kl" in r]
    print(
        f"    {exported}: {type(model).__name__}, {params / 1e3:.0f}k parameters, loads with "
        f"{auto.__name__}.from_pretrained"
    )
    print(
        f"\nheld-out KL(teacher || student) at the masks: {kl[0]:.3f} -> {kl[-1]:.3f} nats "
        f"({100 * (1 - kl[-1] / kl[0]):.0f}% lower)"
    )
    print(
        "\n6/6 few-shot, the student before and after distillation, on a tiny sentence-pair "
        f"task (RTE layout: one topic or two? K=8 per label, seeds 13 21; {FEWSHOT_STEPS} "
        "steps of prompt-based fine-tuning at lr 3e-3, batch 4; test accuracy x 100, mean "
        "(std) over seeds)"
    )
    print(fewshot_before_after(tiny["student"], exported, out / "fewshot"))
    print(
        f"outputs: stores {stores}, run {out / 'run'} ({run_outputs(out / 'run')}), "
        f"student {exported}, few-shot {out / 'fewshot'} (results.md)"
    )
    print(f"demo took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
