"""The teacher pass: task examples -> teacher top-k (or sampled) targets at every mask -> shards.

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

import hashlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from smash.store.codec import ChunkLayout
from smash.store.fingerprint import tokenizer_record
from smash.store.manifest import ShardInfo, finalize_store, read_parts
from smash.store.writer import StoreWriter, shard_name
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from .background import background
from .shard_prep import (
    MaskedTextEncoding,
    PreparedBatch,
    ShardInput,
    ShardPreparer,
    TemplateEncoding,
)
from .shard_writer import BeginShard, EndShard, ShardWriterThread, TeacherBatch
from .shared.adapters import ModelAdapter, adapter_for
from .shared.sampled_targets import (
    TeacherHybrid,
    TeacherSample,
    counter_uniforms,
    hybrid_record,
    hybrid_targets,
    sampled_targets,
    targets_record,
)
from .shared.teacher_targets import TeacherTopK, teacher_topk
from .shared.templates import answer_token_id, parse_template
from .tasks import IntermediateTask, TaskExample

__all__ = [
    "NoExamples",
    "PassConfig",
    "PassSummary",
    "finalize",
    "nothing_kept",
    "run_teacher_pass",
    "start_preparer",
]


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
    targets: str = "topk"  # "topk"; "sampled": k draws per mask (k = the number of samples);
    # "hybrid": the top-k and ``samples`` draws from outside it
    samples: int | None = None  # hybrid targets' draws per mask
    sample_seed: int | None = None  # seeds the draws of sampled targets (None: ``seed``)
    proposal_temperature: float = 1.0  # sampled targets: draw from the teacher at this T

    @property
    def draw_seed(self) -> int:
        return self.seed if self.sample_seed is None else self.sample_seed

    def targets_record(self) -> dict:
        """The manifest's ``targets`` section for this pass."""
        if self.targets == "topk":
            return {"mode": "topk"}
        if self.targets == "hybrid":
            return hybrid_record(self.samples, self.draw_seed)
        return targets_record(self.k, self.draw_seed, self.proposal_temperature)


@dataclass
class PassSummary:
    requested: int = 0  # candidates this process was asked for (--num-examples share)
    candidates: int = 0  # candidates the corpus gave it (fewer when it runs out)
    stream_shards: int = 0  # shards the example stream filled, this process's or not
    examples: int = 0  # candidates sent through the teacher by this process
    kept: int = 0  # examples written (after the filter)
    shards: int = 0  # shards written by this process in this run
    skipped_shards: int = 0  # finished in an earlier run
    redone_shards: list[str] = field(default_factory=list)  # recorded, but damaged or missing
    statistics: list[np.ndarray] = field(default_factory=list)  # a filter's, per candidate
    bytes: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0  # until the first batch reached the teacher (first shard's prep)
    store_shards: int = 0  # after finalize (rank 0)
    store_examples: int = 0
    store_bytes: int = 0

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / max(self.computed_tokens, 1)


class NoExamples(ValueError):
    """The task drew no example at all from the corpus, or its filter kept none."""


def nothing_kept(task: IntermediateTask, summary: PassSummary, world_size: int = 1) -> str:
    """Why a pass made a store of no example: how many candidates its filter rejected and,
    for a task with a ``statistic``, that number's spread against the ``threshold`` (over
    this process's candidates)."""
    rule = f" ({task.statistic_name} >= {task.threshold:g})" if summary.statistics else ""
    rank = f" by rank 0 of {world_size}" if world_size > 1 else ""
    text = (
        f"task {task.name!r} kept no example: its filter{rule} rejected all "
        f"{summary.examples:,} candidates sent through the teacher{rank}"
    )
    if not summary.statistics:
        return text + "; nothing was kept"
    low, median, high, top = np.quantile(np.concatenate(summary.statistics), [0, 0.5, 0.9, 1])
    return text + (
        f" ({task.statistic_name}: min {low:.3f}, median {median:.3f}, 90% {high:.3f}, "
        f"max {top:.3f}); nothing was kept (lower --threshold)"
    )


def _shards(
    stream: Iterator[TaskExample], cfg: PassConfig, total: int
) -> Iterator[tuple[int, list[TaskExample]]]:
    it = itertools.islice(stream, total)
    for index in itertools.count():
        chunk = list(itertools.islice(it, cfg.shard_size))
        if not chunk:
            return
        yield index, chunk


def _damage(path: Path, records: list[ShardInfo]) -> str | None:
    """Why a shard recorded as finished must be written again (None: it is intact).

    Its size is compared with the records, then its sha256: the size alone says little, since
    tar pads every small shard to 10,240 bytes (a shard of another run, or a flipped byte,
    has the recorded size). Hashing reads each finished shard once, in the background thread
    that feeds the teacher.
    """
    if not path.exists():
        return "its file is missing"
    size = path.stat().st_size
    if all(size != r.bytes for r in records):
        return f"its file has {size:,} bytes, the record {records[-1].bytes:,}"
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    if all(digest != r.sha256 for r in records):
        return "its checksum differs from the record"
    return None


def _shard_jobs(
    examples: Iterator[TaskExample],
    cfg: PassConfig,
    total: int,
    done: dict[str, list[ShardInfo]],
    summary: PassSummary,
) -> Iterator[tuple]:
    """This rank's shards as ((index, examples), what to prepare or None to skip).

    A shard recorded by an earlier run is skipped when its file is intact; otherwise it is
    written again (and said so).
    """
    for index, chunk in _shards(examples, cfg, total):
        summary.stream_shards += 1
        if index % cfg.world_size != cfg.rank:
            continue
        name = shard_name(index)
        finished = name in done
        if finished and (why := _damage(cfg.out / name, done[name])):
            tqdm.write(f"[rank {cfg.rank}] {name} was finished, but {why}: writing it again")
            summary.redone_shards.append(name)
            finished = False
        todo = ShardInput(index * cfg.shard_size, [ex.sentences for ex in chunk])
        yield (index, chunk), (None if finished else todo)


def start_preparer(
    task: IntermediateTask, tokenizer: PreTrainedTokenizerBase, cfg: PassConfig
) -> ShardPreparer:
    """Start the tokenizer processes of a pass (the CLI starts them before the model loads)."""
    masking = getattr(task, "masking", None)
    encoding = (
        TemplateEncoding(task.template, tuple(getattr(task, "sentence_limits", ())))
        if masking is None
        else MaskedTextEncoding(masking, cfg.seed)
    )
    return ShardPreparer(
        tokenizer, encoding, task.max_length, cfg.token_budget, workers=cfg.tokenize_workers
    )


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
    answer_id = answer_token_id(tokenizer)  # <mask>, or <extra_id_0> for T5
    vocab = len(tokenizer)
    if cfg.k > vocab:
        raise ValueError(f"--k {cfg.k} is larger than the vocabulary ({vocab} tokens)")
    if task.template is not None:
        parse_template(task.template)  # a bad template fails here, before anything starts
    adapter = adapter_for(model, sentinel_id=answer_id)
    verbalizer = producer["verbalizer_ids"]
    verbalizer_ids = torch.tensor(verbalizer, device=device) if verbalizer else None
    store = StoreWriter(
        cfg.out,
        producer=producer,
        tokenizer=tokenizer_record(tokenizer),
        k=cfg.k,
        layout=ChunkLayout(),
        part=f"rank{cfg.rank}",
        targets=cfg.targets_record(),
    )
    summary = PassSummary()
    writer = ShardWriterThread(store, task, summary)
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
        preparer = start_preparer(task, tokenizer, cfg)
    done: dict[str, list[ShardInfo]] = {}
    for _, part in read_parts(cfg.out):
        for info in part.shards:
            done.setdefault(info.name, []).append(info)
    shards = background(preparer.map(_shard_jobs(examples, cfg, total, done, summary)))
    try:
        for (index, chunk), prepared in shards:
            summary.candidates += len(chunk)
            if prepared is None:
                summary.skipped_shards += 1
                bar.update(len(chunk))
                continue
            writer.put(BeginShard(index, chunk, prepared.examples))
            for batch in prepared.batches:
                if not summary.startup_s:
                    summary.startup_s = time.perf_counter() - t0
                ids = torch.from_numpy(batch.input_ids)
                attention = (
                    torch.arange(ids.shape[1])[None, :] < torch.from_numpy(batch.lengths)[:, None]
                ).long()
                rows = torch.from_numpy(batch.mask_batch)
                positions = torch.from_numpy(batch.mask_positions)
                if cuda:  # pinned, so the host-to-device copies run asynchronously
                    ids, attention, rows, positions = (
                        t.pin_memory() for t in (ids, attention, rows, positions)
                    )
                prompts = {
                    "input_ids": ids.to(device, non_blocking=True),
                    "attention_mask": attention.to(device, non_blocking=True),
                    "mask_batch": rows.to(device, non_blocking=True),
                    "mask_positions": positions.to(device, non_blocking=True),
                }
                top = _targets(adapter, prompts, cfg, index, batch, verbalizer_ids, vocab)
                out = top.stored_fields()
                if top.verbalizer_logprobs is not None:
                    out["verbalizer_logprobs"] = top.verbalizer_logprobs
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
                writer.put(TeacherBatch(batch.mask_rows, out, event))
                summary.real_tokens += int(batch.lengths.sum())
                summary.computed_tokens += batch.input_ids.size
                summary.examples += len(batch.rows)
                bar.update(len(batch.rows))
                bar.set_postfix(
                    tok_s=f"{summary.real_tokens / (time.perf_counter() - t0):,.0f}",
                    pad_eff=f"{summary.padding_efficiency:.3f}",
                    refresh=False,
                )
            writer.put(EndShard())
        writer.finish()
        if summary.stream_shards == 0:
            raise NoExamples(
                f"task {task.name!r} made no example from this corpus (nothing was written)"
            )
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


def _targets(
    adapter: ModelAdapter,
    prompts: dict[str, torch.Tensor],
    cfg: PassConfig,
    shard: int,
    batch: PreparedBatch,
    verbalizer_ids: torch.Tensor | None,
    vocab: int,
) -> TeacherTopK | TeacherSample | TeacherHybrid:
    """The teacher's targets for a batch: top-k; or ``cfg.k`` draws per mask (hybrid: the
    top-k and ``cfg.samples`` draws from outside it) seeded by the example's place in the
    task's stream (shard ``shard``, its row within it) and the mask's place among the example's
    masks."""
    if cfg.targets == "topk":
        return teacher_topk(adapter, prompts, cfg.k, verbalizer_ids)
    keys = shard * cfg.shard_size + batch.rows[batch.mask_batch].astype(np.int64)
    # an example's masks are consecutive rows: its first row's index is where its run starts
    masks = np.arange(len(batch.mask_batch)) - np.searchsorted(batch.mask_batch, batch.mask_batch)
    draws = cfg.samples if cfg.targets == "hybrid" else cfg.k
    uniforms = counter_uniforms(cfg.draw_seed, keys, masks.astype(np.int64), draws)
    hidden = adapter.answers(prompts).hidden
    uniforms = torch.from_numpy(uniforms).to(hidden.device)
    if cfg.targets == "hybrid":
        return hybrid_targets(adapter, hidden, cfg.k, uniforms, verbalizer_ids, vocab)
    return sampled_targets(
        adapter, hidden, uniforms, verbalizer_ids, cfg.proposal_temperature, vocab
    )


def finalize(out: Path, summary: PassSummary) -> None:
    manifest = finalize_store(out)
    summary.store_shards = len(manifest.shards)
    summary.store_examples = manifest.num_samples
    summary.store_bytes = manifest.num_bytes
