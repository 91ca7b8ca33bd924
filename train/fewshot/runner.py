"""Run the protocol over a list of models: every (run, mode, task, seed), under one progress bar.

A :class:`Run` is one model folder evaluated at one K with one protocol: a row of the results
table, or one point of a learning curve (an export at some distillation step, or a model at
some K). Every split of every run is read and checked before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import SEEDS
from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.adapters import auto_model_class, family_of, max_sequence_length
from smash.train.fewshot.auto_prompts import AutoPrompt, check_label_words, read_auto_prompt
from smash.train.fewshot.checkpoints import CHECKPOINTS_NAME, BestCheckpoints
from smash.train.fewshot.demonstrations import (
    DEMO_MODES,
    DemoOptions,
    DemoPromptLearner,
    SentenceEmbedder,
    demo_max_length,
    demo_samples,
)
from smash.train.fewshot.distill import (
    DISTILL_MODES,
    DistillLearner,
    DistillSettings,
    prepare_distill,
)
from smash.train.fewshot.driver import Driver
from smash.train.fewshot.encoder_head import T5EncoderClassifier
from smash.train.fewshot.ipet.soft_labels import (
    IPET_MODES,
    IpetOptions,
    base_mode,
    ipet_factory,
    prepare_ipet,
)
from smash.train.fewshot.jobs import UnitWork
from smash.train.fewshot.learners import FinetuneLearner, PromptLearner
from smash.train.fewshot.ledger import Ledger, UnitKey
from smash.train.fewshot.protocol import Protocol
from smash.train.fewshot.report import Entry
from smash.train.fewshot.soft_prompts import (
    SOFT_PROMPT_MODES,
    SoftPromptOptions,
    soft_prompt_factory,
)
from smash.train.fewshot.units import Plan, Run, UnitInputs

__all__ = ["MODES", "Run", "evaluate_models", "evaluate_runs"]

MODES = ("prompt", "zero-shot", "finetune", *DISTILL_MODES, *DEMO_MODES, *SOFT_PROMPT_MODES,
         *IPET_MODES)  # fmt: skip


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
    ledger: Ledger | None = None,
    distill: DistillSettings | None = None,
    demos: DemoOptions | None = None,
    truncation: str = "sentences",
    soft_prompts: SoftPromptOptions | None = None,
    ipet: IpetOptions | None = None,
    test_every_point: bool = False,
    batch_units: int = 1,
    shard: tuple[int, int] | None = None,
    executor: Callable[[], object] | None = None,
) -> list[Entry]:
    """Run every (model, mode, task, seed); ``models`` are ``(name, path)`` pairs."""
    runs = [Run(name, path, k, protocol) for name, path in models]
    per_run = evaluate_runs(
        runs,
        tasks,
        data,
        modes,
        seeds,
        templates,
        verbalizers,
        max_length,
        device,
        ledger,
        distill,
        demos,
        truncation=truncation,
        soft_prompts=soft_prompts,
        ipet=ipet,
        test_every_point=test_every_point,
        batch_units=batch_units,
        shard=shard,
        executor=executor,
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
    ledger: Ledger | None = None,
    distill: DistillSettings | None = None,
    demos: DemoOptions | None = None,
    on_run_done: Callable[[int, list[Entry]], None] = lambda i, entries: None,
    truncation: str = "sentences",
    soft_prompts: SoftPromptOptions | None = None,
    ipet: IpetOptions | None = None,
    test_every_point: bool = False,
    batch_units: int = 1,
    shard: tuple[int, int] | None = None,
    executor: Callable[[], object] | None = None,
) -> list[list[Entry]]:
    """The entries of each run, in run order; ``on_run_done(i, entries)`` is called as soon
    as run ``i`` is finished (a curve writes its files so far, so a long series shows
    progress and a killed one keeps its finished points).

    Units already in ``ledger`` are taken from it, and a (run, mode, task) whose units are all
    there does not even load its model; every unit trained is recorded as soon as it ends.
    The distill modes read ``distill``'s stores (``distill.py``), checked for every task and
    seed before the run trains. ``demos`` configures the modes with demonstrations
    (``prompt-demo``, ``lmbff``); ``lmbff`` reads LM-BFF's searched template of every (task, K,
    seed) from ``demos.prompts`` before any training. ``truncation`` is the rule that shortens
    a prompt longer than its max length (``learners.TRUNCATIONS``); the distill modes and
    ``ipet-pt`` take only the default, the one their stores were made with. ``soft_prompts``
    configures the modes that tune a soft prompt (``ppt``, ``prompt-tuning``;
    ``soft_prompts.py``), ``ipet`` the final classifiers of iPET (``ipet``, ``ipet-pt``:
    ``ipet/soft_labels.py``). Only each seed's chosen grid point is
    tested, unless ``test_every_point`` (``driver.py``). Up to ``batch_units`` units that
    train alike train together (``batched.py``). With ``shard`` = (I, N) only every N-th
    (run, mode, task) from the I-th on is evaluated, and no run is complete unless all of its
    groups are this shard's (``Plan.groups``). ``executor()`` makes what runs the jobs
    (``driver.py``; by default they run one at a time in this process), once every input is
    checked.
    """
    from transformers import AutoTokenizer

    templates, verbalizers = templates or {}, verbalizers or {}
    distill = distill or DistillSettings()
    distill.check(modes)
    ipet = ipet or IpetOptions()
    ipet.check(modes)
    stored_prompts = (*DISTILL_MODES, "ipet-pt")
    if truncation != "sentences" and set(modes) & set(stored_prompts):
        raise ValueError(
            f"--truncation {truncation} does not apply to --mode "
            f"{' / '.join(stored_prompts)}: their stores hold prompts truncated as "
            "--truncation sentences does; evaluate them in a command of their own"
        )
    splits = {
        (t.name, k, s): load_kshot(data, t, k, s)
        for k in dict.fromkeys(r.k for r in runs)
        for t in tasks
        for s in seeds
    }
    demos = demos or DemoOptions()
    auto = _auto_prompts(demos, tasks, modes, [r.k for r in runs], seeds)

    def prompt(mode: str, task: Task, k: int, seed: int) -> tuple[str, Sequence[str], int]:
        """The template, label words and max length a mode's learner of (task, K, seed) uses."""
        template = templates.get(task.name, task.template)
        words = verbalizers.get(task.name, task.verbalizer)
        length = max_length or task.max_length
        if mode == "lmbff":
            searched = auto[(task.name, k, seed)]
            template, words = searched.template, searched.words or words
        return template, words, demo_max_length(task, length) if mode in DEMO_MODES else length

    soft_prompts = soft_prompts or SoftPromptOptions()
    inputs = UnitInputs(data, distill, demos, prompt, truncation, soft_prompts, ipet)
    plan = Plan(runs, modes, tasks, seeds, ledger, inputs, shard)
    embedder = None
    filtered = [(r, m, t) for r, m, t in plan.groups() if m in DEMO_MODES]
    if demos.filter_model and not all(plan.finished(*group) for group in filtered):
        embedder = SentenceEmbedder(demos.filter_model, device)
    # every unfinished (run, mode, task) is set up, and so checked, before any unit trains; a
    # finished one does not even load its tokenizer
    stores: dict = {}  # the distill modes' stores, read once
    setups = {}
    for run in runs:
        todo = [(m, t) for r, m, t in plan.groups() if r is run and not plan.finished(r, m, t)]
        tokenizer = AutoTokenizer.from_pretrained(run.path) if todo else None
        if any(m in DEMO_MODES for m, _ in todo):
            _check_demo_run(run, tokenizer, auto)
        for mode, task in todo:
            template, words, length = prompt(mode, task, run.k, seeds[0])
            _check_length(run.path, length, task, length != (max_length or task.max_length))
            # only lmbff's prompt depends on the seed, and lmbff builds a learner per seed
            shared = None
            if mode in SOFT_PROMPT_MODES:
                shared = soft_prompt_factory(mode, run.path, tokenizer, task, length, template,
                                             words, soft_prompts, truncation)  # fmt: skip
            elif mode not in DEMO_MODES:
                shared = _factory(base_mode(mode), run.path, tokenizer, task, length, template,
                                  words, truncation)  # fmt: skip
            for seed in seeds:
                split = splits[(task.name, run.k, seed)]
                make = shared
                if mode in DEMO_MODES:
                    template, words, length = prompt(mode, task, run.k, seed)
                    make = _demo_factory(run.path, tokenizer, task, length, template, words,
                                         split.train, seed, demos, embedder, truncation)  # fmt: skip
                elif mode in DISTILL_MODES:
                    split, labels = prepare_distill(distill, mode, task, run.k, seed, split, data,
                                                    tokenizer, template, length, stores)  # fmt: skip
                    make = _distill_factory(shared, labels, split, distill)
                elif mode in IPET_MODES:
                    split, targets = prepare_ipet(ipet, mode, task, run.k, seed, split, data,
                                                  tokenizer, template, length, stores)  # fmt: skip
                    make = ipet_factory(shared, targets, split.train)
                setups[(run.name, mode, task.name, seed)] = (make, split)
    checkpoints = BestCheckpoints(None if ledger is None else ledger.path.parent / CHECKPOINTS_NAME)

    def work_of(key: UnitKey) -> UnitWork:
        make, split = setups[(key.model, key.mode, key.task, key.seed)]
        return UnitWork(key, make, split)

    runs_jobs = executor() if executor is not None else None  # started once all is checked
    driver = Driver(plan, work_of, checkpoints, device, test_every_point, runs_jobs, batch_units)
    return driver.run(on_run_done)


def _distill_factory(make, labels, split, settings) -> Callable[[], DistillLearner]:
    """A distill mode's learner for one seed: the prompt learner with its soft labels."""
    return lambda: DistillLearner(make(), labels, split.train, settings)


def _factory(
    mode: str,
    path: str,
    tokenizer,
    task: Task,
    max_length: int,
    template: str,
    verbalizer: Sequence[str],
    truncation: str = "sentences",
) -> Callable[[], PromptLearner | FinetuneLearner]:
    """A mode's learner for one (run, task); ``truncation`` applies to prompts (standard
    fine-tuning cuts its inputs' tail, as LM-BFF does)."""
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
            return PromptLearner(
                model, tokenizer, task, template, verbalizer, max_length, truncation
            )

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
    truncation: str = "sentences",
) -> Callable[[], DemoPromptLearner]:
    """Learners with demonstrations for one seed, drawn from ``support`` (its training set):
    ``prompt-demo``'s with the task's (or the user's) template, ``lmbff``'s with the seed's
    searched template (and label words)."""
    from transformers import AutoModelForMaskedLM

    def make() -> DemoPromptLearner:
        model = AutoModelForMaskedLM.from_pretrained(path)
        return DemoPromptLearner(
            model, tokenizer, task, template, verbalizer, max_length, support, seed,
            demo_samples(task, demos.samples), embedder, demos.filter_rate,
            truncation=truncation,
        )  # fmt: skip

    make()  # fail early on a template, label word or split that does not fit
    return make
