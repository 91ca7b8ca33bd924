"""The ``distill`` and ``distill-bt10`` baselines of SMASH's Table 2 (paper section 4.1).

Prompt-based fine-tuning plus the soft-label loss of Eq. 1 at ``<mask>`` between the teacher's
distribution on the same input and the student's, over the whole vocabulary::

    loss = CE(label-word logits, gold) + weight * soft_CE(student logits (B, V), teacher)

The teacher is not loaded: its top-k and exact tail mass come from a k-shot store that
``precompute-teacher --task kshot`` wrote (``precompute/kshot/teacher.py``), and the soft term
is ``smash.kernels.soft_cross_entropy`` (the PyTorch reference on the CPU, the Triton kernel on
CUDA), the loss ``train-student`` distils with, so top-k + tail mean what they mean there.
``distill-bt10`` trains on a split folder that ``make-augment`` grew by back-translation
(originals + copies; each copy keeps its original's gold label and gets the teacher's soft
label from a store made over the augmented files); dev and test are the original ones.

A store is refused, naming it and what is wrong, when it is not a k-shot store of the task,
holds no soft labels for the training file (another seed, K or task), was made from another
copy of that file, or with another tokenizer, template, max length or sentence limits than
the student's prompt: the stored prompt ids must equal the student's, example by example.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from smash.kernels.soft_ce import soft_cross_entropy
from smash.precompute.kshot.augment import read_augment_record
from smash.precompute.kshot.data import Example, KShotData, kshot_dir, load_kshot
from smash.precompute.kshot.tasks import Task
from smash.precompute.kshot.teacher import KEY_FIELDS, KSHOT_TASK, file_sha256, split_file
from smash.precompute.shared.templates import parse_template
from smash.store.errors import StoreError
from smash.store.fingerprint import check_tokenizer
from smash.store.manifest import load_manifest, manifest_location
from smash.store.shards import read_shard
from smash.train.fewshot.learners import Batch, Features, PromptLearner

__all__ = [
    "DISTILL_MODES",
    "DistillLearner",
    "DistillOutputs",
    "DistillSettings",
    "KShotStore",
    "SoftLabels",
    "prepare_distill",
]

DISTILL_MODES = ("distill", "distill-bt10")


@dataclass(frozen=True)
class DistillSettings:
    """``--distill-store`` (stores over ``--data``), ``--augmented-data`` and
    ``--augmented-store`` (for ``distill-bt10``), and the soft term's weight, temperature and
    tail mode (``smash.kernels.soft_ce``)."""

    store: str | Path | None = None
    augmented_data: str | Path | None = None
    augmented_store: str | Path | None = None
    weight: float = 1.0
    temperature: float = 1.0
    tail: str = "bucket"

    def check(self, modes: Sequence[str]) -> None:
        if "distill" in modes and self.store is None:
            raise ValueError(
                "--mode distill needs --distill-store (precompute-teacher --task kshot)"
            )
        if "distill-bt10" in modes and (
            self.augmented_data is None or self.augmented_store is None
        ):
            raise ValueError(
                "--mode distill-bt10 needs --augmented-data (make-augment) and --augmented-store "
                "(precompute-teacher --task kshot over it)"
            )
        if not (0 <= self.weight < math.inf and 0 < self.temperature < math.inf):
            raise ValueError(
                f"--distill-weight must be finite and >= 0, --distill-temperature finite and "
                f"> 0, got {self.weight} and {self.temperature}"
            )


@dataclass
class SoftLabels:
    """The teacher's targets for a training file: row ``i`` is the file's data row ``i``."""

    ids: torch.Tensor  # (N, k) int64
    logprobs: torch.Tensor  # (N, k) float16, as stored
    tail_logmass: torch.Tensor  # (N,) float32
    input_ids: list[list[int]]  # the prompts the teacher read
    source: str  # the store, for messages


class KShotStore:
    """One task's k-shot store, read whole (it is small) and indexed by ``KEY_FIELDS``.
    ``TASK`` and ``MAKER``: the producer's task of such a store and the command that makes it
    (iPET's soft-label stores are the same kind, ``ipet/soft_labels.py``)."""

    TASK, MAKER = KSHOT_TASK, "precompute-teacher --task kshot"

    def __init__(self, root: str | Path, task: Task):
        root = Path(root)
        path = root / task.dirname
        if not (path / "manifest.json").is_file():
            if not (root / "manifest.json").is_file():
                raise ValueError(
                    f"{root}: no k-shot store for {task.name} (expected {path}/manifest.json; "
                    f"{self.MAKER} writes it)"
                )
            path = root  # a task's store given directly
        self.path, self.task = path, task
        self.manifest = load_manifest(path)
        producer = self.manifest.producer
        options = producer.get("task_options") or {}
        if producer.get("task") != self.TASK or self.manifest.targets["mode"] != "topk":
            raise ValueError(
                f"{path}: not a store of {self.MAKER} (task {producer.get('task')!r}, targets "
                f"{self.manifest.targets['mode']})"
            )
        if options.get("kshot_task") != task.name:
            raise ValueError(
                f"{path}: a k-shot store of {options.get('kshot_task')}, not of {task.name}"
            )
        self.files: dict[str, Any] = options.get("files") or {}
        self.limits = [list(p) for p in options.get("sentence_limits") or []]
        _, base = manifest_location(path)
        self.examples: dict[tuple, dict] = {}
        for info in self.manifest.shards:
            chunks = read_shard(
                f"{base}/{info.name}",
                info,
                k=self.manifest.k,
                vocab_size=self.manifest.vocab_size,
                targets=self.manifest.targets,
            )
            for chunk in chunks:
                for example in chunk:
                    meta = example["meta"] or {}
                    key = tuple(meta.get(f) for f in KEY_FIELDS)
                    if key in self.examples:
                        raise ValueError(f"{path}: the key {meta} appears twice")
                    self.examples[key] = example

    def check_student(self, tokenizer, template: str, max_length: int) -> None:
        """Refuse a store made for another prompt than the student's (tokenizer, template,
        max length, LM-BFF's first-sentence limit)."""
        try:
            check_tokenizer(self.manifest, tokenizer, str(self.path))
        except StoreError as err:
            raise ValueError(f"{err} (the student's prompts would differ)") from None
        producer = self.manifest.producer
        ours = {
            "template": template,
            "max_length": max_length,
            "sentence_limits": [[0, self.task.first_sent_limit]]
            if self.task.first_sent_limit
            else [],
        }
        theirs = {**{n: producer.get(n) for n in ("template", "max_length")},
                  "sentence_limits": self.limits}  # fmt: skip
        for name, value in ours.items():
            if value != theirs[name]:
                raise ValueError(
                    f"{self.path}: made with {name} {theirs[name]!r}, the student's prompt has "
                    f"{value!r}; run precompute-teacher --task kshot with the student's "
                    f"(--max-length, --kshot-template)"
                )

    def soft_labels(
        self, data_root: str | Path, k: int, seed: int, features: Sequence[Features]
    ) -> SoftLabels:
        """The soft labels of the training file of (K, seed) under ``data_root``, whose
        student prompts are ``features`` (row order)."""
        rel = split_file(self.task, k, seed, "train")
        file = Path(data_root) / rel
        if rel not in self.files:
            covered = ", ".join(sorted(self.files)) or "none"
            raise ValueError(
                f"{self.path}: no soft labels for {file} (the store covers {covered}); run "
                f"precompute-teacher --task kshot with every K and seed evaluated (--kshot-k, "
                f"--kshot-seeds) into a new --out"
            )
        recorded = self.files[rel]
        if file_sha256(file) != recorded["sha256"]:
            raise ValueError(
                f"{self.path}: made from another {rel} than {file} (its sha256 differs); run "
                f"precompute-teacher --task kshot over this data"
            )
        rows = []
        for row, f in enumerate(features):
            example = self.examples.get((self.task.name, k, seed, "train", row))
            if example is None:
                raise ValueError(f"{self.path}: no example for {file} row {row}")
            if example["input_ids"].tolist() != list(f.input_ids):
                raise ValueError(
                    f"{self.path}: the teacher's prompt for {file} row {row} differs from the "
                    f"student's (another template, max length or tokenizer)"
                )
            rows.append(example)
        if len(rows) != recorded["rows"]:
            raise ValueError(f"{self.path}: records {recorded['rows']} rows of {file}")

        def stack(name: str) -> torch.Tensor:  # one mask row per prompt
            return torch.from_numpy(np.stack([ex[name][0] for ex in rows]))

        return SoftLabels(
            ids=stack("topk_ids").long(),
            logprobs=stack("topk_logprobs"),
            tail_logmass=stack("tail_logmass").float(),
            input_ids=[ex["input_ids"].tolist() for ex in rows],
            source=str(self.path),
        )


def _prompt_features(
    tokenizer, task: Task, template: str, max_length: int, examples: Sequence[Example]
) -> list[Features]:
    """The student's prompts, encoded as ``PromptLearner.encode`` encodes them."""
    limits = {0: task.first_sent_limit} if task.first_sent_limit else None
    prompts = parse_template(template).encode_batch(
        tokenizer, [ex.texts for ex in examples], max_length, limits
    )
    return [Features(p.input_ids, p.mask_position, ex.label) for p, ex in zip(prompts, examples)]


def _augmented_split(settings: DistillSettings, task: Task, k: int, seed: int, original):
    """The ``make-augment`` split of (task, K, seed), checked against the original one: same
    originals first, same dev and test files."""
    folder = kshot_dir(settings.augmented_data, task, k, seed)
    record = read_augment_record(folder)  # DataError naming the folder when it is not one
    data = load_kshot(settings.augmented_data, task, k, seed)
    n = record["originals"]
    if data.train[:n] != original.train or data.dev != original.dev or data.tests != original.tests:
        raise ValueError(
            f"{folder}: not an augmentation of {task.name} {k}-{seed} in --data (its "
            f"original rows, dev or test files differ)"
        )
    return data


def prepare_distill(
    settings: DistillSettings,
    mode: str,
    task: Task,
    k: int,
    seed: int,
    split: KShotData,
    data_root: str | Path,
    tokenizer,
    template: str,
    max_length: int,
    stores: dict,
) -> tuple[KShotData, SoftLabels]:
    """The split a distill mode trains on and its soft labels, every check done: ``split`` is
    (task, K, seed)'s split under ``data_root`` (``--data``); ``stores`` caches the stores read
    (one per (root, task))."""
    if mode == "distill-bt10":
        split = _augmented_split(settings, task, k, seed, split)
        root, data_root = settings.augmented_store, settings.augmented_data
    else:
        root = settings.store
    key = (str(root), task.name)
    if key not in stores:
        stores[key] = KShotStore(root, task)
    store = stores[key]
    store.check_student(tokenizer, template, max_length)
    features = _prompt_features(tokenizer, task, template, max_length, split.train)
    return split, store.soft_labels(data_root, k, seed, features)


@dataclass
class DistillOutputs:
    """What ``DistillLearner.forward`` gives: the label words' logits (B, C) and, in training,
    the whole vocabulary's (B, V) with each example's row of the soft labels (B,)."""

    words: torch.Tensor
    vocab: torch.Tensor | None
    teacher_rows: torch.Tensor | None


class DistillLearner:
    """A ``PromptLearner`` whose training loss adds ``weight`` times the soft cross-entropy
    against the teacher's soft labels (``soft``, rows of ``train``)."""

    def __init__(
        self,
        prompt: PromptLearner,
        soft: SoftLabels,
        train: Sequence[Example],
        settings: DistillSettings,
    ):
        self.prompt, self.soft, self.settings = prompt, soft, settings
        self.model, self.tokenizer, self.task = prompt.model, prompt.tokenizer, prompt.task
        self._rows = {ex: i for i, ex in enumerate(train)}
        self._targets: tuple[torch.Tensor, ...] | None = None

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        out = []
        for f, ex in zip(self.prompt.encode(examples), examples):
            row = self._rows.get(ex, -1)
            if row >= 0 and self.soft.input_ids[row] != list(f.input_ids):
                raise ValueError(
                    f"{self.soft.source}: row {row}'s prompt differs from the student's"
                )
            out.append(dataclasses.replace(f, teacher_row=row))
        return out

    def forward(self, batch: Batch) -> DistillOutputs:
        features = self.prompt.head_features(batch)  # (B, H)
        words = self.prompt.word_logits(features)  # (B, C)
        if not self.model.training:  # evaluation reads the label words only
            return DistillOutputs(words, None, None)
        return DistillOutputs(words, self.prompt.adapter.decoder(features), batch.teacher_rows)

    def loss(self, outputs: DistillOutputs, labels: torch.Tensor) -> torch.Tensor:
        base = self.prompt.loss(outputs.words, labels)
        rows = outputs.teacher_rows
        if outputs.vocab is None or rows is None or bool((rows < 0).any()):
            raise ValueError(f"{self.task.name}: a training example has no soft label")
        ids, logprobs, tail_logmass = self._targets_on(outputs.vocab.device)
        soft = soft_cross_entropy(
            outputs.vocab,
            ids[rows],
            logprobs[rows],
            tail_logmass=tail_logmass[rows],
            tail=self.settings.tail,
            temperature=self.settings.temperature,
        )
        return base + self.settings.weight * soft

    def predict(self, outputs: DistillOutputs) -> torch.Tensor:
        return self.prompt.predict(outputs.words)

    def _targets_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The soft labels on ``device``, copied there once, not at every step."""
        if self._targets is None or self._targets[0].device != device:
            soft = self.soft
            self._targets = tuple(
                t.to(device) for t in (soft.ids, soft.logprobs, soft.tail_logmass)
            )
        return self._targets
