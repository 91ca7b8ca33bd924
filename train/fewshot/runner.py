"""Run the protocol over a list of models: every (run, mode, task, seed), under one progress bar.

A :class:`Run` is one model folder evaluated at one K with one protocol: a row of the results
table, or one point of a learning curve (an export at some distillation step, or a model at
some K). Every split of every run is read and checked before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import SEEDS
from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.adapters import auto_model_class, family_of, max_sequence_length
from smash.train.fewshot.auto_prompts import AutoPrompt, check_label_words, read_auto_prompt
from smash.train.fewshot.demonstrations import (
    DEMO_MODES,
    DemoOptions,
    DemoPromptLearner,
    SentenceEmbedder,
    demo_max_length,
    demo_samples,
)
from smash.train.fewshot.encoder_head import T5EncoderClassifier
from smash.train.fewshot.learners import FinetuneLearner, PromptLearner
from smash.train.fewshot.protocol import Protocol, SeedResult, run_seed, zero_shot
from smash.train.fewshot.report import Entry
from tqdm.auto import tqdm

__all__ = ["MODES", "Run", "evaluate_models", "evaluate_runs"]

MODES = ("prompt", "zero-shot", "finetune", *DEMO_MODES)


@dataclass(frozen=True)
class Run:
    """One model folder (shown as ``name``) evaluated on K-shot splits with ``protocol``."""

    name: str
    path: str
    k: int
    protocol: Protocol


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
    demos: DemoOptions | None = None,
) -> list[Entry]:
    """Run every (model, mode, task, seed); ``models`` are ``(name, path)`` pairs."""
    runs = [Run(name, path, k, protocol) for name, path in models]
    per_run = evaluate_runs(
        runs, tasks, data, modes, seeds, templates, verbalizers, max_length, device, demos=demos
    )
    return [entry for entries in per_run for entry in entries]


def evaluate_runs(
    runs: Sequence[Run],
    tasks: Sequence[Task],
    data: str | Path,
    modes: Sequence[str],
    seeds: Sequence[int] = SEEDS,
    templates: dict[str, str] | None = None,
    verbalizers: dict[str, Sequence[str]] | None = None,
    max_length: int | None = None,
    device: str = "cpu",
    on_run_done: Callable[[int, list[Entry]], None] = lambda i, entries: None,
    demos: DemoOptions | None = None,
) -> list[list[Entry]]:
    """The entries of each run, in run order; ``on_run_done(i, entries)`` is called as soon
    as run ``i`` is finished (a curve writes its files so far, so a long series shows
    progress and a killed one keeps its finished points). ``demos`` configures the modes
    with demonstrations (``prompt-demo``, ``lmbff``); ``lmbff`` reads LM-BFF's searched
    template of every (task, K, seed) from ``demos.prompts`` before any training."""
    from transformers import AutoTokenizer

    templates, verbalizers = templates or {}, verbalizers or {}
    splits = {
        (t.name, k, s): load_kshot(data, t, k, s)
        for k in dict.fromkeys(r.k for r in runs)
        for t in tasks
        for s in seeds
    }
    demos = demos or DemoOptions()
    auto = _auto_prompts(demos, tasks, modes, [r.k for r in runs], seeds)
    embedder = None
    if demos.filter_model and any(m in DEMO_MODES for m in modes):
        embedder = SentenceEmbedder(demos.filter_model, device)
    total = sum(_grid_runs(r.protocol, modes) for r in runs) * len(tasks) * len(seeds)
    dev = torch.device(device)
    out = []
    # the bar closes on an error too, so that the error message gets a line of its own
    with tqdm(total=total, desc="few-shot", unit="run", dynamic_ncols=True) as bar:
        for i, run in enumerate(runs):
            tokenizer = AutoTokenizer.from_pretrained(run.path)
            if any(m in DEMO_MODES for m in modes):
                _check_demo_run(run, tokenizer, auto)
            entries = []
            for mode in modes:
                for task in tasks:
                    length = max_length or task.max_length
                    if mode in DEMO_MODES:
                        length = demo_max_length(task, length)
                    _check_length(
                        run.path, length, task, doubled=length != (max_length or task.max_length)
                    )
                    args = (
                        run.path,
                        tokenizer,
                        task,
                        length,
                        templates.get(task.name, task.template),
                        verbalizers.get(task.name, task.verbalizer),
                    )
                    make = None if mode in DEMO_MODES else _factory(mode, *args)
                    label = f"{run.name} {mode} {task.name}"
                    results = []
                    cache: dict = {}  # zero-shot test metrics, shared by the seeds
                    for seed in seeds:
                        bar.set_postfix_str(f"{label} seed {seed}")
                        split = splits[(task.name, run.k, seed)]
                        seed_make = make or _demo_factory(
                            mode, *args, split.train, seed, demos, embedder,
                            auto.get((task.name, run.k, seed)),
                        )  # fmt: skip
                        results.append(
                            _seed(seed_make, mode, split, task, seed, run, dev, bar, cache)
                        )
                    entries.append(
                        Entry(run.name, str(run.path), mode, task.name, task.metric, results)
                    )
            on_run_done(i, entries)
            out.append(entries)
    return out


def _seed(make, mode, split, task, seed, run, dev, bar, cache) -> SeedResult:
    """One seed of one (run, mode, task); advances ``bar`` once per training (or zero-shot)."""
    if mode == "zero-shot":
        torch.manual_seed(seed)
        result = zero_shot(make(), split, seed, run.protocol.eval_batch_size, dev, cache)
        bar.update(1)
        return result
    return run_seed(make, split, task, seed, run.protocol, dev, lambda: bar.update(1))


def _grid_runs(protocol: Protocol, modes: Sequence[str]) -> int:
    """Trainings per (task, seed) of one run: one per grid point, one for zero-shot."""
    return sum(1 if m == "zero-shot" else len(protocol.grid) for m in modes)


def _factory(
    mode: str,
    path: str,
    tokenizer,
    task: Task,
    max_length: int,
    template: str,
    verbalizer: Sequence[str],
) -> Callable[[], PromptLearner | FinetuneLearner]:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    family = family_of(AutoConfig.from_pretrained(path))
    if mode == "finetune" and family == "t5":

        def make() -> FinetuneLearner:
            model = T5EncoderClassifier(path, task.num_outputs)
            return FinetuneLearner(model, tokenizer, task, max_length)
    elif mode == "finetune":

        def make() -> FinetuneLearner:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=task.num_outputs
            )
            return FinetuneLearner(model, tokenizer, task, max_length)
    else:

        def make() -> PromptLearner:
            model = auto_model_class(family).from_pretrained(path)
            return PromptLearner(model, tokenizer, task, template, verbalizer, max_length)

    make()  # fail early on a bad template, label word or model folder
    return make


def _check_length(path: str, max_length: int, task: Task, doubled: bool = False) -> None:
    from transformers import AutoConfig

    limit = max_sequence_length(AutoConfig.from_pretrained(path))
    if max_length > limit:
        most = limit // 2 if doubled else limit
        why = " (doubled with demonstrations, as LM-BFF's --double_demo)" if doubled else ""
        raise ValueError(
            f"{task.name}: max length {max_length}{why} exceeds the {limit} positions "
            f"of {path}; pass --max-length {most} or less"
        )


def _auto_prompts(demos: DemoOptions, tasks, modes, ks, seeds) -> dict[tuple, AutoPrompt]:
    """LM-BFF's top searched prompt of every (task, K, seed) for mode ``lmbff``."""
    if "lmbff" not in modes:
        return {}
    if not demos.prompts:
        raise ValueError(
            "--mode lmbff needs --lmbff-prompts DIR, a checkout of princeton-nlp/LM-BFF "
            "holding auto_template/ and auto_label_mapping/"
        )
    return {
        (t.name, k, s): read_auto_prompt(demos.prompts, t, k, s, words=demos.auto_words)
        for k in dict.fromkeys(ks)
        for t in tasks
        for s in seeds
    }


def _check_demo_run(run: Run, tokenizer, auto: dict[tuple, AutoPrompt]) -> None:
    """Before training: demonstrations need a masked LM; searched label words must be one
    token each for this model's tokenizer (FILE:LINE: ...)."""
    from transformers import AutoConfig

    if family_of(AutoConfig.from_pretrained(run.path)) == "t5":
        raise ValueError(
            f"{run.path}: demonstrations (--mode {' / '.join(DEMO_MODES)}) are not supported "
            "for T5 (the paper evaluates T5 with prompts only)"
        )
    for prompt in auto.values():
        if prompt.words:
            check_label_words(tokenizer, prompt.words, prompt.words_source)


def _demo_factory(
    mode: str,
    path: str,
    tokenizer,
    task: Task,
    max_length: int,
    template: str,
    verbalizer: Sequence[str],
    support,
    seed: int,
    demos: DemoOptions,
    embedder: SentenceEmbedder | None,
    auto: AutoPrompt | None,
) -> Callable[[], DemoPromptLearner]:
    """Learners with demonstrations for one seed: ``prompt-demo`` with the task's (or the
    user's) template, ``lmbff`` with the seed's searched template (and label words)."""
    from transformers import AutoModelForMaskedLM

    if mode == "lmbff":
        template = auto.template
        verbalizer = auto.words or verbalizer

    def make() -> DemoPromptLearner:
        model = AutoModelForMaskedLM.from_pretrained(path)
        return DemoPromptLearner(
            model, tokenizer, task, template, verbalizer, max_length, support, seed,
            demo_samples(task, demos.samples), embedder, demos.filter_rate,
        )  # fmt: skip

    make()  # fail early on a template, label word or split that does not fit
    return make
