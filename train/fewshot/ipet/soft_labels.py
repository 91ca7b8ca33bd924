"""iPET's final classifier, three ways (SMASH paper Tables 3 and 5): ``--mode ipet`` and ``ipet-pt``.

The training set of (task, K, seed) is ``run-ipet``'s unlabelled set with its soft labels (the
last generation's ensemble over the label words, read from its store, ``--ipet-store``); dev and
test are the split's. The loss is PET's distillation loss: the student's class logits and the
stored distribution at PET's temperature T (recorded in the store), ``T**2 * soft-CE``, through
``smash.kernels.soft_cross_entropy`` (k = the labels, nothing in the tail: the tempered target
is exactly PET's ``softmax(mean logits / T)``). As in PET, the final classifier trains on the
soft-labelled examples alone.

- ``ipet``: PET's final classifier, a sequence classifier (``finetune``'s head; its inputs are
  the sentences, ``meta["texts"]``).
- ``ipet-pt``: prompt-based fine-tuning on the soft labels ("+ PT"): the label words' logits at
  the mask of the task's template, whose ids must equal the store's prompts (as ``distill``
  checks its store). "+ SMASH init" is ``ipet-pt`` with a SMASH student as ``--model``.

Everything else is the protocol's (grid, steps, dev checks, best checkpoint, test).
STS-B is refused: iPET does not apply to regression.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from smash.kernels.soft_ce import soft_cross_entropy
from smash.precompute.kshot.data import Example, KShotData
from smash.precompute.kshot.tasks import Task
from smash.precompute.kshot.teacher import file_sha256, split_file
from smash.train.fewshot.distill import KShotStore
from smash.train.fewshot.ipet.run import IPET_TASK
from smash.train.fewshot.learners import Batch, Features, FinetuneLearner, PromptLearner

__all__ = [
    "IPET_MODES",
    "IpetOptions",
    "IpetStore",
    "SoftLabelLearner",
    "SoftTargets",
    "base_mode",
    "ipet_factory",
    "prepare_ipet",
]

IPET_MODES = ("ipet", "ipet-pt")


def base_mode(mode: str) -> str:
    """The learner an iPET mode trains: a sequence classifier (``finetune``) or the prompt."""
    return {"ipet": "finetune", "ipet-pt": "prompt"}.get(mode, mode)


@dataclass(frozen=True)
class IpetOptions:
    """``--ipet-store``: ``run-ipet``'s ``OUT/store`` (a store per task folder)."""

    store: str | Path | None = None

    def check(self, modes: Sequence[str]) -> None:
        if set(modes) & set(IPET_MODES) and self.store is None:
            raise ValueError("--mode ipet / ipet-pt needs --ipet-store (run-ipet's OUT/store)")

    def folder(self, task: Task) -> Path:
        own = Path(self.store) / task.dirname
        return own if (own / "manifest.json").is_file() else Path(self.store)


@dataclass
class SoftTargets:
    """The soft labels of one split's unlabelled set: row ``i`` is example ``i``."""

    logprobs: torch.Tensor  # (N, C) at T = 1, as stored (float16)
    input_ids: list[list[int]]  # the stored prompts
    temperature: float
    source: str


class IpetStore(KShotStore):
    """One task's soft-label store written by ``run-ipet``."""

    TASK, MAKER = IPET_TASK, "run-ipet"

    def unlabelled(
        self, data_root: str | Path, k: int, seed: int
    ) -> tuple[list[Example], SoftTargets]:
        """The unlabelled examples of (K, seed) (label: the soft labels' argmax) and their soft
        labels; refused when the store holds none or was made from another training file."""
        rel = split_file(self.task, k, seed, "train")
        if rel not in self.files:
            covered = ", ".join(sorted(self.files)) or "none"
            raise ValueError(
                f"{self.path}: no soft labels for {self.task.name} {k}-{seed} (the store covers "
                f"{covered}); run run-ipet with every K and seed evaluated"
            )
        if file_sha256(Path(data_root) / rel) != self.files[rel]["sha256"]:
            raise ValueError(
                f"{self.path}: made from another {rel} than {Path(data_root) / rel} (its sha256 "
                f"differs); run run-ipet over this data"
            )
        rows = sorted(
            (ex for key, ex in self.examples.items() if key[1:4] == (k, seed, "unlabelled")),
            key=lambda ex: ex["meta"]["row"],
        )
        if [ex["meta"]["row"] for ex in rows] != list(range(self.files[rel]["unlabelled"])):
            raise ValueError(f"{self.path}: the unlabelled rows of {k}-{seed} are incomplete")
        examples = [
            Example(tuple(ex["meta"]["texts"]), int(ex["label"]), int(ex["meta"]["line"]))
            for ex in rows
        ]
        producer = self.manifest.producer
        targets = SoftTargets(
            logprobs=torch.from_numpy(_by_class(rows, producer["verbalizer_ids"], self.path)),
            input_ids=[ex["input_ids"].tolist() for ex in rows],
            temperature=float(producer["task_options"]["temperature"]),
            source=str(self.path),
        )
        return examples, targets


def _by_class(rows: Sequence[dict], words: Sequence[int], source: Path) -> np.ndarray:
    """(N, C) the stored log-probabilities in label order (a store keeps each row's entries in
    descending order, with their ids: the label words')."""
    ids = np.stack([ex["topk_ids"][0] for ex in rows])
    hits = ids[:, None, :] == np.asarray(words)[None, :, None]  # (N, C, k)
    if not hits.any(axis=2).all():
        raise ValueError(f"{source}: a row's soft labels are not over the label words {words}")
    logprobs = np.stack([ex["topk_logprobs"][0] for ex in rows])
    return np.take_along_axis(logprobs, hits.argmax(axis=2), axis=1)


class SoftLabelLearner:
    """A prompt or sequence-classification learner trained on soft labels (PET's loss)."""

    def __init__(self, inner: PromptLearner | FinetuneLearner, targets: SoftTargets,
                 train: Sequence[Example]):  # fmt: skip
        self.inner, self.targets = inner, targets
        self.model, self.tokenizer, self.task = inner.model, inner.tokenizer, inner.task
        self._rows = {ex: i for i, ex in enumerate(train)}
        self._logprobs: torch.Tensor | None = None

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        out = []
        prompts = isinstance(self.inner, PromptLearner)
        for f, ex in zip(self.inner.encode(examples), examples):
            row = self._rows.get(ex, -1)
            if prompts and row >= 0 and self.targets.input_ids[row] != list(f.input_ids):
                raise ValueError(
                    f"{self.targets.source}: unlabelled row {row}'s prompt differs from the "
                    "student's (another template, max length or tokenizer)"
                )
            out.append(dataclasses.replace(f, teacher_row=row))
        return out

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.inner.forward(batch), batch.teacher_rows

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor | None], labels) -> torch.Tensor:
        logits, rows = outputs
        if rows is None or bool((rows < 0).any()):
            raise ValueError(f"{self.task.name}: a training example has no soft label")
        if self._logprobs is None or self._logprobs.device != logits.device:
            self._logprobs = self.targets.logprobs.to(logits.device)
        classes = torch.arange(logits.shape[-1], device=logits.device).expand(len(rows), -1)
        return soft_cross_entropy(logits, classes, self._logprobs[rows], tail="renorm",
                                  temperature=self.targets.temperature, scale_t2=True)  # fmt: skip

    def predict(self, outputs: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        return self.inner.predict(outputs[0])


def prepare_ipet(
    options: IpetOptions,
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
) -> tuple[KShotData, SoftTargets]:
    """The split an iPET mode trains on (the unlabelled set, the split's dev and tests) and its
    soft labels, every check done; ``stores`` caches the stores read."""
    if task.is_regression:
        raise ValueError(
            f"--mode {mode}: iPET does not apply to regression tasks ({task.name}; the SMASH "
            "paper reports no iPET result on STS-B for this reason, Table 5)"
        )
    folder = options.folder(task)
    key = (str(folder), task.name)
    if key not in stores:
        stores[key] = IpetStore(folder, task)
    store = stores[key]
    if mode == "ipet-pt":  # the prompts the soft labels belong to must be the student's
        store.check_student(tokenizer, template, max_length)
    train, targets = store.unlabelled(data_root, k, seed)
    return KShotData(train=train, dev=split.dev, tests=split.tests), targets


def ipet_factory(make: Callable, targets: SoftTargets, train: Sequence[Example]):
    """A mode's learner for one seed: its base learner on the soft labels."""
    return lambda: SoftLabelLearner(make(), targets, train)
