"""``run-ipet``'s work: the generations of PET models of every k-shot split, resumable, and the
last generation's soft labels as a keyed store.

For one split (task, K, seed) the labelled set is the split's ``train`` file and the unlabelled
set ``unlabelled_examples`` of the original training file. Generation ``g`` trains
``len(patterns) * repetitions`` models, each on the labelled set plus (from generation 1 on) the
examples its annotators of generation ``g - 1`` labelled for it (``rules.py``). Layout::

    OUT/ipet.json                               the settings (a --resume must repeat them)
    OUT/TASK/K-SEED/g<G>/p<P>-i<I>.npz          a finished model: its logits on the unlabelled
                                                set, its labelled accuracy before training
    OUT/TASK/K-SEED/g<G>/next/p<P>-i<I>.json    the next generation's new examples for it
    OUT/store/<task folder>/                    the soft labels (one shard per K and seed)

Every file is written whole under a temporary name and renamed, so a kill leaves finished
models and nothing half-written; ``--resume`` trains only the models without a file and makes
the store's missing shards. A model's seed is a function of (seed, generation, pattern,
repetition), so a resumed run trains exactly what an uninterrupted one would.

The store is the kind ``precompute-teacher --task kshot`` writes and ``--mode distill`` reads:
examples keyed by (task, K, seed, split, row) with split ``unlabelled`` and ``row`` the index in
the unlabelled set, each the student's prompt (the task's template at the student's max length)
with the ensemble's distribution over the label words at T = 1 as its "top-k" (k = the number of
labels, nothing in the tail), the sentences in ``meta`` (``texts``, ``line``) for a classifier
that reads them without the template; PET's temperature is in the manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from smash.precompute.kshot.data import Example, load_kshot
from smash.precompute.kshot.tasks import Task
from smash.precompute.kshot.teacher import KEY_FIELDS, file_sha256, split_file
from smash.precompute.kshot.unlabelled import PET_PER_LABEL, unlabelled_examples
from smash.precompute.provenance import local_model_fingerprint
from smash.precompute.shared.templates import parse_template, verbalizer_ids
from smash.store.errors import ShardError
from smash.store.fingerprint import tokenizer_record
from smash.store.manifest import ShardInfo, finalize_store
from smash.store.shards import check_shard_bytes
from smash.store.writer import StoreWriter, shard_name
from smash.train.fewshot.ipet import rules
from smash.train.fewshot.ipet.patterns import patterns_for
from smash.train.fewshot.ipet.pet import PetLearner, PetSettings, label_logits, train_pet_model

__all__ = ["IPET_TASK", "SETTINGS_NAME", "IpetSettings", "run_ipet"]

IPET_TASK = "ipet"  # the producer's ``task`` of a soft-label store
SETTINGS_NAME = "ipet.json"


@dataclass(frozen=True)
class IpetSettings:
    """What the whole run depends on (recorded in ``OUT/ipet.json``)."""

    model: str = "roberta-large"
    patterns: tuple[int, ...] = (0, 1, 2, 3)
    repetitions: int = 3
    generations: int = 3
    scale_factor: float = 5.0
    fraction: float = 0.25
    temperature: float = 2.0
    per_label: int = PET_PER_LABEL
    student_max_length: int | None = None  # the stored prompts' (default: the task's)
    pet: PetSettings = field(default_factory=PetSettings)

    @property
    def models(self) -> list[tuple[int, int]]:
        return [(p, i) for p in self.patterns for i in range(self.repetitions)]

    def check(self) -> None:
        """Refuse a generation whose models would have no annotators (PET would crash)."""
        others = len(self.models) - 1
        if self.generations > 1 and rules.annotators(others, self.fraction) < 1:
            raise ValueError(
                f"--patterns x --repetitions gives {others + 1} models per generation: at "
                f"--fraction {self.fraction:g}, round({others} x {self.fraction:g}) = 0 of the "
                "others would label each one's next training set; add patterns or repetitions"
            )


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _model_seed(seed: int, generation: int, pattern: int, repetition: int) -> int:
    return int(np.random.SeedSequence([seed, generation, pattern, repetition]).generate_state(1)[0])


@dataclass
class Split:
    """One (task, K, seed) of the run: its labelled and unlabelled examples and folder."""

    task: Task
    k: int
    seed: int
    folder: Path
    train: list[Example]
    unlabelled: list[Example]


class Generations:
    """The PET models of one split, generation by generation; ``on_model`` is called after each
    model (trained or found)."""

    def __init__(self, split: Split, settings: IpetSettings, tokenizer, device: torch.device):
        self.split, self.settings, self.tokenizer, self.device = split, settings, tokenizer, device
        self.patterns = dict(zip(settings.patterns, patterns_for(split.task, settings.patterns)))

    def file(self, generation: int, pattern: int, repetition: int, next_set: bool = False) -> Path:
        name = f"p{pattern}-i{repetition}"
        folder = self.split.folder / f"g{generation}"
        return folder / "next" / f"{name}.json" if next_set else folder / f"{name}.npz"

    def run(self, on_model: Callable[[str], None]) -> np.ndarray:
        """Every generation; returns the last one's weighted mean logits, (N, C)."""
        extra: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        for generation in range(self.settings.generations):
            outputs = {}
            for p, i in self.settings.models:
                path = self.file(generation, p, i)
                if not path.is_file():
                    self._train(generation, p, i, extra.get((p, i)), path)
                with np.load(path) as saved:
                    outputs[(p, i)] = (saved["logits"], float(saved["accuracy"]))
                on_model(f"{self.split.task.name} {self.split.k}-{self.split.seed} g{generation} "
                         f"p{p}-i{i}")  # fmt: skip
            if generation + 1 < self.settings.generations:
                extra = self._next_sets(generation, outputs)
        logits, weights = zip(*outputs.values())
        return rules.mean_logits(logits, weights)

    def _train(self, generation: int, p: int, i: int, extra, path: Path) -> None:
        from transformers import AutoModelForMaskedLM

        seed = _model_seed(self.split.seed, generation, p, i)
        torch.manual_seed(seed)
        model = AutoModelForMaskedLM.from_pretrained(self.settings.model)
        pet = self.settings.pet
        learner = PetLearner(model, self.tokenizer, self.split.task, self.patterns[p],
                             pet.max_length)  # fmt: skip
        train, unlabelled = self.split.train, self.split.unlabelled
        before = label_logits(learner, train, pet.eval_batch_size, self.device)
        accuracy = float(np.mean(before.argmax(1) == np.array([ex.label for ex in train])))
        if extra is not None:  # the examples its annotators labelled, with those labels
            indices, labels = extra
            train = train + [
                Example(unlabelled[j].texts, label, unlabelled[j].line)
                for j, label in zip(indices, labels)
            ]
        train_pet_model(learner, train, unlabelled, pet, seed, self.device)
        logits = label_logits(learner, unlabelled, pet.eval_batch_size, self.device)
        _write_atomic(path, lambda tmp: _save_npz(tmp, logits, accuracy))

    def _next_sets(self, generation: int, outputs: dict) -> dict:
        """Each model's new examples for generation ``generation + 1`` (recorded as JSON)."""
        train_labels = [int(ex.label) for ex in self.split.train]
        wanted = rules.new_per_label(train_labels, len(self.split.task.labels), generation,
                                     self.settings.scale_factor)  # fmt: skip
        rng, rng_np = rules.draw_generators(self.split.seed, generation)
        sets = {}
        for model in self.settings.models:
            others = [key for key in self.settings.models if key != model]
            indices, labels = rules.next_training_set(
                [outputs[o][0] for o in others], [outputs[o][1] for o in others], wanted,
                self.settings.fraction, rng, rng_np,
            )  # fmt: skip
            sets[model] = (indices, labels)
            record = self.file(generation, *model, next_set=True)
            if not record.is_file():
                text = json.dumps({"indices": indices, "labels": labels, "per_label": wanted})
                _write_atomic(record, lambda tmp, text=text: tmp.write_text(text + "\n"))
        return sets


def _save_npz(path: Path, logits: np.ndarray, accuracy: float) -> None:
    with open(path, "wb") as f:
        np.savez(f, logits=logits, accuracy=np.float64(accuracy))


def _check_settings(out: Path, settings: dict, resume: bool) -> None:
    """Refuse a run into a folder of another run's work, or a --resume with other settings."""
    path = out / SETTINGS_NAME
    if not path.is_file():
        _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=1) + "\n"))
        return
    if not resume:
        raise ValueError(f"{out} holds an iPET run: pass --resume to continue it, or another --out")
    found = json.loads(path.read_text())
    differ = sorted(k for k in {*found, *settings} if found.get(k) != settings.get(k))
    if differ:
        raise ValueError(
            f"{path}: made with other settings ({', '.join(differ)} differ); pass the same "
            "flags to continue it, or another --out"
        )


def run_ipet(
    out: str | Path,
    original: str | Path,
    data: str | Path,
    tasks: Sequence[Task],
    ks: Sequence[int],
    seeds: Sequence[int],
    settings: IpetSettings,
    device: torch.device,
    resume: bool = False,
) -> list[Path]:
    """Run iPET for every (task, K, seed); returns the stores written (one per task)."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    settings.check()
    out = Path(out)
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    plans = []  # every split read and checked before any training
    for task in tasks:
        for pattern in patterns_for(task, settings.patterns):
            verbalizer_ids(tokenizer, pattern.words)
        parse_template(task.template)
        for k in ks:
            for seed in seeds:
                unlabelled = unlabelled_examples(original, task, k, seed, settings.per_label)
                if not unlabelled:
                    raise ValueError(f"{task.name} {k}-{seed}: no unlabelled example is left")
                folder = out / task.dirname / f"{k}-{seed}"
                train = load_kshot(data, task, k, seed).train
                plans.append(Split(task, k, seed, folder, train, unlabelled))
    record = {**_jsonable(asdict(settings)), "tasks": [t.name for t in tasks], "k": list(ks),
              "seeds": list(seeds), "original": str(Path(original).resolve()),
              "data": str(Path(data).resolve())}  # fmt: skip
    _check_settings(out, record, resume)
    runs = [Generations(p, settings, tokenizer, device) for p in plans]
    per_split = settings.generations * len(settings.models)
    stores = []
    with tqdm(total=per_split * len(runs), desc="ipet", unit="model", dynamic_ncols=True) as bar:
        for task in tasks:
            mine = [r for r in runs if r.split.task is task]
            writer = _store_writer(out, task, mine, settings, tokenizer, data)
            done = {s.name for s in writer.manifest.shards if _intact(writer.root, s)}
            for index, generations in enumerate(mine):
                if shard_name(index) in done:  # finished in an earlier run
                    bar.update(per_split)
                    continue

                def finished(name: str) -> None:
                    bar.set_postfix_str(f"done: {name}", refresh=False)
                    bar.update(1)

                mean = generations.run(finished)
                writer.write_shard(index, _soft_examples(generations.split, mean, tokenizer,
                                                         settings))  # fmt: skip
            finalize_store(writer.root)
            stores.append(writer.root)
    return stores


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _store_writer(
    out: Path, task: Task, runs, settings: IpetSettings, tokenizer, data
) -> StoreWriter:
    length = settings.student_max_length or task.max_length
    files = {
        split_file(task, r.split.k, r.split.seed, "train"): {
            "sha256": file_sha256(Path(data) / split_file(task, r.split.k, r.split.seed, "train")),
            "unlabelled": len(r.split.unlabelled),
        }
        for r in runs
    }
    producer = {
        "task": IPET_TASK,
        "task_options": {
            "kshot_task": task.name,
            "split": "unlabelled",
            "sentence_limits": [[0, task.first_sent_limit]] if task.first_sent_limit else [],
            "files": files,
            "temperature": settings.temperature,
            "ipet": _jsonable(asdict(settings)),
        },
        "template": task.template,
        "max_length": length,
        "verbalizer": list(task.verbalizer),
        "verbalizer_ids": verbalizer_ids(tokenizer, task.verbalizer),
        "label_source": "teacher",
        "teacher": {"name": settings.model, "fingerprint": local_model_fingerprint(settings.model)},
        "example_keys": list(KEY_FIELDS),
    }
    return StoreWriter(out / "store" / task.dirname, producer=producer,
                       tokenizer=tokenizer_record(tokenizer), k=len(task.labels))  # fmt: skip


def _soft_examples(split: Split, mean: np.ndarray, tokenizer, settings: IpetSettings):
    """The store's examples of one split: the student's prompt and the ensemble's
    distribution (T = 1) over the label words."""
    task = split.task
    template = parse_template(task.template)
    limits = {0: task.first_sent_limit} if task.first_sent_limit else None
    length = settings.student_max_length or task.max_length
    prompts = template.encode_batch(
        tokenizer, [ex.texts for ex in split.unlabelled], length, limits
    )
    ids = np.asarray(verbalizer_ids(tokenizer, task.verbalizer), np.int64)
    logprobs = np.log(rules.softmax(mean))
    for row, (ex, prompt) in enumerate(zip(split.unlabelled, prompts)):
        yield {
            "input_ids": np.asarray(prompt.input_ids, np.int64),
            "mask_positions": np.asarray([prompt.mask_position], np.int64),
            "topk_ids": ids[None, :],
            "topk_logprobs": logprobs[row][None, :].astype(np.float16),
            "tail_logmass": np.asarray([-np.inf], np.float32),
            "label": int(logprobs[row].argmax()),
            "meta": {
                "task": task.name,
                "k": split.k,
                "seed": split.seed,
                "split": "unlabelled",
                "row": row,
                "line": ex.line,
                "texts": list(ex.texts),
            },
        }


def _intact(root: Path, info: ShardInfo) -> bool:
    """Whether a shard recorded as finished is the one recorded (bytes and sha256): a shard
    that is missing, cut or another run's is written again."""
    path = root / info.name
    try:
        check_shard_bytes(str(path), path.read_bytes(), info)
    except (OSError, ShardError):
        return False
    return True
