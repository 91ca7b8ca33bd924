"""Tokenizing and batching shards ahead of the teacher, in worker processes.

Tokenization is the teacher pass's main CPU cost (tens of microseconds per example in the
tokenizer's Python layer). Run in a thread it would hold the GIL against the thread that
drives the GPU, so shards are prepared in ``workers`` processes (``spawn``ed, each with its own
copy of the tokenizer) a few shards ahead, and come back in order. ``workers=0`` prepares
them in the calling thread (tests, tiny runs).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .batching import token_budget_batches
from .shared.templates import EncodedPrompt, parse_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["PreparedBatch", "PreparedShard", "ShardPreparer"]


@dataclass
class PreparedBatch:
    rows: np.ndarray  # (B,) indices into the shard's examples
    input_ids: np.ndarray  # (B, L) int64, padded
    lengths: np.ndarray  # (B,) real tokens per row
    mask_positions: np.ndarray  # (B,)


@dataclass
class PreparedShard:
    prompts: list[EncodedPrompt]
    batches: list[PreparedBatch]


def prepare_shard(
    tokenizer: PreTrainedTokenizerBase,
    template_spec: str,
    max_length: int,
    token_budget: int,
    sentences: Sequence[Sequence[str]],
) -> PreparedShard:
    """Tokenize a shard's examples into the template and cut them into padded batches."""
    prompts = parse_template(template_spec).encode_batch(tokenizer, sentences, max_length)
    lengths = np.array([len(p.input_ids) for p in prompts])
    batches = []
    for rows in token_budget_batches(lengths, token_budget):
        ids = np.full((len(rows), int(lengths[rows].max())), tokenizer.pad_token_id, np.int64)
        for b, i in enumerate(rows):
            ids[b, : lengths[i]] = prompts[i].input_ids
        positions = np.array([prompts[i].mask_position for i in rows])
        batches.append(PreparedBatch(rows, ids, lengths[rows], positions))
    return PreparedShard(prompts, batches)


_WORKER: dict = {}


def _init_worker(
    tokenizer: PreTrainedTokenizerBase, template_spec: str, max_length: int, token_budget: int
) -> None:
    # One thread per worker: parallelism comes from the number of workers, and Rust threads
    # would compete with the process driving the teacher.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=tokenizer, args=(template_spec, max_length, token_budget))


def _prepare_in_worker(sentences: list[tuple[str, ...]]) -> PreparedShard:
    return prepare_shard(_WORKER["tokenizer"], *_WORKER["args"], sentences)


class ShardPreparer:
    """Prepare shards in order, up to ``ahead`` at a time in ``workers`` processes."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template_spec: str,
        max_length: int,
        token_budget: int,
        workers: int = 1,
        ahead: int = 2,
    ):
        self.args = (tokenizer, template_spec, max_length, token_budget)
        self.ahead = max(ahead, workers)
        self.pool = None
        if workers > 0:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=self.args,
            )
            for _ in range(workers):  # start them now: their imports overlap the model's load
                self.pool.submit(int)

    def map(self, jobs: Iterator[tuple]) -> Iterator[tuple]:
        """``jobs`` yields (key, sentences) or (key, None) to pass through unprepared;
        yields (key, PreparedShard | None) in the same order."""
        if self.pool is None:
            for key, sentences in jobs:
                yield key, (prepare_shard(*self.args, sentences) if sentences is not None else None)
            return
        pending: deque[tuple[object, Future | None]] = deque()
        for key, sentences in jobs:
            pending.append(
                (
                    key,
                    None
                    if sentences is None
                    else self.pool.submit(_prepare_in_worker, list(sentences)),
                )
            )
            while len(pending) > self.ahead or (pending and pending[0][1] is None):
                done_key, future = pending.popleft()
                yield done_key, future.result() if future is not None else None
        while pending:
            done_key, future = pending.popleft()
            yield done_key, future.result() if future is not None else None

    def close(self, wait: bool = True) -> None:
        """Stop the workers: ``wait`` for them after a finished run; on an error, don't."""
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)
