"""The teacher pass's writer thread: teacher outputs in, filtered and encoded shards out.

The thread driving the teacher sends typed messages through a bounded queue: ``BeginShard``,
one ``TeacherBatch`` per teacher batch (answer positions in any order, results possibly still
being copied off the GPU), then ``EndShard``. The writer puts each batch's rows back in example
order, applies the task's filter and label hooks to the verbalizer log-probabilities, and
writes the shard (``StoreWriter.write_shard``), so the bytes never depend on batching. A task
with a ``classify`` hook (the sentiment task's labeller) gives those hooks its own scores of the
shard's examples instead.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from smash.store.writer import StoreWriter

from .background import offer
from .shard_prep import PreparedExample
from .tasks import IntermediateTask, TaskExample

__all__ = ["BeginShard", "EndShard", "ShardWriterThread", "TeacherBatch"]


@dataclass(frozen=True)
class BeginShard:
    index: int
    examples: list[TaskExample]
    prepared: list[PreparedExample]


@dataclass(frozen=True)
class TeacherBatch:
    rows: np.ndarray  # (R,) the shard's answer positions (in example order) of the outputs
    outputs: dict[str, torch.Tensor]  # name -> (B, ...) on the CPU (pinned when from a GPU)
    ready: Any = None  # a CUDA event that fires once the copies into ``outputs`` landed


@dataclass(frozen=True)
class EndShard:
    pass


@dataclass(frozen=True)
class _Stop:
    pass


Message = BeginShard | TeacherBatch | EndShard | _Stop


class ShardWriterThread(threading.Thread):
    """Consumes messages from a bounded queue and writes shards in order.

    ``summary`` (a ``PassSummary``) counts what was written. An error in the thread is kept
    and re-raised in the sender's thread by ``put`` or ``finish``.
    """

    def __init__(self, store: StoreWriter, task: IntermediateTask, summary: Any):
        super().__init__(daemon=True, name="smash-shard-writer")
        self.queue: queue.Queue[Message] = queue.Queue(maxsize=8)
        self.store, self.task, self.summary = store, task, summary
        self.error: BaseException | None = None

    def put(self, message: Message) -> None:
        """Queue a message; re-raises here what failed in the writer."""
        if not offer(self.queue, message, lambda: self.error is not None):
            raise self.error

    def stop(self) -> None:
        """End the thread after what is queued, also when it died with a full queue."""
        offer(self.queue, _Stop(), lambda: not self.is_alive())
        self.join()

    def finish(self) -> None:
        """Write what is queued, end the thread, and re-raise its error if it failed."""
        self.put(_Stop())
        self.join()
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            shard: BeginShard | None = None
            out: dict[str, np.ndarray] = {}
            while not isinstance(message := self.queue.get(), _Stop):
                if isinstance(message, BeginShard):
                    shard, out = message, {}
                    total = sum(len(p.mask_positions) for p in shard.prepared)
                elif isinstance(message, TeacherBatch):
                    if message.ready is not None:
                        message.ready.synchronize()
                    for name, tensor in message.outputs.items():
                        value = tensor.numpy()
                        if name not in out:
                            out[name] = np.empty((total, *value.shape[1:]), value.dtype)
                        out[name][message.rows] = value
                else:
                    self._write_shard(shard, out)
        except BaseException as err:  # noqa: BLE001 - re-raised by put()/finish()
            self.error = err

    def _write_shard(self, shard: BeginShard, out: dict[str, np.ndarray]) -> None:
        """``out``: the teacher's outputs per answer position of the shard, in example order
        (one position per example where the task has a verbalizer: a prompt's mask)."""
        examples, prepared = shard.examples, shard.prepared
        first = np.cumsum([0] + [len(p.mask_positions) for p in prepared]).tolist()
        keep = np.ones(len(examples), dtype=bool)
        labels = np.array([ex.label for ex in examples])
        if "verbalizer_logprobs" in out:
            verbalizer = out["verbalizer_logprobs"]
            classify = getattr(self.task, "classify", None)  # a labeller in the teacher's place
            if classify is not None and (scores := classify(examples)) is not None:
                verbalizer = scores
            statistic = getattr(self.task, "statistic", None)
            if statistic is not None and (values := statistic(verbalizer)) is not None:
                self.summary.statistics.append(np.asarray(values, np.float32))
            decided = self.task.keep(verbalizer)
            if decided is not None:
                keep = decided
            if hasattr(self.task, "label"):
                labels = self.task.label(verbalizer)
        teacher_fields = [name for name in out if name != "verbalizer_logprobs"]
        info = self.store.write_shard(
            shard.index,
            (
                {
                    "input_ids": prepared[i].input_ids,
                    "mask_positions": prepared[i].mask_positions,
                    **{name: out[name][first[i] : first[i + 1]] for name in teacher_fields},
                    "mlm_labels": prepared[i].mlm_labels,
                    "label": int(labels[i]),
                    "meta": examples[i].meta or None,
                }
                for i in np.flatnonzero(keep)
            ),
        )
        self.summary.kept += info.samples
        self.summary.shards += 1
        self.summary.bytes += info.bytes
