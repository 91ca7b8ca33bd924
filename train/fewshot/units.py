"""The units of a few-shot evaluation: what each (run, mode, task, seed, grid point) is, what it
reads (by content: its key in ``OUT/points.jsonl``), and which of them are finished."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from smash.precompute.kshot.data import kshot_dir
from smash.precompute.kshot.tasks import Task
from smash.precompute.provenance import local_model_fingerprint
from smash.train.fewshot.demonstrations import DEMO_MODES, DemoOptions, demo_spec
from smash.train.fewshot.distill import DISTILL_MODES, DistillSettings
from smash.train.fewshot.ipet.soft_labels import IPET_MODES, IpetOptions, base_mode
from smash.train.fewshot.ledger import Ledger, UnitKey
from smash.train.fewshot.metrics import select_best
from smash.train.fewshot.protocol import PointResult, Protocol
from smash.train.fewshot.soft_prompts import SOFT_PROMPT_MODES, SoftPromptOptions

__all__ = ["Plan", "Run", "UnitInputs"]

# (mode, task, K, seed) -> the template, label words and max length that mode's learner uses
PromptOf = Callable[[str, Task, int, int], tuple[str, Sequence[str], int]]


@dataclass(frozen=True)
class Run:
    """One model folder (shown as ``name``) evaluated on K-shot splits with ``protocol``."""

    name: str
    path: str
    k: int
    protocol: Protocol


class UnitInputs:
    """What a unit's result depends on beyond the ledger's shared settings, by content: the
    model's files, the split's files, the prompt (template, label words, max length, sentence
    limits, truncation rule) and the mode's own inputs (the distill stores and augmented split, the
    demonstration options and template, the soft prompt, iPET's soft-label store). Part of each unit's key, so a resume after any of them changed,
    even in place, trains new units instead of reusing old ones."""

    def __init__(
        self,
        data,
        distill: DistillSettings,
        demos: DemoOptions,
        prompt: PromptOf,
        truncation: str = "sentences",
        soft_prompts: SoftPromptOptions | None = None,
        ipet: IpetOptions | None = None,
    ) -> None:
        self.data, self.distill, self.demos, self.prompt = data, distill, demos, prompt
        self.truncation, self.soft_prompts = truncation, soft_prompts or SoftPromptOptions()
        self.ipet = ipet or IpetOptions()
        self._memo: dict = {}

    def __call__(self, run: Run, mode: str, task: Task, seed: int) -> str:
        template, words, length = self.prompt(mode, task, run.k, seed)
        prompted = base_mode(mode) != "finetune"  # ipet's classifier reads no prompt
        inputs = {
            "model": self._model(run.path),
            "split": self._folder(kshot_dir(self.data, task, run.k, seed)),
            "template": template if prompted else None,
            "words": list(words) if prompted else None,
            "max_length": length,
            "limits": [task.first_sent_limit, task.other_sent_limit],
        }
        # a prompt's truncation rule; the default adds nothing, so that the units recorded
        # before there was a choice keep their keys
        if self.truncation != "sentences" and prompted:
            inputs["truncation"] = self.truncation
        if mode in DISTILL_MODES:
            d = self.distill
            bt10 = mode == "distill-bt10"
            store = Path(d.augmented_store if bt10 else d.store)
            own = store / task.dirname  # KShotStore also takes a task's store given directly
            inputs["store"] = self._folder(own if (own / "manifest.json").is_file() else store)
            inputs["loss"] = [d.weight, d.temperature, d.tail]
            if bt10:
                inputs["augmented"] = self._folder(kshot_dir(d.augmented_data, task, run.k, seed))
        if mode in SOFT_PROMPT_MODES:
            inputs["soft_prompt"] = self.soft_prompts.key(mode, task)
        if mode in IPET_MODES:
            inputs["store"] = self._folder(self.ipet.folder(task))
        if mode in DEMO_MODES:
            filter_model = self.demos.filter_model
            inputs["demos"] = [self.demos.samples, self.demos.filter_rate if filter_model else None,
                               filter_model and self._model(filter_model),
                               demo_spec(task, template, words)]  # fmt: skip
        return json.dumps(inputs, sort_keys=True)

    def _model(self, path: str) -> str:
        """A local folder's fingerprint (its config and weights), or the hub name."""
        if path not in self._memo:
            self._memo[path] = local_model_fingerprint(path) or path
        return self._memo[path]

    def _folder(self, folder: Path) -> str | None:
        """sha256 over the names and bytes of the files directly in ``folder``."""
        key = ("folder", str(folder))
        if key not in self._memo:
            files = sorted(f for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
            h = hashlib.sha256()
            for f in files:
                h.update(f.name.encode() + b"\0" + f.read_bytes())
            self._memo[key] = "sha256:" + h.hexdigest() if files else None
        return self._memo[key]


class Plan:
    """Every unit of an evaluation, which of them are finished, and progress counts for the
    bar (units are grid points; a (task, seed) is done when all of its units are recorded and
    the grid point it chooses is tested)."""

    def __init__(
        self, runs, modes, tasks, seeds, ledger: Ledger | None, inputs,
        shard: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        self.runs, self.modes, self.tasks, self.seeds = runs, modes, tasks, seeds
        self.ledger, self.inputs, self.shard = ledger, inputs, shard
        self._keys: dict[tuple, list[UnitKey]] = {}
        self._new: dict[UnitKey, PointResult] = {}
        self.total = self.done = 0
        for seed_group in self.seed_groups():
            for key in self.keys(*seed_group):
                self.total += 1
                self.done += self.get(key) is not None

    def groups(self) -> list[tuple[Run, str, Task]]:
        """Every (run, mode, task) of this evaluation (of its shard: ``shard`` = (I, N) takes
        every N-th group, from the I-th on), in evaluation order."""
        every = [(r, m, t) for r in self.runs for m in self.modes for t in self.tasks]
        if self.shard is None:
            return every
        i, n = self.shard
        return every[i - 1 :: n]

    def seed_groups(self) -> Iterator[tuple[Run, str, Task, int]]:
        """Every (run, mode, task, seed) of ``groups``, in evaluation order."""
        for run, mode, task in self.groups():
            for seed in self.seeds:
                yield run, mode, task, seed

    def keys(self, run: Run, mode: str, task: Task, seed: int) -> list[UnitKey]:
        """The units of one seed, in grid order (the order that breaks ties)."""
        memo = (run.name, run.path, run.k, run.protocol, mode, task.name, seed)
        if memo not in self._keys:
            self._keys[memo] = self._make_keys(run, mode, task, seed)
        return self._keys[memo]

    def _make_keys(self, run: Run, mode: str, task: Task, seed: int) -> list[UnitKey]:
        zero_shot = mode == "zero-shot"
        steps = 0 if zero_shot else run.protocol.max_steps  # zero-shot trains no step
        path = str(Path(run.path).resolve()) if Path(run.path).is_dir() else str(run.path)
        head = (run.name, path, run.k, steps, mode, task.name, seed)
        inputs = self.inputs(run, mode, task, seed)
        if zero_shot:
            return [UnitKey(*head, inputs=inputs)]
        return [UnitKey(*head, lr, bs, inputs) for lr, bs in run.protocol.for_mode(mode).grid]

    def get(self, key: UnitKey) -> PointResult | None:
        if key in self._new:
            return self._new[key]
        return self.ledger.get(key) if self.ledger is not None else None

    def record(self, units: list[tuple[UnitKey, PointResult, float]]) -> None:
        """Finished units (``(key, result, seconds)``), recorded in one write."""
        for key, result, _ in units:
            self._new[key] = result
        if self.ledger is not None:
            self.ledger.record_all(units)

    def record_tests(self, key: UnitKey, tests: dict[str, float], seconds: float) -> None:
        """The test metrics of a recorded unit (its seed's chosen point)."""
        self._new[key] = replace(self.get(key), tests=tests)
        if self.ledger is not None:
            self.ledger.record_tests(key, tests, seconds)

    def chosen(self, run: Run, mode: str, task: Task, seed: int) -> UnitKey | None:
        """The unit whose test metrics are the seed's (best dev, earliest on ties), once
        every unit of the seed is recorded; else None."""
        keys = self.keys(run, mode, task, seed)
        points = [self.get(key) for key in keys]
        if any(p is None for p in points):
            return None
        return keys[select_best([p.dev for p in points])]

    def seed_finished(self, run: Run, mode: str, task: Task, seed: int) -> bool:
        chosen = self.chosen(run, mode, task, seed)
        return chosen is not None and bool(self.get(chosen).tests)

    def finished(self, run: Run, mode: str, task: Task) -> bool:
        return all(self.seed_finished(run, mode, task, s) for s in self.seeds)

    def postfix(self, key: UnitKey) -> str:
        """Where the evaluation is: the unit now trained, and the (model, mode, task)
        groups and seeds already finished."""
        groups = self.groups()
        tasks_done = sum(self.finished(*g) for g in groups)
        seeds_done = sum(self.seed_finished(*g) for g in self.seed_groups())
        grid = "" if key.lr is None else f" lr {key.lr:g} bs {key.batch_size}"
        return (
            f"{key.model} {key.mode} {key.task} seed {key.seed}{grid} | done: tasks "
            f"{tasks_done}/{len(groups)}, seeds {seeds_done}/{len(groups) * len(self.seeds)}"
        )
