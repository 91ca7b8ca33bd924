"""Few-shot evaluation throughput: ``evaluate-fewshot`` against an LM-BFF-style baseline.

    python benchmarks/bench_fewshot.py                      # CPU, DistilRoBERTa scaled down 4x
    python benchmarks/bench_fewshot.py --device cuda        # GPU, DistilRoBERTa's shape

Three measurements, on one device in one run:

1. Side by side: one ``evaluate-fewshot`` process over every seed's grid points of a prompt
   task (as one runs an evaluation), against LM-BFF's way, one fresh process per grid point
   (start, load, train, dev, test: ``evaluate-fewshot`` on that one point with
   ``--test-every-point`` and ``--adamw dense``, torch's AdamW over every vocabulary row as
   LM-BFF's HF Trainer), ours between the baseline's first and second half of the seeds.
   Units per hour of each (wall time; and the processes' CPU seconds, which a shared
   machine's other jobs change least), and whether every seed's chosen point, step, dev and
   test metrics are identical (ours trains ``--batch-units`` together: 1 on a CPU, 6 on a
   GPU, seeds and learning rates of one batch size; the model has DistilRoBERTa's dropout,
   and stacked units draw dropout streams of their own, so batched results are not those of
   one at a time).
2. One unit split into its parts, in a process of its own: process start (the imports a
   fresh process pays), model load, a training step (batch 2 and 4, with ``--adamw rows``,
   AdamW and the vocabulary table's gradient by rows, and with ``--adamw dense``; and a unit's
   share of a step of ``--batch-units`` trained together), a dev pass, a test pass.
3. From those parts, the device-seconds of the paper's Table 2 for one student: 8 trained rows
   x 11 tasks (MNLI's one training tests MNLI-m and MNLI-mm) x 5 seeds x 6 grid points, 1000
   steps each, a dev pass every 100 steps, with every task's real test-set size; the LM-BFF
   row evaluates each test example with 16 demonstration sets (4 for MNLI, SNLI and QQP).

The model is DistilRoBERTa's published config (``shapes.py``; widths and depths divided by
``--scale`` on a CPU) with random weights; the task is SST-2's layout, made by ``make-kshot``
from generated sentences of SST-2's lengths (K=16, dev 32 examples, a test set of
``--test-size``). On a CPU every measured process runs torch on one thread (``child_env``).
Results (table and JSON) go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_name, write_result
from shapes import STUDENT, model_config

SEEDS = (13, 21, 42, 87, 100)
LRS = ("1e-5", "2e-5", "5e-5")
BATCH_SIZES = ("2", "4")
TASK = "SST-2"

# Table 2 (paper section 4.1, appendix A.1): tasks, test-set sizes (examples; MNLI's two test
# sets), labels (dev = 16 x labels; STS-B's two bins) and sentences per input.
TABLE2_TASKS = {
    "SST-2": ((872,), 2, 1), "SST-5": ((2210,), 5, 1), "MR": ((2000,), 2, 1),
    "CR": ((2000,), 2, 1), "MNLI": ((9815, 9832), 3, 2), "SNLI": ((9842,), 3, 2),
    "QNLI": ((5463,), 2, 2), "RTE": ((277,), 2, 2), "MRPC": ((408,), 2, 2),
    "QQP": ((40431,), 2, 2), "STS-B": ((1500,), 2, 2),
}  # fmt: skip
TABLE2_ROWS = ("prompt-based fine-tuning", "fine-tuning", "distill", "distill bt10", "LM-BFF",
               "Vanilla PPT", "SMASH", "RoBERTa-base")  # fmt: skip
FEWER_DEMO_SETS = {"MNLI": 4, "SNLI": 4, "QQP": 4}  # LM-BFF's run_experiment.sh; 16 elsewhere


def build_workspace(work: Path, args) -> dict:
    """The tiny tokenizer, a random student with RoBERTa's vocabulary (rows beyond the
    tokenizer's are never read: padding the tokenizer with 49,665 added tokens made its load
    take 2.3 s, where RoBERTa's takes a fraction of that), SST-2 k-shot splits."""
    import torch
    from smash.precompute.kshot.splits import make_kshot
    from smash.precompute.kshot.tasks import get_task
    from smash.precompute.tiny import train_tiny_tokenizer, write_tiny_corpus
    from transformers import RobertaForMaskedLM

    corpus = write_tiny_corpus(work / "corpus.txt")
    tok = train_tiny_tokenizer([corpus], work / "tok")
    config = model_config(STUDENT, args.scale, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(work / "student")
    tok.save_pretrained(work / "student")
    sentences = [s.strip() + "." for s in corpus.read_text().replace("\n", " ").split(".")]
    sentences = [s for s in sentences if len(s) > 2]
    rng = random.Random(0)

    def rows(n: int) -> str:  # SST-2's sentences: about 20 words, one to three clauses
        lines = ["sentence\tlabel"]
        for _ in range(n):
            text = " ".join(rng.choice(sentences) for _ in range(rng.randint(1, 3)))
            lines.append(f"{text}\t{rng.randint(0, 1)}")
        return "\n".join(lines) + "\n"

    original = work / "original" / TASK
    original.mkdir(parents=True)
    (original / "train.tsv").write_text(rows(400))
    (original / "dev.tsv").write_text(rows(args.test_size))  # GLUE's dev is the test set
    make_kshot(work / "original", work / "k-shot", [get_task(TASK)], seeds=SEEDS, k=16)
    return {
        key: getattr(config, key)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    }


def common_flags(args, work: Path) -> list[str]:
    return ["--model", str(work / "student"), "--data", str(work / "k-shot"), "--tasks", TASK,
            "--mode", "prompt", "--k", "16", "--max-steps", str(args.steps), "--eval-every",
            str(args.eval_every), "--device", args.device, "--precision", args.precision]  # fmt: skip


def child_env(args) -> dict[str, str]:
    """The environment of every process measured: offline, and on a CPU one thread (as the
    other CPU benchmarks: on a shared machine, threads that outnumber the free cores spin and
    wait, which makes a step an order of magnitude slower at random)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.device == "cpu":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def evaluate(flags: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all its threads) of one ``evaluate-fewshot``
    process: CPU seconds are what other jobs on a shared machine change least."""
    command = [sys.executable, "-m", "smash.train.fewshot.cli", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"evaluate-fewshot failed:\n{done.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu


def _add(total: tuple[float, float], run: tuple[float, float]) -> tuple[float, float]:
    return total[0] + run[0], total[1] + run[1]


def run_ours(work: Path, args, seeds: list[str]) -> tuple[float, float]:
    """One process over every seed's grid points, as one runs an evaluation."""
    return evaluate([*common_flags(args, work), "--seeds", *seeds, "--lrs", *LRS,
                     "--batch-sizes", *BATCH_SIZES, "--batch-units", str(args.batch_units),
                     "--out", str(work / "ours")], child_env(args))  # fmt: skip


def run_baseline(work: Path, args, seed: str, points: dict) -> tuple[float, float]:
    """A process per grid point of the seed, each testing its point; their results into
    ``points``."""
    total = (0.0, 0.0)
    for lr in LRS:
        for bs in BATCH_SIZES:
            out = work / "baseline" / f"{seed}-{lr}-{bs}"
            total = _add(total, evaluate([*common_flags(args, work), "--seeds", seed, "--lrs", lr,
                                          "--batch-sizes", bs, "--test-every-point", "--adamw",
                                          "dense", "--out", str(out)], child_env(args)))  # fmt: skip
            points[(int(seed), float(lr), int(bs))] = _ledger_point(out)
    return total


def side_by_side(work: Path, args) -> dict:
    """Ours between the two halves of LM-BFF's way (the first half of the seeds before, the
    rest after), so that a load that drifts on a shared machine weighs on both."""
    seeds = [str(s) for s in SEEDS[: args.seeds]]
    first, rest = seeds[: len(seeds) // 2], seeds[len(seeds) // 2 :]
    baseline, points = (0.0, 0.0), {}
    for seed in first:
        baseline = _add(baseline, run_baseline(work, args, seed, points))
    ours = run_ours(work, args, seeds)
    for seed in rest:
        baseline = _add(baseline, run_baseline(work, args, seed, points))
    compared = [_compare(work / "ours", points)]
    units = len(points)
    return {
        "units": units,
        "ours_s": ours[0],
        "baseline_s": baseline[0],
        "ours_cpu_s": ours[1],
        "baseline_cpu_s": baseline[1],
        "ours_units_per_hour": 3600 * units / ours[0],
        "baseline_units_per_hour": 3600 * units / baseline[0],
        "speedup": baseline[0] / ours[0],
        "speedup_cpu_time": baseline[1] / ours[1],
        "identical": all(c["identical"] for c in compared),
        "same_choices": all(c["same_choices"] for c in compared),
        "max_metric_difference": max(c["max_metric_difference"] for c in compared),
    }


def _ledger_point(out: Path) -> dict:
    [line] = [json.loads(x) for x in (out / "points.jsonl").read_text().splitlines()[1:]]
    return line["result"]


def _compare(ours_out: Path, points: dict) -> dict:
    """Ours against the baseline's points: ``identical`` when every seed chose what the
    baseline's points give (the best dev metric, earliest on ties, in grid order) with the same
    step, dev and test metrics; ``same_choices`` when the chosen grid points and steps match;
    ``max_metric_difference`` over every grid point's dev metric and the chosen test metrics
    (round-off when units train batched)."""
    from smash.train.fewshot.metrics import select_best

    [entry] = json.loads((ours_out / "results.json").read_text())["entries"]  # every seed
    identical = same_choices = True
    worst = 0.0
    for seed in entry["seeds"]:
        grid = [points[(seed["seed"], float(lr), int(bs))] for lr in LRS for bs in BATCH_SIZES]
        best = grid[select_best([p["dev"] for p in grid])]
        mine = {k: seed[k] for k in ("lr", "batch_size", "step", "dev", "tests")}
        identical &= mine == {k: best[k] for k in mine} and seed["grid_dev"] == [
            p["dev"] for p in grid
        ]
        same_choices &= all(mine[k] == best[k] for k in ("lr", "batch_size", "step"))
        pairs = [*zip(seed["grid_dev"], (p["dev"] for p in grid)),
                 *((v, best["tests"][c]) for c, v in seed["tests"].items())]  # fmt: skip
        worst = max([worst, *(abs(a - b) for a, b in pairs)])
    return {"identical": identical, "same_choices": same_choices, "max_metric_difference": worst}


def components(work: Path, args) -> dict:
    """One unit's parts, timed in this (child) process; the process start in a fresh one."""
    import torch
    from smash.precompute.kshot.data import load_kshot
    from smash.precompute.kshot.tasks import get_task
    from smash.train.fewshot.batched import train_together
    from smash.train.fewshot.cpu_allocator import keep_freed_memory
    from smash.train.fewshot.protocol import Protocol, checkpoint_tests, evaluate, train_point
    from smash.train.fewshot.row_adamw import ADAMW_KINDS
    from smash.train.fewshot.runner import _factory
    from transformers import AutoTokenizer

    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as evaluate-fewshot does on a CPU
    task = get_task(TASK)
    split = load_kshot(work / "k-shot", task, 16, SEEDS[0])
    tok = AutoTokenizer.from_pretrained(work / "student")
    make = _factory("prompt", str(work / "student"), tok, task, task.max_length, task.template,
                    task.verbalizer)  # fmt: skip

    def timed(fn, repeats: int = 3) -> float:  # the median
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    load_s = timed(make)
    protocol = Protocol(precision=args.precision)
    learner = make()
    learner.model.to(device)
    dev = learner.encode(split.dev)
    dev_s = timed(lambda: evaluate(learner, dev, protocol.eval_batch_size, device,
                                   **protocol.inference))  # fmt: skip

    def training(steps: int, bs: int, adamw: str = "rows") -> float:  # one dev pass, at the end
        once = replace(protocol, max_steps=steps, eval_every=steps, adamw=adamw)
        # the median of 3 on a shared CPU; one on a GPU, whose check is timed
        return timed(lambda: train_point(make, split, SEEDS[0], 1e-5, bs, once, device),
                     3 if device.type == "cpu" else 1)  # fmt: skip

    def together(steps: int, bs: int) -> float:  # batch_units units, one dev pass each
        once = replace(protocol, max_steps=steps, eval_every=steps)
        learners = [make() for _ in range(args.batch_units)]
        return timed(lambda: train_together(learners, [split] * len(learners),
                                            [SEEDS[0]] * len(learners), [1e-5] * len(learners),
                                            bs, once, device), 1)  # fmt: skip

    # a step: the difference of two trainings, which share every cost but their steps
    n = max(args.steps, 2)
    # on a GPU --adamw rows is torch's AdamW as dense is (row_adamw.make_adamw): measured once
    kinds = ADAMW_KINDS if device.type == "cpu" else ("dense",)
    step_s = {
        kind: {str(bs): (training(n, bs, kind) - training(n // 2, bs, kind)) / (n - n // 2)
               for bs in (2, 4)}
        for kind in kinds
    }  # fmt: skip
    step_s.setdefault("rows", step_s["dense"])
    batched_step_s = {}
    if args.batch_units > 1:  # a unit's share of a step of batch_units units
        batched_step_s = {str(bs): (together(n, bs) - together(n // 2, bs)) / (n - n // 2)
                          / args.batch_units for bs in (2, 4)}  # fmt: skip
    _, state = train_point(make, split, SEEDS[0], 1e-5, 4, replace(protocol, max_steps=2), device)
    test_s = timed(lambda: checkpoint_tests(learner, split, state, protocol, device), 2)
    test_tokens = sum(len(f.input_ids) for f in learner.encode(split.tests[TASK]))
    return {
        "load_s": load_s,
        "step_s": step_s,
        "batched_step_s": batched_step_s,
        "dev_pass_s": dev_s,
        "test_pass_s": test_s,
        "test_examples": len(split.tests[TASK]),
        "test_tokens_per_s": test_tokens / test_s,
        "mean_test_tokens": test_tokens / len(split.tests[TASK]),
    }


def process_start(args) -> float:
    """Seconds a fresh process takes to import what an evaluation runs on (and to start CUDA;
    median of 3 on a CPU, one on a GPU, whose check is timed)."""
    code = ("import torch, transformers, smash.train.fewshot.cli, smash.train.fewshot.runner; "
            "from transformers import AutoModelForMaskedLM, AutoTokenizer")  # fmt: skip
    if args.device == "cuda":
        code += "; torch.zeros(1, device='cuda')"
    times = []
    for _ in range(1 if args.device == "cuda" else 3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       env=child_env(args))  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table2(parts: dict, start_s: float) -> dict:
    """Device-seconds of Table 2 for one student, ours and LM-BFF's way, from one unit's
    parts: every unit trains 1000 steps (half of them at batch 2, half at 4; ours batched when
    the parts were measured so) with 10 dev passes of 16 x labels examples; a test pass costs
    its tokens at the measured rate, pair tasks' inputs twice a sentence's length, LM-BFF's
    each of its demonstration sets (a query and one demonstration per label, so 1 + labels
    times the query's tokens)."""

    def train_s(steps: dict) -> float:
        return 1000 * (steps["2"] + steps["4"]) / 2

    # ours trains by rows, batched if it does; LM-BFF's AdamW is dense
    ours_steps = parts["batched_step_s"] or parts["step_s"]["rows"]
    dev_per_example = parts["dev_pass_s"] / 32
    ours = baseline = 0.0
    units = 0
    for row in TABLE2_ROWS:
        for name, (tests, labels, sentences) in TABLE2_TASKS.items():
            sets = (FEWER_DEMO_SETS.get(name, 16) * (1 + labels)) if row == "LM-BFF" else 1
            tokens = sum(tests) * parts["mean_test_tokens"] * sentences * sets
            test_s = tokens / parts["test_tokens_per_s"]
            dev_s = 10 * dev_per_example * 16 * labels * sentences
            unit = parts["load_s"] + dev_s
            ours += 5 * (6 * (unit + train_s(ours_steps)) + test_s)  # one test pass per seed
            # a process, a load, a training and a test pass per grid point
            baseline += 5 * 6 * (start_s + unit + train_s(parts["step_s"]["dense"]) + test_s)
            units += 5 * 6
    return {"units": units, "ours_s": ours, "baseline_s": baseline, "speedup": baseline / ours,
            "ours_hours": ours / 3600, "baseline_hours": baseline / 3600}  # fmt: skip


def run_child(work: Path, args) -> dict:
    env = child_env(args)
    command = [sys.executable, __file__, "--child", "--work", str(work), *sys.argv[1:]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"components failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(result: dict) -> None:
    s, p, t = result["side_by_side"], result["components"], result["table2"]
    print(
        f"\nfew-shot benchmark on {result['device']}, {result['precision']}; {result['shape_note']}; "
        f"{s['units']} units ({result['seeds']} seeds x 6 grid points), {result['steps']} "
        f"steps, dev every {result['eval_every']}, test {p['test_examples']} examples"
    )
    print(f"{'':<36}{'seconds':>10}{'CPU seconds':>13}{'units/hour':>12}")
    print(f"{'evaluate-fewshot (one process)':<36}{s['ours_s']:>10.1f}{s['ours_cpu_s']:>13.1f}"
          f"{s['ours_units_per_hour']:>12.0f}")  # fmt: skip
    print(f"{'LM-BFF-style (a process/point)':<36}{s['baseline_s']:>10.1f}"
          f"{s['baseline_cpu_s']:>13.1f}{s['baseline_units_per_hour']:>12.0f}")  # fmt: skip
    print(f"in CPU seconds: {s['speedup_cpu_time']:.2f}x")
    print(
        f"speedup {s['speedup']:.2f}x; results identical: {s['identical']} (same choices: "
        f"{s['same_choices']}, largest metric difference {s['max_metric_difference']:.2g}); "
        f"ours with --batch-units {result['batch_units']}"
    )
    rows, dense = p["step_s"]["rows"], p["step_s"]["dense"]
    print(
        f"\none unit: process start {result['process_start_s']:.2f} s, model load "
        f"{p['load_s']:.2f} s, a training step (batch 2 / 4) {1e3 * rows['2']:.1f} / "
        f"{1e3 * rows['4']:.1f} ms with --adamw rows, {1e3 * dense['2']:.1f} / "
        f"{1e3 * dense['4']:.1f} ms dense, a dev pass {1e3 * p['dev_pass_s']:.0f} ms, "
        f"a test pass {p['test_pass_s']:.2f} s ({p['test_tokens_per_s']:.0f} tokens/s)"
    )
    if p["batched_step_s"]:
        print(
            f"trained {result['batch_units']} together, a unit's share of a step: "
            f"{1e3 * p['batched_step_s']['2']:.1f} ms (batch 2) / "
            f"{1e3 * p['batched_step_s']['4']:.1f} ms (batch 4)"
        )
    print(
        f"Table 2 for one student ({t['units']} units, 1000 steps): ours "
        f"{t['ours_hours']:.1f} device-hours, LM-BFF-style {t['baseline_hours']:.1f} "
        f"({t['speedup']:.2f}x)"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--scale", type=int, help="divide widths and depths (default 4 CPU, 1 GPU)")
    p.add_argument("--seeds", type=int, default=None, help="seeds side by side (2 CPU, 5 GPU)")
    p.add_argument("--steps", type=int, help="steps per grid point side by side (100 CPU, "
                   "1000 GPU)")  # fmt: skip
    p.add_argument("--eval-every", type=int, help="dev every (steps / 10)")
    p.add_argument("--test-size", type=int, default=872, help="test examples (SST-2's 872)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--batch-units", type=int, help="ours: units trained together (1 CPU, 6 GPU)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.scale = args.scale or (1 if gpu else 4)
    args.seeds = args.seeds or (5 if gpu else 2)
    args.steps = args.steps or (1000 if gpu else 100)
    args.eval_every = args.eval_every or max(args.steps // 10, 1)
    args.batch_units = args.batch_units or (6 if gpu else 1)
    if args.child:
        print(json.dumps(components(args.work, args)))
        return

    work = Path(tempfile.mkdtemp(prefix="smash-fewshot-bench-"))
    started = time.perf_counter()
    shapes = build_workspace(work, args)
    print(f"workspace {work}: student {shapes}")
    side = side_by_side(work, args)
    print(f"side by side: ours {side['ours_s']:.1f} s, baseline {side['baseline_s']:.1f} s")
    parts = run_child(work, args)
    start_s = process_start(args)
    result = {
        "precision": args.precision,
        "batch_units": args.batch_units,
        "scale": args.scale,
        "shapes": shapes,
        "shape_note": "DistilRoBERTa's shape"
        if args.scale == 1
        else f"DistilRoBERTa scaled down {args.scale}x",
        "seeds": args.seeds,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "side_by_side": side,
        "components": parts,
        "process_start_s": start_s,
        "table2": table2(parts, start_s),
        "seconds": time.perf_counter() - started,
        "rows": [
            {"configuration": "evaluate-fewshot", "seconds": side["ours_s"],
             "units_per_hour": side["ours_units_per_hour"]},
            {"configuration": "LM-BFF-style", "seconds": side["baseline_s"],
             "units_per_hour": side["baseline_units_per_hour"]},
        ],
    }  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    print_table({**result, "device": device_name(args.device)})
    write_result(f"fewshot_{args.device}", result, args.out, args.device)


if __name__ == "__main__":
    main()
