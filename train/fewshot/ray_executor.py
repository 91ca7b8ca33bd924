"""Run an evaluation's jobs as Ray tasks: ``evaluate-fewshot --ray`` (``pip install
'smash-distill[ray]'``).

Each job (one unit, or units trained together) and each test pass is a Ray task with its own
share of a device: ``--gpus-per-unit 0.25`` packs four one-unit tasks on a GPU (a job of U
units asks for U times that, at most one GPU), ``--cpus-per-unit`` its CPUs. ``ray.init()``
starts a local Ray unless ``--ray-address`` names a cluster (or Ray is already initialised in
this process). Tasks return their results and checkpoints to the driver, which alone writes
the ledger and ``checkpoints/`` (``driver.py``): a unit is recorded once, when its task
returns. A task whose worker dies (killed, out of memory, a lost node) is run again by Ray,
up to ``RETRIES`` times; its units were not recorded, so none is lost or recorded twice. A
killed driver takes its tasks with it, and ``--resume`` runs what its ledger lacks. At most
twice as many tasks as the cluster can run at once are submitted at a time, the test passes
first, so that memory holds only what runs next.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator

from smash.train.fewshot.cpu_allocator import keep_freed_memory
from smash.train.fewshot.jobs import CheckpointTest, Job

__all__ = ["RETRIES", "RayExecutor", "run_job"]

RETRIES = 3  # runs of a task after its worker died; an exception it raises is not retried

AnyJob = Job | CheckpointTest


def run_job(job: AnyJob) -> object:
    """What a Ray task runs: the job, in the worker (which keeps freed memory on a CPU device,
    as ``evaluate-fewshot`` does)."""
    if job.device.startswith("cpu"):
        keep_freed_memory()
    return job()


class RayExecutor:
    """Runs jobs as Ray tasks, ``run(job)`` in the worker (``run_job``)."""

    def __init__(
        self,
        address: str | None = None,
        gpus_per_unit: float = 0.0,
        cpus_per_unit: float = 1.0,
        run: Callable[[AnyJob], object] = run_job,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError(
                "--ray needs Ray: pip install 'smash-distill[ray]' (or ray itself)"
            ) from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.gpus, self.cpus = gpus_per_unit, cpus_per_unit
        self._remote = ray.remote(max_retries=RETRIES)(run)
        self._queue: deque[AnyJob] = deque()
        self._running: dict = {}  # object ref -> job
        resources = ray.cluster_resources()
        slots = [resources.get("CPU", 0) / self.cpus]
        if self.gpus:
            slots.append(resources.get("GPU", 0) / self.gpus)
        self._slots = max(1, math.floor(min(slots)))
        self._resources = resources

    def describe(self, device: str) -> str:
        have = ", ".join(f"{self._resources.get(r, 0):g} {r}" for r in ("CPU", "GPU"))
        return (
            f"as Ray tasks on {device} ({have}; {self.cpus:g} CPU and {self.gpus:g} GPU a "
            f"unit, {self._slots} at a time)"
        )

    def submit(self, job: AnyJob) -> None:
        if isinstance(job, CheckpointTest):
            self._queue.appendleft(job)
        else:
            self._queue.append(job)

    def completed(self, started: Callable[[AnyJob], None]) -> Iterator[tuple[AnyJob, object]]:
        """Each job with what its task returned, as tasks end; ``started(job)`` names the
        oldest task still running."""
        ray = self._ray
        while self._queue or self._running:
            while self._queue and len(self._running) < 2 * self._slots:
                job = self._queue.popleft()
                units = 1 if isinstance(job, CheckpointTest) else len(job.units)
                task = self._remote.options(num_cpus=self.cpus,
                                            num_gpus=min(1.0, self.gpus * units))  # fmt: skip
                self._running[task.remote(job)] = job
            started(next(iter(self._running.values())))
            [ready], _ = ray.wait(list(self._running), num_returns=1)
            job = self._running.pop(ready)
            try:
                output = ray.get(ready)
            except ray.exceptions.RayTaskError as err:  # the job's own exception, as in-process
                raise err.cause if isinstance(err.cause, Exception) else err from None
            yield job, output

    def close(self) -> None:
        """Cancel the tasks still running (the driver stops: they would be recorded by no
        one); shut down a Ray this executor started."""
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._started:
            self._ray.shutdown()
            self._started = False
