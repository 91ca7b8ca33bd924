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
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .batching import token_budget_batches
from .shared.masking import Masking, example_rng
from .shared.templates import parse_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "MaskedTextEncoding",
    "PreparedBatch",
    "PreparedExample",
    "PreparedShard",
    "ShardPreparer",
    "TemplateEncoding",
]


@dataclass
class PreparedExample:
    """One example's ids and answer positions (one for a prompt, several for masked text)."""

    input_ids: np.ndarray  # (L,) int64
    mask_positions: np.ndarray  # (M,) int64
    mlm_labels: np.ndarray | None = None  # (M,) the tokens masked away (masked text only)


@dataclass(frozen=True)
class TemplateEncoding:
    """Examples as prompts: the task's LM-BFF template filled with its sentences;
    ``sentence_limits`` caps sentences' tokens by sentence index first (LM-BFF's
    ``first_sent_limit``: ``((0, 110),)``), as the few-shot learners do."""

    template: str
    sentence_limits: tuple[tuple[int, int], ...] = ()

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, batch: ShardInput, max_length: int
    ) -> list[PreparedExample]:
        prompts = parse_template(self.template).encode_batch(
            tokenizer, batch.sentences, max_length, dict(self.sentence_limits)
        )
        return [
            PreparedExample(np.asarray(p.input_ids, np.int64), np.array([p.mask_position]))
            for p in prompts
        ]


@dataclass(frozen=True)
class MaskedTextEncoding:
    """Examples as raw text (their first sentence: a segment of a document) with the
    tokenizer's special tokens, masked by ``masking``; example ``i`` of the task's stream is
    masked with ``example_rng(seed, i)``, so its masks do not depend on shards or ranks."""

    masking: Masking
    seed: int

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, batch: ShardInput, max_length: int
    ) -> list[PreparedExample]:
        encoded = tokenizer(
            [sentences[0] for sentences in batch.sentences],
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=True,
        )
        out = []
        for i, (ids, special) in enumerate(
            zip(encoded["input_ids"], encoded["special_tokens_mask"])
        ):
            masked = self.masking.apply(
                np.asarray(ids, np.int64),
                ~np.asarray(special, bool),
                example_rng(self.seed, batch.first_index + i),
                mask_id=tokenizer.mask_token_id,
                vocab_size=len(tokenizer),
            )
            out.append(
                PreparedExample(masked.input_ids, masked.mask_positions, masked.original_ids)
            )
        return out


Encoding = TemplateEncoding | MaskedTextEncoding


@dataclass(frozen=True)
class ShardInput:
    """A shard's examples to prepare: the index of its first in the task's stream, and the
    sentences of each."""

    first_index: int
    sentences: list[tuple[str, ...]]


@dataclass
class PreparedBatch:
    rows: np.ndarray  # (B,) indices into the shard's examples
    input_ids: np.ndarray  # (B, L) int64, padded
    lengths: np.ndarray  # (B,) real tokens per row
    mask_batch: np.ndarray  # (R,) the row of the batch each answer position is in
    mask_positions: np.ndarray  # (R,)
    mask_rows: np.ndarray  # (R,) indices into the shard's answer positions (example order)


@dataclass
class PreparedShard:
    examples: list[PreparedExample]
    batches: list[PreparedBatch]


def prepare_shard(
    tokenizer: PreTrainedTokenizerBase,
    encoding: Encoding,
    max_length: int,
    token_budget: int,
    shard: ShardInput,
) -> PreparedShard:
    """Tokenize a shard's examples and cut them into padded batches."""
    examples = encoding.encode(tokenizer, shard, max_length)
    lengths = np.array([len(e.input_ids) for e in examples])
    first_row = np.cumsum([0] + [len(e.mask_positions) for e in examples])
    batches = []
    for rows in token_budget_batches(lengths, token_budget):
        ids = np.full((len(rows), int(lengths[rows].max())), tokenizer.pad_token_id, np.int64)
        for b, i in enumerate(rows):
            ids[b, : lengths[i]] = examples[i].input_ids
        counts = [len(examples[i].mask_positions) for i in rows]
        batches.append(
            PreparedBatch(
                rows,
                ids,
                lengths[rows],
                np.repeat(np.arange(len(rows)), counts),
                np.concatenate([examples[i].mask_positions for i in rows]),
                np.concatenate([np.arange(first_row[i], first_row[i + 1]) for i in rows]),
            )
        )
    return PreparedShard(examples, batches)


_WORKER: dict = {}


def _init_worker(
    tokenizer: PreTrainedTokenizerBase, encoding: Encoding, max_length: int, token_budget: int
) -> None:
    # One thread per worker: parallelism comes from the number of workers, and Rust threads
    # would compete with the process driving the teacher.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=tokenizer, args=(encoding, max_length, token_budget))


def _prepare_in_worker(shard: ShardInput) -> PreparedShard:
    return prepare_shard(_WORKER["tokenizer"], *_WORKER["args"], shard)


class ShardPreparer:
    """Prepare shards in order, up to ``ahead`` at a time in ``workers`` processes."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        encoding: Encoding,
        max_length: int,
        token_budget: int,
        workers: int = 1,
        ahead: int = 2,
    ):
        self.args = (tokenizer, encoding, max_length, token_budget)
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
        """``jobs`` yields (key, ShardInput) or (key, None) to pass through unprepared;
        yields (key, PreparedShard | None) in the same order."""
        if self.pool is None:
            for key, shard in jobs:
                yield key, (prepare_shard(*self.args, shard) if shard is not None else None)
            return
        pending: deque[tuple[object, Future | None]] = deque()
        for key, shard in jobs:
            pending.append(
                (key, None if shard is None else self.pool.submit(_prepare_in_worker, shard))
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
