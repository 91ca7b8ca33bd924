"""The work of an evaluation as self-contained jobs that run in this process or elsewhere.

A :class:`Job` trains units: each from its (run, mode, task, seed)'s learner factory and split,
with the run's protocol. It returns every unit's result and, unless the unit was tested at once
(``test``: ``--test-every-point``; a zero-shot unit always is), its best-dev checkpoint. A
:class:`CheckpointTest` tests one checkpoint: the grid point its seed chose. Jobs hold
everything they need (factories, splits, checkpoints), so that an executor may run them in
another process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from smash.precompute.kshot.data import KShotData
from smash.train.fewshot.batched import can_batch, train_together
from smash.train.fewshot.ledger import UnitKey
from smash.train.fewshot.protocol import (
    PointResult,
    Protocol,
    checkpoint_tests,
    run_point,
    train_point,
    zero_shot,
)

__all__ = ["CheckpointTest", "Job", "UnitOutcome", "UnitWork"]


@dataclass(frozen=True)
class UnitWork:
    """One unit and what it reads: its learner factory and its (task, K, seed) split."""

    key: UnitKey
    make: Callable[[], object]
    split: KShotData


@dataclass
class UnitOutcome:
    """A trained unit: its result, its best-dev checkpoint (None when ``result`` already
    holds its test metrics) and the seconds it took."""

    key: UnitKey
    result: PointResult
    state: dict | None
    seconds: float


@dataclass(frozen=True)
class Job:
    """Units of one run trained with ``protocol`` on ``device``; ``test``: test each
    trained checkpoint at once. Several units are of one (mode, task, batch size, prompt)."""

    units: tuple[UnitWork, ...]
    protocol: Protocol
    device: str
    test: bool

    @property
    def keys(self) -> list[UnitKey]:
        return [u.key for u in self.units]

    @property
    def group(self) -> tuple:
        """The (model, K, mode, task) its units belong to: what may share a zero-shot cache."""
        key = self.units[0].key
        return key.model, key.path, key.k, key.mode, key.task

    def __call__(self, cache: dict | None = None) -> list[UnitOutcome]:
        """Run it; ``cache`` memoises zero-shot test metrics across the seeds of a task.
        Several units train together when their learners can (``batched.py``), else one at
        a time."""
        if len(self.units) > 1:
            together = self._together()
            if together is not None:
                return together
        return [self._unit(u, {} if cache is None else cache) for u in self.units]

    def _together(self) -> list[UnitOutcome] | None:
        """The units trained batched; None (before any training) when their kind is not."""
        start = time.perf_counter()

        def made(unit: UnitWork):
            torch.manual_seed(unit.key.seed)  # as alone: a fresh head is its seed's
            return unit.make()

        first = made(self.units[0])
        if not can_batch(first):
            return None
        learners = [first, *map(made, self.units[1:])]
        device, keys = torch.device(self.device), self.keys
        trained = train_together(learners, [u.split for u in self.units], [k.seed for k in keys],
                                 [k.lr for k in keys], keys[0].batch_size, self.protocol,
                                 device)  # fmt: skip
        outcomes = []
        for unit, learner, (result, state, _) in zip(self.units, learners, trained):
            if self.test:
                tests = checkpoint_tests(learner, unit.split, state, self.protocol, device)
                result, state = replace(result, tests=tests), None
            outcomes.append(UnitOutcome(unit.key, result, state, 0.0))
        seconds = (time.perf_counter() - start) / len(outcomes)
        return [replace(o, seconds=seconds) for o in outcomes]

    def _unit(self, unit: UnitWork, cache: dict) -> UnitOutcome:
        start = time.perf_counter()
        key, protocol, device = unit.key, self.protocol, torch.device(self.device)
        state = None
        if key.mode == "zero-shot":
            torch.manual_seed(key.seed)
            r = zero_shot(unit.make(), unit.split, key.seed, protocol.eval_batch_size, device,
                          cache, **protocol.inference)  # fmt: skip
            result = PointResult(lr=None, batch_size=None, dev=r.dev, step=0, tests=r.tests)
        elif self.test:
            result = run_point(unit.make, unit.split, key.seed, key.lr, key.batch_size,
                               protocol, device)  # fmt: skip
        else:
            result, state = train_point(unit.make, unit.split, key.seed, key.lr, key.batch_size,
                                        protocol, device)  # fmt: skip
        return UnitOutcome(key, result, state, time.perf_counter() - start)


@dataclass(frozen=True)
class CheckpointTest:
    """The test pass of ``unit``'s checkpoint ``state``. ``state`` None (a checkpoint lost
    outside this program) trains the unit again first."""

    unit: UnitWork
    state: dict | None
    protocol: Protocol
    device: str

    def __call__(self) -> tuple[dict[str, float], float]:
        """The test metrics and the seconds they took."""
        start = time.perf_counter()
        key, device, state = self.unit.key, torch.device(self.device), self.state
        if state is None:
            _, state = train_point(self.unit.make, self.unit.split, key.seed, key.lr,
                                   key.batch_size, self.protocol, device)  # fmt: skip
        learner = self.unit.make()
        tests = checkpoint_tests(learner, self.unit.split, state, self.protocol, device)
        return tests, time.perf_counter() - start
