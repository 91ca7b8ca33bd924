"""The teacher pass: task examples -> teacher top-k at every mask -> store shards.

Work is cut into shards by example index: shard ``i`` holds candidates
``[i * shard_size, (i + 1) * shard_size)`` of the task's deterministic example stream (fewer
after a teacher filter). Process ``r`` of ``w`` (torchrun / deepspeed launcher) owns the shards
with ``i % w == r``, records each finished shard in its part manifest, and skips recorded
shards when restarted with the same arguments; rank 0 merges the parts at the end. Within a
shard, batches are length-bucketed to a token budget; results go back to example order before
writing, so the bytes do not depend on batching order, ranks, or interruptions.

Overlap: the main thread only runs the teacher. Results leave the GPU through non-blocking
copies into pinned memory, and a writer thread (bounded queue) waits on each batch's CUDA
event, then filters, encodes, compresses and writes, while the GPU computes the next batches.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from smash.store import StoreWriter, finalize_store, shard_name, tokenizer_record
from smash.store.codec import ChunkLayout
from smash.store.manifest import read_parts
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from .background import background
from .shard_prep import ShardPreparer
from .tasks import IntermediateTask, TaskExample
from .teacher_head import teacher_topk
from .templates import EncodedPrompt, parse_template

__all__ = ["PassConfig", "PassSummary", "finalize", "run_teacher_pass"]


@dataclass
class PassConfig:
    out: Path
    k: int = 64
    num_examples: int = 100_000
    shard_size: int = 10_000
    token_budget: int = 16_384
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    tokenize_workers: int = 1  # processes tokenizing ahead; 0 = in a thread of this process


@dataclass
class PassSummary:
    requested: int = 0  # candidates this process was asked for (--num-examples share)
    candidates: int = 0  # candidates the corpus gave it (fewer when it runs out)
    examples: int = 0  # candidates sent through the teacher by this process
    kept: int = 0  # examples written (after the filter)
    shards: int = 0  # shards written by this process in this run
    skipped_shards: int = 0  # finished in an earlier run
    bytes: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0  # until the first batch reached the teacher (first shard's prep)
    store_shards: int = 0  # after finalize (rank 0)
    store_examples: int = 0
    store_bytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / max(self.computed_tokens, 1)


def _shards(
    stream: Iterator[TaskExample], cfg: PassConfig, total: int
) -> Iterator[tuple[int, list[TaskExample]]]:
    it = itertools.islice(stream, total)
    for index in itertools.count():
        chunk = list(itertools.islice(it, cfg.shard_size))
        if not chunk:
            return
        yield index, chunk


class _Writer(threading.Thread):
    """Consumes finished batches and shards from a bounded queue; writes shards in order."""

    def __init__(self, store: StoreWriter, task: IntermediateTask, summary: PassSummary):
        super().__init__(daemon=True, name="smash-shard-writer")
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.store, self.task, self.summary = store, task, summary
        self.error: BaseException | None = None

    def put(self, item: tuple) -> None:
        """Queue an item; re-raises here, in the caller's thread, what failed in the writer."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def stop(self) -> None:
        """End the thread after what is queued, also when it already died with a full queue
        (a blocking put would then wait forever)."""
        while self.is_alive():
            try:
                self.queue.put(("stop",), timeout=0.1)
                break
            except queue.Full:
                continue
        self.join()

    def run(self) -> None:
        try:
            out: dict[str, np.ndarray] = {}
            while (item := self.queue.get())[0] != "stop":
                if item[0] == "begin":  # ("begin", shard index, examples, prompts)
                    shard, out = item[1:], {}
                elif item[0] == "batch":  # ("batch", example rows, CUDA event or None, outputs)
                    _, rows, event, top = item
                    if event is not None:
                        event.synchronize()  # the non-blocking copies have landed
                    for name, value in top.items():
                        value = value.numpy()
                        if name not in out:
                            out[name] = np.empty((len(shard[1]), *value.shape[1:]), value.dtype)
                        out[name][rows] = value
                else:  # ("end",)
                    self._write_shard(*shard, out)
        except BaseException as err:  # noqa: BLE001 - re-raised by put()/finish()
            self.error = err

    def _write_shard(
        self,
        index: int,
        examples: list[TaskExample],
        prompts: list[EncodedPrompt],
        out: dict[str, np.ndarray],
    ) -> None:
        keep = np.ones(len(examples), dtype=bool)
        labels = np.array([ex.label for ex in examples])
        if "extra" in out:
            decided = self.task.keep(out["extra"][: len(examples)])
            if decided is not None:
                keep = decided
            if hasattr(self.task, "label"):
                labels = self.task.label(out["extra"][: len(examples)])
        info = self.store.write_shard(
            index,
            (
                {
                    "input_ids": np.asarray(prompts[i].input_ids),
                    "mask_positions": np.array([prompts[i].mask_position]),
                    "topk_ids": out["ids"][i : i + 1],
                    "topk_logprobs": out["logprobs"][i : i + 1],
                    "tail_logmass": out["tail"][i : i + 1],
                    "label": int(labels[i]),
                    "meta": examples[i].meta or None,
                }
                for i in np.flatnonzero(keep)
            ),
        )
        self.summary.kept += info.samples
        self.summary.shards += 1
        self.summary.bytes += info.bytes

    def finish(self) -> None:
        self.put(("stop",))
        self.join()
        if self.error is not None:
            raise self.error


def _shard_jobs(
    examples: Iterator[TaskExample], cfg: PassConfig, total: int, done: set[str]
) -> Iterator[tuple]:
    """This rank's shards as ((index, examples), sentences to prepare or None to skip)."""
    for index, chunk in _shards(examples, cfg, total):
        if index % cfg.world_size != cfg.rank:
            continue
        finished = shard_name(index) in done and (cfg.out / shard_name(index)).exists()
        yield (index, chunk), (None if finished else [ex.sentences for ex in chunk])


def run_teacher_pass(
    task: IntermediateTask,
    examples: Iterator[TaskExample],
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: PassConfig,
    producer: dict,
    device: torch.device,
    preparer: ShardPreparer | None = None,
) -> PassSummary:
    """Run the teacher over this process's shards of ``examples`` and write them.

    A background thread draws the examples and hands shards to tokenizer processes
    (``ShardPreparer``; pass one started earlier to hide its start-up, it is closed here);
    this thread runs the teacher; the writer thread filters, encodes and writes finished
    shards.
    """
    if tokenizer.mask_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no mask token")
    vocab = len(tokenizer)
    if cfg.k > vocab:
        raise ValueError(f"--k {cfg.k} is larger than the vocabulary ({vocab} tokens)")
    parse_template(task.template)  # a bad template fails here, before anything starts
    extra = producer["verbalizer_ids"]
    extra_ids = torch.tensor(extra, device=device) if extra else None
    store = StoreWriter(
        cfg.out,
        producer=producer,
        tokenizer=tokenizer_record(tokenizer),
        k=cfg.k,
        layout=ChunkLayout(),
        part=f"rank{cfg.rank}",
    )
    summary = PassSummary()
    writer = _Writer(store, task, summary)
    writer.start()
    cuda = device.type == "cuda"
    total = cfg.num_examples - cfg.num_examples % getattr(task, "group_size", 1)
    mine = sum(
        min(cfg.shard_size, total - start)
        for start in range(0, total, cfg.shard_size)
        if (start // cfg.shard_size) % cfg.world_size == cfg.rank
    )
    summary.requested = mine
    bar = tqdm(
        total=mine, unit="ex", desc=f"teacher rank {cfg.rank}", dynamic_ncols=True, smoothing=0.1
    )
    t0 = time.perf_counter()
    if preparer is None:
        preparer = ShardPreparer(
            tokenizer,
            task.template,
            task.max_length,
            cfg.token_budget,
            workers=cfg.tokenize_workers,
        )
    done = {s.name for _, part in read_parts(cfg.out) for s in part.shards}
    shards = background(preparer.map(_shard_jobs(examples, cfg, total, done)))
    try:
        for (index, chunk), prepared in shards:
            summary.candidates += len(chunk)
            if prepared is None:
                summary.skipped_shards += 1
                bar.update(len(chunk))
                continue
            writer.put(("begin", index, chunk, prepared.prompts))
            for batch in prepared.batches:
                if not summary.startup_s:
                    summary.startup_s = time.perf_counter() - t0
                ids = torch.from_numpy(batch.input_ids)
                attention = (
                    torch.arange(ids.shape[1])[None, :] < torch.from_numpy(batch.lengths)[:, None]
                ).long()
                positions = torch.from_numpy(batch.mask_positions)
                if cuda:  # pinned, so the host-to-device copies run asynchronously
                    ids, attention, positions = (
                        t.pin_memory() for t in (ids, attention, positions)
                    )
                top = teacher_topk(
                    model,
                    ids.to(device, non_blocking=True),
                    attention.to(device, non_blocking=True),
                    torch.arange(len(batch.rows), device=device),
                    positions.to(device, non_blocking=True),
                    cfg.k,
                    extra_ids,
                )
                out = {"ids": top.ids, "logprobs": top.logprobs, "tail": top.tail_logmass}
                if top.extra_logprobs is not None:
                    out["extra"] = top.extra_logprobs
                event = None
                if cuda:  # copy back without waiting; the writer waits on the event
                    out = {
                        n: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(
                            t, non_blocking=True
                        )
                        for n, t in out.items()
                    }
                    event = torch.cuda.Event()
                    event.record()
                writer.put(("batch", batch.rows, event, out))
                summary.real_tokens += int(batch.lengths.sum())
                summary.computed_tokens += batch.input_ids.size
                summary.examples += len(batch.rows)
                bar.update(len(batch.rows))
                bar.set_postfix(
                    tok_s=f"{summary.real_tokens / (time.perf_counter() - t0):,.0f}",
                    pad_eff=f"{summary.padding_efficiency:.3f}",
                    refresh=False,
                )
            writer.put(("end",))
        writer.finish()
    except BaseException:
        shards.close()
        preparer.close(wait=False)
        writer.stop()
        raise
    finally:
        bar.close()
    preparer.close()
    summary.wall_s = time.perf_counter() - t0
    return summary


def finalize(out: Path, summary: PassSummary) -> None:
    manifest = finalize_store(out)
    summary.store_shards = len(manifest.shards)
    summary.store_examples = manifest.num_samples
    summary.store_bytes = manifest.num_bytes
