"""``evaluate-fewshot``: few-shot evaluation of one or more model folders, LM-BFF protocol.

    evaluate-fewshot --model before/ --model after/ --name before after \\
        --tasks SST-2 MNLI STS-B --data data/k-shot --mode prompt zero-shot --out results/

Learning curves (the paper's Figures 2 and 4) against distillation steps or K:

    evaluate-fewshot --curve steps --model 'runs/ce/exports/student_step*' \\
        --baseline students/before --tasks MNLI --data data/k-shot --out curve/
    evaluate-fewshot --curve k --k 16 32 64 128 256 --model before/ --model after/ \\
        --tasks SST-2 --data data/k-shot --out curve-k/

Every (task, K, seed) split is read and checked before any training starts. The grid, steps,
seeds and K are flags so that the same command runs tiny on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from smash.precompute.kshot.data import DataError
from smash.precompute.kshot.splits import SEEDS
from smash.precompute.kshot.tasks import TASKS, get_task, per_task
from smash.precompute.shared.folder_lock import hold_folder
from smash.precompute.shared.model_paths import require_folder_or_hub_name
from smash.store.errors import StoreError
from smash.store.flags import SEED, FlagError, FlagParser, integer, number, shard
from smash.train.fewshot.auto_prompts import read_auto_prompt
from smash.train.fewshot.cpu_allocator import keep_freed_memory
from smash.train.fewshot.curves import (
    Point,
    k_points,
    require_matplotlib,
    series_name,
    step_points,
    write_curve,
)
from smash.train.fewshot.demonstrations import DEMO_MODES, DemoOptions
from smash.train.fewshot.distill import DistillSettings
from smash.train.fewshot.ipet.soft_labels import IPET_MODES, IpetOptions
from smash.train.fewshot.learners import TRUNCATIONS
from smash.train.fewshot.ledger import LEDGER_NAME, Ledger
from smash.train.fewshot.paper import PAPER_MODELS, parse_compare
from smash.train.fewshot.protocol import PRECISIONS, Protocol, paper_max_steps
from smash.train.fewshot.report import write_report
from smash.train.fewshot.row_adamw import ADAMW_KINDS
from smash.train.fewshot.runner import MODES, Run, evaluate_models, evaluate_runs
from smash.train.fewshot.soft_prompts import (
    PPT_LEARNING_RATES,
    SOFT_PROMPT_MODES,
    SoftPromptOptions,
    parse_prompt_folders,
)
from smash.train.soft_prompt import PPT_LENGTH

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (2, with one line on stderr, on bad input).

    Bad input is an unknown task, a missing or malformed data file (``FILE:LINE: ...``), a
    model folder that cannot be loaded, or a template, label word or length that does not fit;
    for a curve also a glob that matches nothing, an export without a step, or no matplotlib.
    """
    p = _parser()
    try:  # a refused flag or combination of flags: one line, exit 2, before anything runs
        args = p.parse_args(argv)
        _check_flags(p, args)
    except FlagError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one weight-loading bar per grid point would bury ours
    if torch.device(args.device).type == "cpu":
        keep_freed_memory()  # each step's dense vocabulary gradients: no fresh pages each time

    try:
        steps = _steps_per_k(args)
        tasks = [get_task(t) for t in args.tasks]
        options = {
            "templates": per_task(args.template, "--template"),
            "verbalizers": {
                t: w.split(",") for t, w in per_task(args.verbalizer, "--verbalizer").items()
            },
            "max_length": args.max_length,
            "truncation": args.truncation,
            "device": args.device,
            "test_every_point": args.test_every_point,
            "batch_units": args.batch_units,
            "shard": args.shard,
            "executor": _executor(args),
            "distill": DistillSettings(
                args.distill_store,
                args.augmented_data,
                args.augmented_store,
                args.distill_weight,
                args.distill_temperature,
                args.distill_tail,
            ),
            "ipet": IpetOptions(args.ipet_store),
            "soft_prompts": SoftPromptOptions(
                parse_prompt_folders(args.ppt_prompt), args.prompt_length or PPT_LENGTH
            ),
            "demos": DemoOptions(
                samples=args.demo_samples,
                filter_model=args.demo_filter_model,
                filter_rate=0.5 if args.demo_filter_rate is None else args.demo_filter_rate,
                prompts=args.lmbff_prompts,
                auto_words=args.lmbff_words == "auto",
            ),
        }
        _check_demo_paths(args)
        config = {
            **vars(args),
            **_lmbff_prompts_read(args, tasks),
            **dataclasses.asdict(_protocol(args, steps[args.k[0]])),
            "tasks": [t.name for t in tasks],
            "max_steps_per_k": {str(k): v for k, v in steps.items()},
        }
        run = _curve if args.curve else _table
        with _hold(args):  # each ledger has one writer at a time
            written = run(args, tasks, steps, options, config)
    except (DataError, StoreError, ValueError, OSError) as err:  # DataError: FILE:LINE: ...
        print(f"evaluate-fewshot: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if args.shard:
        i, n = args.shard
        print(f"evaluate-fewshot: shard {i}/{n} is done ({Path(args.out) / _ledger_name(args)}); "
              "once every shard is, the same command without --shard, with --resume, merges "
              "them and writes the report", file=sys.stderr)  # fmt: skip
    return 0


def _parser() -> FlagParser:
    p = FlagParser(prog="evaluate-fewshot", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        action="append",
        nargs="+",
        required=True,
        help="model folder (repeatable); with --curve steps, one series of exports per --model: "
        "a quoted glob such as 'runs/ce/exports/student_step*' or several folders",
    )
    p.add_argument(
        "--name",
        nargs="+",
        help="a display name per --model (default: folder name; for a steps series the run "
        "folder above exports/)",
    )
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--data", required=True, help="k-shot root holding TASK/K-SEED folders")
    p.add_argument("--mode", nargs="+", choices=MODES, default=["prompt"])
    p.add_argument(
        "--out",
        default="fewshot-results",
        help="folder for results.json/.md/.png (curve.json/.md/.png with --curve)",
    )
    p.add_argument(
        "--compare-paper",
        nargs="*",
        metavar="NAME=MODEL",
        help="put each row beside the paper's published one (Table 2; Tables 3, 5 for iPET; Table 4 "
        "for T5), in "
        f"Table 2's column order: which paper model each --name stands for ({', '.join(PAPER_MODELS)}), "
        "e.g. before=distilroberta-base after=smash; bare, models named as the paper's",
    )
    p.add_argument(
        "--curve",
        choices=("steps", "k"),
        help="draw a learning curve: the metric against each export's distillation step, or "
        "against K (one point per --k value)",
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="with --curve steps: a model drawn as a dashed horizontal line (repeatable)",
    )
    p.add_argument("--baseline-name", nargs="+", help="a display name per --baseline")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the evaluation recorded in OUT/points.jsonl (same settings): finished "
        "grid points are not trained again; new models, exports, tasks or seeds are added",
    )
    p.add_argument(
        "--k",
        nargs="+",
        type=integer(1),
        default=[16],
        help="examples per label; several values with --curve k",
    )
    p.add_argument("--seeds", nargs="+", type=SEED, default=list(SEEDS))
    p.add_argument("--lrs", nargs="+", type=number(above=0), default=[1e-5, 2e-5, 5e-5])
    p.add_argument("--batch-sizes", nargs="+", type=integer(1), default=[2, 4])
    p.add_argument(
        "--max-steps",
        type=integer(1),
        help="training steps per grid point (default: the paper's for K: 1000 for K=16 and "
        "32, 2000 for 64 and 128, 4000 for 256; 1000 for other K)",
    )
    p.add_argument(
        "--k-steps",
        action="append",
        default=[],
        metavar="K=STEPS",
        help="training steps for one K (repeatable), over --max-steps and the paper's",
    )
    p.add_argument("--eval-every", type=integer(1), default=100)
    p.add_argument(
        "--eval-batch-size",
        type=integer(1),
        default=256,
        help="dev and test passes: at most this many examples per batch (256)",
    )
    p.add_argument(
        "--eval-token-budget",
        type=integer(1),
        default=16384,
        help="dev and test passes: length-sorted batches of at most this many padded tokens "
        "(16384; an example of S demonstration sets counts S times)",
    )
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="dev and test passes under autocast to bf16 or fp16 (CUDA only); training and "
        "the default stay fp32",
    )
    p.add_argument(
        "--adamw",
        choices=ADAMW_KINDS,
        default="rows",
        help="rows (the default): on a CPU, AdamW updates only the vocabulary rows that have "
        "had a gradient, the same update without weight decay (the protocol's) and a fraction "
        "of the work (on a GPU, torch.optim.AdamW); dense: torch.optim.AdamW over every row, "
        "as LM-BFF's HF Trainer",
    )
    p.add_argument(
        "--batch-units",
        type=integer(1),
        default=1,
        help="train up to this many units together, their weights stacked (grid points and "
        "seeds of one mode, task and batch size; 1, the default: one at a time). Equal to "
        "one at a time up to fp32 round-off with dropout off; each has its own dropout stream",
    )
    p.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="evaluate only every N-th (model, mode, task) from the I-th on, into a ledger of "
        "its own (OUT/points.shard-I-of-N.jsonl), for a job array; once every shard is done, "
        "the same command without --shard, with --resume, merges them and writes the report",
    )
    g = p.add_argument_group(
        "Ray (pip install 'smash-distill[ray]'): every job a Ray task; the driver alone writes "
        "the ledger"
    )
    g.add_argument("--ray", action="store_true", help="run the jobs as Ray tasks (a local Ray "
                   "unless --ray-address)")  # fmt: skip
    g.add_argument("--ray-address", metavar="ADDR", help="a Ray cluster's address (implies --ray)")
    g.add_argument(
        "--gpus-per-unit",
        type=number(minimum=0, maximum=1),
        help="the share of a GPU a unit's task takes (0.25: four on a GPU; a job of several "
        "units takes as many shares, one GPU at most); default 1 with a CUDA --device, else 0",
    )
    g.add_argument(
        "--cpus-per-unit", type=number(above=0), help="the CPUs a task takes (default 1)"
    )
    p.add_argument(
        "--test-every-point",
        action="store_true",
        help="test every grid point's best checkpoint, as LM-BFF does (the ledger then holds "
        "every point's test metrics); by default only the point each seed chooses is tested",
    )
    p.add_argument("--max-length", type=integer(1), help="override every task's max length")
    p.add_argument(
        "--truncation",
        choices=TRUNCATIONS,
        default="sentences",
        help="how a prompt longer than the max length is shortened: 'sentences' removes "
        "sentence tokens only, longest first, demonstrations' before the query's (template "
        "words, label words and mask stay); 'lmbff' cuts the whole input's tail as LM-BFF's "
        "code does, to reproduce its rows (not with the distill modes)",
    )
    p.add_argument(
        "--template",
        action="append",
        default=[],
        metavar="TASK=SPEC",
        help="LM-BFF template for a task, e.g. 'SST-2=*cls**sent_0*_It_was*mask*.*sep+*'",
    )
    p.add_argument(
        "--verbalizer",
        "--words",
        action="append",
        default=[],
        metavar="TASK=W1,W2",
        help="label words (the verbalizer) for a task in label order, without a space, e.g. "
        "SST-2=bad,good (' '+word must be one token)",
    )
    p.add_argument(
        "--demo-samples",
        type=integer(1),
        help="with prompt-demo/lmbff: demonstration sets per evaluated example, whose logits "
        "are averaged (default: LM-BFF's num_sample, 16; 4 for MNLI, SNLI, QQP)",
    )
    p.add_argument(
        "--demo-filter-model",
        metavar="PATH",
        help="with prompt-demo/lmbff: keep as demonstration candidates only the examples most "
        "similar to the query, by the cosine of this model's mean-pooled last hidden states "
        "(LM-BFF: Sentence-BERT roberta-large-nli-stsb-mean-tokens)",
    )
    p.add_argument(
        "--demo-filter-rate",
        type=number(above=0, maximum=1),
        help="with --demo-filter-model: the fraction of each label's candidates kept (0.5)",
    )
    p.add_argument(
        "--lmbff-prompts",
        metavar="DIR",
        help="with --mode lmbff: a checkout of princeton-nlp/LM-BFF; the top line of "
        "auto_template/TASK/K-SEED.sort.txt is each split's template",
    )
    p.add_argument(
        "--lmbff-words",
        choices=("manual", "auto"),
        help="with --mode lmbff: the task's label words (manual, default, as LM-BFF's reported "
        "runs) or the top line of auto_label_mapping/TASK/K-SEED.sort.txt (auto)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = p.add_argument_group(
        "distill, distill-bt10 (paper 4.1): prompt-based fine-tuning + weight * soft CE (Eq. 1) "
        "against the teacher's stored top-k + tail at <mask>"
    )
    g.add_argument(
        "--distill-store",
        help="root of the k-shot stores over --data (precompute-teacher --task kshot): "
        "STORE/<task folder>/",
    )
    g.add_argument("--augmented-data", help="distill-bt10: make-augment's k-shot root")
    g.add_argument("--augmented-store", help="distill-bt10: the k-shot stores over it")
    g.add_argument(
        "--distill-weight", type=number(minimum=0), default=1.0, help="the soft term's weight (1)"
    )
    g.add_argument(
        "--distill-temperature",
        type=number(above=0),
        default=1.0,
        help="on student and teacher (1)",
    )
    g.add_argument(
        "--distill-tail",
        choices=("bucket", "renorm", "uniform"),
        default="bucket",
        help="the teacher's mass outside its top-k (smash.kernels.soft_ce; as train-student)",
    )
    g = p.add_argument_group(
        "ppt, prompt-tuning (paper 4.1, Vanilla PPT): tune only a soft prompt, the model frozen"
    )
    g.add_argument(
        "--ppt-prompt",
        action="extend",
        nargs="+",
        default=[],
        metavar="[GROUP=]DIR",
        help="ppt: a pre-trained prompt (train-student --config paper-ppt export) for the "
        "sentence-pair or the sentiment (single-sentence) tasks, e.g. sentence-pair=runs/ppt-"
        "pairs/student sentiment=runs/ppt-sent/student; DIR alone: for every task",
    )
    g.add_argument(
        "--prompt-length",
        type=integer(1),
        help=f"prompt-tuning: soft-prompt vectors, sampled from the vocabulary ({PPT_LENGTH})",
    )
    g.add_argument(
        "--prompt-tuning-lrs",
        nargs="+",
        type=number(above=0),
        help="the learning rates these modes search (default PPT's: "
        f"{' '.join(f'{lr:g}' for lr in PPT_LEARNING_RATES)}); --lrs is the other modes'",
    )
    g = p.add_argument_group(
        "ipet, ipet-pt (paper 4.3, Tables 3 and 5): iPET's final classifier on its soft labels"
    )
    g.add_argument(
        "--ipet-store",
        metavar="DIR",
        help="run-ipet's OUT/store: the soft labels of every task's unlabelled set (STORE/<task "
        "folder>/); ipet trains a sequence classifier on them, ipet-pt the prompt",
    )
    return p


def _check_flags(p: FlagParser, args: argparse.Namespace) -> None:
    """Flag combinations that cannot work (``p.error`` raises FlagError)."""
    _check_repeats(p, args)
    if len(args.k) > 1 and args.curve != "k":
        p.error("--k takes several values only with --curve k")
    if args.compare_paper is not None and args.curve:
        p.error("--compare-paper compares a results table, not a --curve")
    if args.baseline and args.curve != "steps":
        p.error("--baseline draws a reference line on a --curve steps plot")
    if args.baseline_name and len(args.baseline_name) != len(args.baseline):
        p.error(f"--baseline-name gives {len(args.baseline_name)} names for "
                f"{len(args.baseline)} baselines")  # fmt: skip
    demo_flags = {"--demo-samples": args.demo_samples, "--demo-filter-model":
                  args.demo_filter_model, "--demo-filter-rate": args.demo_filter_rate}  # fmt: skip
    for flag, value in demo_flags.items():
        if value is not None and not set(args.mode) & set(DEMO_MODES):
            p.error(f"{flag} applies to --mode {' or '.join(DEMO_MODES)}")
    for flag, value in {"--lmbff-prompts": args.lmbff_prompts,
                        "--lmbff-words": args.lmbff_words}.items():  # fmt: skip
        if value is not None and "lmbff" not in args.mode:
            p.error(f"{flag} applies to --mode lmbff")
    if "lmbff" in args.mode and args.lmbff_prompts is None:
        p.error("--mode lmbff needs --lmbff-prompts DIR (a checkout of princeton-nlp/LM-BFF)")
    soft = {"--ppt-prompt": (args.ppt_prompt, ("ppt",)),
            "--prompt-length": (args.prompt_length, ("prompt-tuning",)),
            "--prompt-tuning-lrs": (args.prompt_tuning_lrs, SOFT_PROMPT_MODES)}  # fmt: skip
    for flag, (value, modes) in soft.items():
        if value and not set(args.mode) & set(modes):
            p.error(f"{flag} applies to --mode {' or '.join(modes)}")
    if args.ipet_store is not None and not set(args.mode) & set(IPET_MODES):
        p.error(f"--ipet-store applies to --mode {' or '.join(IPET_MODES)}")
    if set(args.mode) & set(IPET_MODES) and args.ipet_store is None:
        p.error("--mode ipet / ipet-pt needs --ipet-store DIR (run-ipet's OUT/store)")
    if "ppt" in args.mode and not args.ppt_prompt:
        p.error("--mode ppt needs --ppt-prompt [GROUP=]DIR (train-student --config paper-ppt)")
    _check_ray(p, args)
    if args.precision != "fp32" and not args.device.startswith("cuda"):
        p.error(f"--precision {args.precision} needs a CUDA --device (autocast runs on CUDA "
                f"only), got --device {args.device}")  # fmt: skip
    if args.demo_filter_rate is not None and not args.demo_filter_model:
        p.error("--demo-filter-rate takes effect with --demo-filter-model only")
    groups = len(args.model) if args.curve == "steps" else sum(map(len, args.model))
    if args.name and len(args.name) != groups:
        what = "series (one per --model)" if args.curve == "steps" else "models"
        p.error(f"--name gives {len(args.name)} names for {groups} {what}")


def _check_ray(p: FlagParser, args: argparse.Namespace) -> None:
    """The Ray flags: with --ray only, not with --shard, and a GPU share on CUDA."""
    args.ray = args.ray or args.ray_address is not None
    for flag, value in {"--gpus-per-unit": args.gpus_per_unit,
                        "--cpus-per-unit": args.cpus_per_unit}.items():  # fmt: skip
        if value is not None and not args.ray:
            p.error(f"{flag} applies to --ray")
    if args.ray and args.shard:
        p.error("--shard splits the evaluation for a job array; --ray runs all of it on a "
                "cluster: give one of them")  # fmt: skip
    if args.ray and args.device.startswith("cuda") and args.gpus_per_unit == 0:
        p.error(f"--device {args.device} needs --gpus-per-unit above 0 under --ray")


def _check_repeats(p: FlagParser, args: argparse.Namespace) -> None:
    """A list flag's value given twice is refused, naming it: a seed would count twice in the
    mean, a grid point train twice, or the last of two values for one task or K win."""

    def folder(path: str) -> str:
        return str(Path(path).resolve()) if Path(path).is_dir() else path

    def task(item: str) -> str:  # the TASK (or K) of TASK=VALUE
        return item.partition("=")[0]

    def named(kind: str) -> Callable[[str], str]:
        return lambda item: f"{kind}{task(item)}"

    per_task = (lambda item: task(item).lower(), named("task "))
    lists = {
        "--model": ([m for group in args.model for m in group], folder, str),
        "--tasks": (args.tasks, str.lower, str),
        "--mode": (args.mode, str, str),
        "--k": (args.k, int, str),
        "--seeds": (args.seeds, int, str),
        "--lrs": (args.lrs, float, "{:g}".format),
        "--prompt-tuning-lrs": (args.prompt_tuning_lrs or [], float, "{:g}".format),
        "--batch-sizes": (args.batch_sizes, int, str),
        "--baseline": (args.baseline, folder, str),
        "--template": (args.template, *per_task),
        "--verbalizer": (args.verbalizer, *per_task),
        "--k-steps": (args.k_steps, task, named("K=")),
    }
    for flag, (values, key, show) in lists.items():
        keys = [key(v) for v in values]
        for i, k in enumerate(keys):
            if k in keys[:i]:
                p.error(f"{flag} {show(values[i])} is given twice: give each once")


def _steps_per_k(args: argparse.Namespace) -> dict[int, int]:
    """Training steps for each K: --k-steps, else --max-steps, else the paper's."""
    given = args.max_steps
    steps = {k: given if given is not None else paper_max_steps(k) for k in args.k}
    for item in args.k_steps:
        k, sep, value = item.partition("=")
        if not (sep and k.isdigit() and value.isdigit() and int(value) > 0):
            raise ValueError(f"--k-steps {item!r}: expected K=STEPS, e.g. 64=2000")
        if int(k) not in steps:
            raise ValueError(f"--k-steps {item!r}: K={k} is not among --k")
        steps[int(k)] = int(value)
    return steps


def _protocol(args: argparse.Namespace, max_steps: int) -> Protocol:
    return Protocol(
        learning_rates=tuple(args.lrs),
        batch_sizes=tuple(args.batch_sizes),
        max_steps=max_steps,
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        soft_prompt_learning_rates=tuple(args.prompt_tuning_lrs or PPT_LEARNING_RATES),
        eval_token_budget=args.eval_token_budget,
        precision=args.precision,
        adamw=args.adamw,
    )


def _table(args, tasks, steps, options, config) -> list[Path]:
    """One K, every model: results.json/.md/.png."""
    models = [m for group in args.model for m in group]
    for model in models:
        require_folder_or_hub_name("--model", model)
    names = args.name or [Path(m).name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"two models are named {repeated[0]!r} (one row each): give each a name with --name"
        )
    paper = None if args.compare_paper is None else parse_compare(args.compare_paper, names)
    k = args.k[0]
    entries = evaluate_models(
        list(zip(names, models)),
        tasks,
        args.data,
        args.mode,
        _protocol(args, steps[k]),
        args.seeds,
        k,
        **options,
        ledger=_ledger(args, config),
    )
    if args.shard:  # the report is the merging run's
        return []
    return write_report(args.out, entries, {**config, "k": k}, paper)


def _curve(args, tasks, steps, options, config) -> list[Path]:
    """Every point of the curve, its files rewritten after each point."""
    require_matplotlib()
    points = _points(args, steps)
    out = Path(args.out)
    finished = []

    def done(i: int, entries) -> None:
        finished.append((points[i], entries))
        if not args.shard:  # the curve is the merging run's
            write_curve(out, args.curve, finished, config)

    runs = [pt.run for pt in points]
    ledger = _ledger(args, config)
    evaluate_runs(runs, tasks, args.data, args.mode, args.seeds, **options, ledger=ledger,
                  on_run_done=done)  # fmt: skip
    return [] if args.shard else write_curve(out, args.curve, finished, config)


def _lmbff_prompts_read(args: argparse.Namespace, tasks) -> dict:
    """For results.json: the searched prompt each (task, K, seed) of mode lmbff uses, and the
    file lines it came from."""
    if "lmbff" not in args.mode:
        return {}
    words = args.lmbff_words == "auto"
    return {
        "lmbff_prompts_read": {
            f"{t.name} {k}-{s}": dataclasses.asdict(
                read_auto_prompt(args.lmbff_prompts, t, k, s, words=words)
            )
            for t in tasks
            for k in args.k
            for s in args.seeds
        }
    }


def _check_demo_paths(args: argparse.Namespace) -> None:
    """The demonstration filter's model and LM-BFF's folder exist; a note on stderr when
    ``lmbff`` samples demonstrations unfiltered."""
    if args.demo_filter_model:
        require_folder_or_hub_name("--demo-filter-model", args.demo_filter_model)
    if args.lmbff_prompts and not Path(args.lmbff_prompts).is_dir():
        raise FileNotFoundError(f"--lmbff-prompts {args.lmbff_prompts}: no such folder")
    if "lmbff" in args.mode and not args.demo_filter_model:
        print(
            "evaluate-fewshot: note: --mode lmbff without --demo-filter-model samples "
            "demonstrations unfiltered; LM-BFF's reported runs filter them (Sentence-BERT)",
            file=sys.stderr,
        )


# What every unit of OUT/points.jsonl shares: how units are trained and evaluated. What a unit
# reads (model, split, prompt, stores...) is part of its key instead, by content, so a --resume
# may add models, modes, tasks, seeds and grid values, and a changed input makes new units.
# --adamw is not one: both kinds make the same update.
_SETTINGS = (
    "batch_units",
    "eval_every",
    "eval_batch_size",
    "eval_token_budget",
    "precision",
    "max_grad_norm",
    "device",
)


def _executor(args: argparse.Namespace) -> Callable[[], object] | None:
    """What makes the Ray executor, under --ray (the jobs run in this process otherwise)."""
    if not args.ray:
        return None
    from smash.train.fewshot.ray_executor import RayExecutor

    gpus = args.gpus_per_unit
    if gpus is None:
        gpus = 1.0 if args.device.startswith("cuda") else 0.0
    return functools.partial(RayExecutor, args.ray_address, gpus, args.cpus_per_unit or 1.0)


_SHARD_LEDGER = "points.shard-{}-of-{}.jsonl"  # a shard's own ledger, beside LEDGER_NAME


def _ledger_name(args: argparse.Namespace) -> str:
    return LEDGER_NAME if args.shard is None else _SHARD_LEDGER.format(*args.shard)


def _ledger(args: argparse.Namespace, config: dict) -> Ledger:
    """This run's ledger: a shard reads its own; a whole run also reads the shards'."""
    settings = {k: config[k] for k in _SETTINGS}
    out = Path(args.out)
    others = [] if args.shard else sorted(out.glob(_SHARD_LEDGER.format("*", "*")))
    return Ledger(out / _ledger_name(args), settings, args.resume, others)


@contextlib.contextmanager
def _hold(args: argparse.Namespace) -> Iterator[None]:
    """The folder lock: a whole run holds OUT alone; shards hold it together, each holding
    its own ledger alone."""
    if args.shard is None:
        with hold_folder(args.out, "evaluate-fewshot"):
            yield
        return
    i, n = args.shard
    command = f"evaluate-fewshot --shard {i}/{n}"
    with (
        hold_folder(args.out, command, shared=True),
        hold_folder(args.out, command, name=f".smash.shard-{i}-of-{n}.lock"),
    ):
        yield


def _points(args: argparse.Namespace, steps: dict[int, int]) -> list[Point]:
    """The curve's points in evaluation (and legend) order; line names must not repeat."""
    make = _step_curve_points if args.curve == "steps" else _k_curve_points
    names, points = make(args, steps)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"two lines are named {repeated[0]!r}; give each a name with --name "
            "(and --baseline-name)"
        )
    return points


def _step_curve_points(args, steps) -> tuple[list[str], list[Point]]:
    """Each --model's exports by step, then the --baseline models (x = None)."""
    k = args.k[0]
    protocol = _protocol(args, steps[k])
    names = list(args.name or [series_name(patterns) for patterns in args.model])
    points = [
        pt
        for name, patterns in zip(names, args.model)
        for pt in step_points(name, patterns, k, protocol)
    ]
    for path in args.baseline:
        require_folder_or_hub_name("--baseline", path)
    base_names = args.baseline_name or [Path(b).name for b in args.baseline]
    points += [
        Point(name, None, Run(name, path, k, protocol))
        for name, path in zip(base_names, args.baseline)
    ]
    return names + base_names, points


def _k_curve_points(args, steps) -> tuple[list[str], list[Point]]:
    """Each model at every K, K ascending."""
    models = [m for group in args.model for m in group]
    for model in models:
        require_folder_or_hub_name("--model", model)
    names = args.name or [Path(m).name for m in models]
    protocol = _protocol(args, steps[args.k[0]])
    points = [
        pt
        for name, path in zip(names, models)
        for pt in k_points(name, path, args.k, steps, protocol)
    ]
    return names, points


if __name__ == "__main__":
    raise SystemExit(main())
