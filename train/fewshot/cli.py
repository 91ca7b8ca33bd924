"""``evaluate-fewshot``: few-shot evaluation of one or more model folders, LM-BFF protocol.

    evaluate-fewshot --model before/ --model after/ --name before after \\
        --tasks SST-2 MNLI STS-B --data data/k-shot --mode prompt zero-shot --out results/

Every (task, seed) split is read and checked before any training starts. The grid, steps,
seeds and K are flags so that the same command runs tiny on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from smash.precompute.shared.adapters import max_sequence_length
from smash.precompute.shared.model_paths import require_folder_or_hub_name
from smash.train.fewshot.data import DataError, load_kshot
from smash.train.fewshot.learners import FinetuneLearner, PromptLearner
from smash.train.fewshot.protocol import Protocol, run_seed, zero_shot
from smash.train.fewshot.report import Entry, write_report
from smash.train.fewshot.splits import SEEDS
from smash.train.fewshot.tasks import TASKS, Task, get_task
from tqdm.auto import tqdm

__all__ = ["evaluate_models", "main"]

MODES = ("prompt", "zero-shot", "finetune")


def evaluate_models(
    models: Sequence[tuple[str, str]],
    tasks: Sequence[Task],
    data: str | Path,
    modes: Sequence[str],
    protocol: Protocol,
    seeds: Sequence[int] = SEEDS,
    k: int = 16,
    templates: dict[str, str] | None = None,
    verbalizers: dict[str, Sequence[str]] | None = None,
    max_length: int | None = None,
    device: str = "cpu",
) -> list[Entry]:
    """Run every (model, mode, task, seed); ``models`` are ``(name, path)`` pairs."""
    from transformers import AutoTokenizer

    templates, verbalizers = templates or {}, verbalizers or {}
    splits = {(t.name, s): load_kshot(data, t, k, s) for t in tasks for s in seeds}
    runs_per_seed = {m: 1 if m == "zero-shot" else len(protocol.grid) for m in modes}
    total = len(models) * len(tasks) * len(seeds) * sum(runs_per_seed.values())
    # the bar closes on an error too, so that the error message gets a line of its own
    with tqdm(total=total, desc="few-shot", unit="run", dynamic_ncols=True) as bar:
        dev = torch.device(device)
        entries = []
        for name, path in models:
            tokenizer = AutoTokenizer.from_pretrained(path)
            for mode in modes:
                for task in tasks:
                    length = max_length or task.max_length
                    _check_length(path, length, task)
                    make = _factory(
                        mode,
                        path,
                        tokenizer,
                        task,
                        length,
                        templates.get(task.name, task.template),
                        verbalizers.get(task.name, task.verbalizer),
                    )
                    cache: dict = {}
                    results = []
                    for seed in seeds:
                        bar.set_postfix_str(f"{name} {mode} {task.name} seed {seed}")
                        split = splits[(task.name, seed)]
                        if mode == "zero-shot":
                            torch.manual_seed(seed)
                            results.append(
                                zero_shot(make(), split, seed, protocol.eval_batch_size, dev, cache)
                            )
                            bar.update(1)
                        else:
                            results.append(
                                run_seed(
                                    make,
                                    split,
                                    task,
                                    seed,
                                    protocol,
                                    dev,
                                    on_config_done=lambda: bar.update(1),
                                )
                            )
                    entries.append(
                        Entry(
                            model=name,
                            path=str(path),
                            mode=mode,
                            task=task.name,
                            metric=task.metric,
                            seeds=results,
                        )
                    )
    return entries


def _factory(
    mode: str,
    path: str,
    tokenizer,
    task: Task,
    max_length: int,
    template: str,
    verbalizer: Sequence[str],
) -> Callable[[], PromptLearner | FinetuneLearner]:
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    if mode == "finetune":

        def make() -> FinetuneLearner:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=task.num_outputs
            )
            return FinetuneLearner(model, tokenizer, task, max_length)
    else:

        def make() -> PromptLearner:
            model = AutoModelForMaskedLM.from_pretrained(path)
            return PromptLearner(model, tokenizer, task, template, verbalizer, max_length)

    make()  # fail early on a bad template, label word or model folder
    return make


def _check_length(path: str, max_length: int, task: Task) -> None:
    from transformers import AutoConfig

    limit = max_sequence_length(AutoConfig.from_pretrained(path))
    if max_length > limit:
        raise ValueError(
            f"{task.name}: max length {max_length} exceeds the {limit} positions "
            f"of {path}; pass --max-length {limit} or less"
        )


def _overrides(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        task, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"{flag} {item!r}: expected TASK=VALUE")
        out[get_task(task).name] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (2, with one line on stderr, on bad input).

    Bad input is an unknown task, a missing or malformed data file (``FILE:LINE: ...``), a
    model folder that cannot be loaded, or a template, label word or length that does not fit.
    """
    p = argparse.ArgumentParser(prog="evaluate-fewshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    p.add_argument("--name", nargs="+", help="a display name per --model (default: folder name)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--data", required=True, help="k-shot root holding TASK/K-SEED folders")
    p.add_argument("--mode", nargs="+", choices=MODES, default=["prompt"])
    p.add_argument("--out", default="fewshot-results", help="folder for results.json/.md/.png")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-5, 2e-5, 5e-5])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 4])
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="override every task's max length")
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
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one weight-loading bar per grid point would bury ours

    names = args.name or [Path(m).name for m in args.model]
    if len(names) != len(args.model):
        p.error(f"--name gives {len(names)} names for {len(args.model)} models")
    protocol = Protocol(
        learning_rates=tuple(args.lrs),
        batch_sizes=tuple(args.batch_sizes),
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
    )
    try:
        for model in args.model:
            require_folder_or_hub_name("--model", model)
        tasks = [get_task(t) for t in args.tasks]
        verbalizers = {
            t: w.split(",") for t, w in _overrides(args.verbalizer, "--verbalizer").items()
        }
        entries = evaluate_models(
            list(zip(names, args.model)),
            tasks,
            args.data,
            args.mode,
            protocol,
            args.seeds,
            args.k,
            _overrides(args.template, "--template"),
            verbalizers,
            args.max_length,
            args.device,
        )
        config = {**vars(args), **dataclasses.asdict(protocol), "tasks": [t.name for t in tasks]}
        written = write_report(args.out, entries, config)
    except (DataError, ValueError, OSError) as err:  # DataError: FILE:LINE: what is wrong
        print(f"evaluate-fewshot: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
