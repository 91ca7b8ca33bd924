"""Drives an evaluation: which jobs run, what is recorded as each ends, which test passes
follow, and each run's entries once it is complete.

Jobs (``jobs.py``) go to an executor, which runs them and hands back what they return; the
driver alone records (so one process writes the ledger, whatever runs the jobs). As a unit is
recorded, its checkpoint is kept if it is its seed's best so far (``checkpoints.py``); once
every unit of a seed is recorded, the seed's chosen grid point, unless already tested, gets a
test pass. The executor here, :class:`LocalExecutor`, runs one job at a time in this process,
a test pass before the jobs still waiting.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from smash.train.fewshot.batched import UNBATCHED_MODES
from smash.train.fewshot.checkpoints import BestCheckpoints
from smash.train.fewshot.jobs import CheckpointTest, Job, UnitOutcome, UnitWork
from smash.train.fewshot.ledger import UnitKey
from smash.train.fewshot.metrics import select_best
from smash.train.fewshot.protocol import PointResult, SeedResult, choose
from smash.train.fewshot.report import Entry
from smash.train.fewshot.units import Plan, Run
from tqdm.auto import tqdm

__all__ = ["Driver", "LocalExecutor"]

AnyJob = Job | CheckpointTest


class LocalExecutor:
    """Runs jobs one at a time in this process, in the order submitted; a test pass goes
    before the jobs still waiting, so that its checkpoint is let go early."""

    def __init__(self) -> None:
        self._queue: deque[AnyJob] = deque()
        self._caches: dict[tuple, dict] = {}  # zero-shot test metrics per (model, mode, task)

    def describe(self, device: str) -> str:
        return f"one at a time in this process on {device}"

    def close(self) -> None:
        """Nothing runs beside the driver: nothing to stop."""

    def submit(self, job: AnyJob) -> None:
        if isinstance(job, CheckpointTest):
            self._queue.appendleft(job)
        else:
            self._queue.append(job)

    def completed(self, started: Callable[[AnyJob], None]) -> Iterator[tuple[AnyJob, object]]:
        """Each job with what it returned, as it ends; ``started(job)`` as it starts."""
        while self._queue:
            job = self._queue.popleft()
            started(job)
            if isinstance(job, Job):
                yield job, job(self._caches.setdefault(job.group, {}))
            else:
                yield job, job()


class Driver:
    """One evaluation: ``plan``'s units, ``work_of(key)`` what each reads; ``executor`` runs
    the jobs (``LocalExecutor``, or ``ray_executor.RayExecutor``)."""

    def __init__(
        self,
        plan: Plan,
        work_of: Callable[[UnitKey], UnitWork],
        checkpoints: BestCheckpoints,
        device: str,
        test_every_point: bool = False,
        executor=None,
        batch_units: int = 1,
    ) -> None:
        self.plan, self.work_of, self.checkpoints = plan, work_of, checkpoints
        self.device, self.test_every_point, self.batch_units = device, test_every_point, batch_units
        self.executor = executor or LocalExecutor()
        self._seed_of = {key: group for group in plan.seed_groups() for key in plan.keys(*group)}
        self._testing: set[UnitKey] = set()  # the chosen units whose test is submitted

    def run(self, on_run_done: Callable[[int, list[Entry]], None]) -> list[list[Entry]]:
        """Every run's entries, in run order; ``on_run_done(i, entries)`` as soon as run ``i``
        (and every run before it) is complete."""
        try:
            return self._run(on_run_done)
        finally:
            self.executor.close()

    def _run(self, on_run_done: Callable[[int, list[Entry]], None]) -> list[list[Entry]]:
        plan, out = self.plan, []
        jobs = self._jobs()
        tqdm.write(self._summary(jobs), file=sys.stderr)
        for job in jobs:
            self.executor.submit(job)
        for group in plan.seed_groups():  # seeds recorded whole by a run killed before its test
            self._test_if_ready(group)
        start, trained = time.perf_counter(), [0]
        # the bar closes on an error too, so that the error message gets a line of its own
        with tqdm(total=plan.total, initial=plan.done, desc="few-shot", unit="unit",
                  dynamic_ncols=True) as bar:  # fmt: skip

            def started(job: AnyJob) -> None:
                key = job.unit.key if isinstance(job, CheckpointTest) else job.keys[0]
                what = "test pass: " if isinstance(job, CheckpointTest) else ""
                hours = (time.perf_counter() - start) / 3600
                rate = f"{trained[0] / hours:.0f} units/h | " if trained[0] else ""
                bar.set_postfix_str(rate + what + plan.postfix(key), refresh=False)

            self._finish_runs(out, on_run_done)
            for job, output in self.executor.completed(started):
                if isinstance(job, CheckpointTest):
                    tests, seconds = output
                    key = job.unit.key
                    plan.record_tests(key, tests, seconds)
                    self.checkpoints.drop(plan.keys(*self._seed_of[key]))
                else:
                    self._record(output)
                    bar.update(len(output))
                    trained[0] += len(output)
                    for key in job.keys:
                        self._test_if_ready(self._seed_of[key])
                self._finish_runs(out, on_run_done)
        return out

    def _summary(self, jobs: list[Job]) -> str:
        """What is about to run: units, where, and how many test passes."""
        plan = self.plan
        todo = [key for job in jobs for key in job.keys]
        zero_shot = sum(key.mode == "zero-shot" for key in todo)
        seeds = [g for g in plan.seed_groups() if g[1] != "zero-shot"]
        if self.test_every_point:  # and the seeds recorded whole, whose chosen point is not
            waiting = sum(plan.chosen(*g) is not None and not plan.seed_finished(*g) for g in seeds)
            tests, why = len(todo) + waiting, "one per unit: --test-every-point"
        else:
            tests = zero_shot + sum(not plan.seed_finished(*g) for g in seeds)
            why = "one per seed, of the grid point it chooses"
            why += ", and one per zero-shot unit" if zero_shot else ""
        shard = "" if plan.shard is None else "shard {}/{}: ".format(*plan.shard)
        return (
            f"evaluate-fewshot: {shard}{plan.total} units, {plan.done} recorded, {len(todo)} to train "
            f"in {len(jobs)} jobs, {self.executor.describe(self.device)}; {tests} test passes "
            f"({why})"
        )

    def _jobs(self) -> list[Job]:
        """The jobs of the units not recorded yet. One unit each, in plan order; or, with
        ``batch_units`` > 1, the units of each (run, mode, task) that train alike (one batch
        size and prompt: ``lmbff``'s differs by seed) in chunks of ``batch_units``, seed by
        seed. A chunk is cut from every unit of the plan, recorded or not, so a resumed
        evaluation trains each unit among the ones an uninterrupted run would."""
        plan = self.plan
        per_group: dict[tuple, list[UnitKey]] = {}
        for run, mode, task, seed in plan.seed_groups():
            group = per_group.setdefault((run.name, mode, task.name), [])
            group.extend(plan.keys(run, mode, task, seed))
        chunks = []
        for keys in per_group.values():
            alike: dict[tuple, list[UnitKey]] = {}
            for key in keys:
                alike.setdefault(_trains_alike(key, self.batch_units), []).append(key)
            for same in alike.values():
                step = self.batch_units
                chunks += [same[i : i + step] for i in range(0, len(same), step)]
        return [
            Job(tuple(self.work_of(k) for k in todo), self._seed_of[todo[0]][0].protocol,
                self.device, self.test_every_point)
            for todo in ([k for k in chunk if plan.get(k) is None] for chunk in chunks)
            if todo
        ]  # fmt: skip

    def _record(self, outcomes: list[UnitOutcome]) -> None:
        """Record a job's units in one write; first keep (on disk) the checkpoint of each
        that is now its seed's best, and then drop that seed's others."""
        new = {o.key: o.result for o in outcomes}
        best = [o for o in outcomes if o.state is not None and self._best_so_far(o.key, new)]
        for o in best:
            self.checkpoints.keep(o.key, o.state)
        self.plan.record([(o.key, o.result, o.seconds) for o in outcomes])
        for o in best:
            self.checkpoints.drop(k for k in self.plan.keys(*self._seed_of[o.key]) if k != o.key)

    def _best_so_far(self, key: UnitKey, new: dict[UnitKey, PointResult]) -> bool:
        """Whether ``key`` wins among its seed's units recorded or ``new`` (grid order breaks
        ties, as ``choose`` does, whatever order they finish in)."""
        found = [(k, new.get(k) or self.plan.get(k)) for k in self.plan.keys(*self._seed_of[key])]
        recorded = [(k, r) for k, r in found if r is not None]
        return recorded[select_best([r.dev for _, r in recorded])][0] == key

    def _test_if_ready(self, group: tuple) -> None:
        """Submit the test pass of the seed's chosen unit once every unit is recorded."""
        chosen = self.plan.chosen(*group)
        if chosen is None or self.plan.get(chosen).tests or chosen in self._testing:
            return
        self._testing.add(chosen)
        state = self.checkpoints.load(chosen)
        if state is None:
            tqdm.write(
                f"evaluate-fewshot: note: the checkpoint of {self.plan.postfix(chosen)} is "
                "gone (checkpoints/ emptied?); training it again for its test pass"
            )
        self.executor.submit(
            CheckpointTest(self.work_of(chosen), state, group[0].protocol, self.device)
        )

    def _finish_runs(self, out: list, on_run_done: Callable[[int, list[Entry]], None]) -> None:
        """Hand over the next runs in order whose every seed is finished."""
        plan = self.plan
        while len(out) < len(plan.runs):
            run = plan.runs[len(out)]
            if not all(plan.finished(run, m, t) for m in plan.modes for t in plan.tasks):
                return
            entries = [self._entry(run, mode, task) for mode in plan.modes for task in plan.tasks]
            on_run_done(len(out), entries)
            out.append(entries)

    def _entry(self, run: Run, mode: str, task) -> Entry:
        results = []
        for seed in self.plan.seeds:
            points = [self.plan.get(key) for key in self.plan.keys(run, mode, task, seed)]
            results.append(_seed_result(mode, seed, points))
        return Entry(run.name, str(run.path), mode, task.name, task.metric, results)


def _trains_alike(key: UnitKey, batch_units: int) -> tuple:
    """What units of one (run, mode, task) must share to train together: a batch size and
    a prompt (template and label words); with ``batch_units`` 1, or in a mode that does not
    batch, nothing is shared."""
    if batch_units == 1 or key.mode in UNBATCHED_MODES:
        return (key.seed, key.lr, key.batch_size)
    inputs = json.loads(key.inputs)
    return key.batch_size, inputs.get("template"), str(inputs.get("words"))


def _seed_result(mode: str, seed: int, points: Sequence[PointResult]) -> SeedResult:
    if mode == "zero-shot":
        return SeedResult(seed=seed, dev=points[0].dev, tests=dict(points[0].tests))
    return choose(seed, points)
