"""``StoreDataset``: a resumable, shuffling, rank- and worker-aware stream over a store.

Who reads what. With R ranks (torch.distributed) and W DataLoader workers there are
G = R * W readers; reader g = rank * W + worker. Each epoch has one global order: the shards
permuted by (seed, epoch), each shard's samples permuted by (seed, epoch, shard). When there
are at least G shards, reader g takes every G-th shard of that order; with fewer shards,
every reader walks all of them and takes every G-th sample. Shards without samples are left
out before choosing. Either way one epoch yields each sample exactly once across all readers.

Resuming. A reader's position is (epoch, samples yielded this epoch), plus the epoch its run
started at. ``state_dict()`` gives it and ``load_state_dict()`` restarts right after the last
yielded sample; shards before that point are skipped by their manifest counts without being
fetched. A resumed run with a finite ``epochs`` stops where the uninterrupted run would.
Inside DataLoader workers, use ``torchdata.stateful_dataloader.StatefulDataLoader``, which
calls these two methods in each worker and snapshots them per batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .draw_subsets import COUNT_FIELDS, draws_for_epoch
from .errors import StoreError
from .fingerprint import check_tokenizer
from .locations import DEFAULT_STALL_TIMEOUT
from .manifest import Manifest, load_manifest, manifest_location
from .shards import read_shard

__all__ = ["StoreDataset"]


def _permutation(n: int, *entropy: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(entropy))))
    return rng.permutation(n)


def _check_readers(rank: int | None, world_size: int | None) -> tuple[int | None, int | None]:
    """Both or neither of an explicit (rank, world_size), the rank inside the world."""
    if (rank is None) != (world_size is None):
        given, missing = ("rank", "world_size") if world_size is None else ("world_size", "rank")
        raise ValueError(
            f"StoreDataset: {given} is given but {missing} is not; give both "
            f"(or neither, to take them from torch.distributed)"
        )
    if world_size is not None and not 0 <= rank < world_size:
        raise ValueError(
            f"StoreDataset: rank {rank} is outside world_size {world_size} "
            f"(need 0 <= rank < world_size)"
        )
    return rank, world_size


def _draws_field(manifest: Manifest, source: str, draws: int | None) -> str | None:
    """The counts field to take ``draws`` of each epoch, None to keep every draw; refuses a
    count that the store's targets cannot give."""
    if draws is None:
        return None
    mode = manifest.targets["mode"]
    if mode not in COUNT_FIELDS:
        raise StoreError(
            f"{source}: draws_per_epoch {draws} needs sampled or hybrid targets; this store "
            f"keeps {mode} targets"
        )
    samples = manifest.targets["samples"]
    if not 1 <= draws <= samples:
        raise StoreError(
            f"{source}: draws_per_epoch must be between 1 and the store's {samples} draws per "
            f"mask, got {draws}"
        )
    return None if draws == samples else COUNT_FIELDS[mode]


class StoreDataset(IterableDataset):
    """Stream the examples of a store (directory, ``manifest.json`` path or URL).

    Args:
        store: where the manifest is; shards are read beside it unless ``shard_url`` is given.
        shard_url: template for shard locations, e.g. ``"pipe:curl -s http://h/s/{name}"``.
        seed, shuffle: the per-epoch order; ``shuffle=False`` keeps manifest order.
        epochs: how many epochs a run streams, counted from the epoch it started at (0, or
            what ``set_epoch`` set); a run resumed by ``load_state_dict`` keeps that count, so
            it yields only what the interrupted run had left. ``None`` streams forever.
        rank, world_size: override torch.distributed's (for tests and custom launchers); give
            both or neither, with ``0 <= rank < world_size``.
        tokenizer: if given (a tokenizer or its fingerprint), refuse a store written with
            another tokenizer.
        verify: check each shard's byte count and sha256 before decoding it.
        stall_timeout: seconds a manifest or shard read from a URL or a ``pipe:`` command may
            receive nothing before it fails with a ``StoreError`` naming the location
            (``locations.py``; local files are read directly).
        draws_per_epoch: a sampled or hybrid store's examples keep this many of their N draws
            per mask, another subset each epoch (``draw_subsets.py``); None or N: all of them.
    """

    def __init__(
        self,
        store: str | os.PathLike,
        *,
        shard_url: str | None = None,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = 1,
        rank: int | None = None,
        world_size: int | None = None,
        tokenizer: Any = None,
        verify: bool = True,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        draws_per_epoch: int | None = None,
    ):
        super().__init__()
        self.source = str(store)
        self.manifest: Manifest = load_manifest(store, stall_timeout=stall_timeout)
        self._draws = _draws_field(self.manifest, self.source, draws_per_epoch)
        self.draws_per_epoch = draws_per_epoch
        if tokenizer is not None:
            check_tokenizer(self.manifest, tokenizer, self.source)
        _, self._base = manifest_location(store)
        self._template = shard_url
        self.seed, self.shuffle, self.epochs, self.verify = seed, shuffle, epochs, verify
        self.stall_timeout = stall_timeout
        self._rank, self._world = _check_readers(rank, world_size)
        self._start = {"epoch": 0, "position": 0, "first_epoch": 0}
        self._epoch, self._position = 0, 0
        self._reader: tuple[int, int] | None = None

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    def shard_url(self, name: str) -> str:
        """Where shard ``name`` is read from: beside the manifest, or the ``shard_url`` template."""
        if self._template is None:
            return f"{self._base}/{name}"  # not a template: the path may hold braces
        return self._template.format(name=name)

    def _readers(self) -> tuple[int, int]:
        """(index of this reader, number of readers)."""
        if self._rank is not None and self._world is not None:
            rank, world = self._rank, self._world
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def _epoch_plan(self, epoch: int, reader: int, readers: int) -> list[tuple[int, np.ndarray]]:
        """This reader's (shard index, sample indices in reading order) for one epoch.

        Shards without samples (a teacher filter can empty one) take no part in the split.
        """
        shards = self.manifest.shards
        order = (
            _permutation(len(shards), self.seed, epoch) if self.shuffle else np.arange(len(shards))
        )
        order = [int(s) for s in order if shards[s].samples]

        def samples_of(s: int) -> np.ndarray:
            n = shards[s].samples
            return _permutation(n, self.seed, epoch, s) if self.shuffle else np.arange(n)

        if len(order) >= readers:
            return [(s, samples_of(s)) for s in order[reader::readers]]
        plan, seen = [], 0
        for s in order:
            first = (reader - seen) % readers  # first global position >= seen owned by reader
            plan.append((s, samples_of(s)[first::readers]))
            seen += shards[s].samples
        return plan

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader, readers = self._readers()
        start = self._start
        if "readers" in start and (start["readers"], start["reader"]) != (readers, reader):
            raise StoreError(
                f"{self.source}: the saved stream position belongs to reader {start['reader']} "
                f"of {start['readers']}, but this process is reader {reader} of {readers}; "
                f"resume with the same number of ranks and DataLoader workers"
            )
        self._reader = (reader, readers)
        epoch, skip = start["epoch"], start["position"]
        last = None if self.epochs is None else start["first_epoch"] + self.epochs
        while last is None or epoch < last:
            self._epoch, self._position = epoch, skip
            position = 0  # samples of this reader's epoch stream passed so far
            plan = self._epoch_plan(epoch, reader, readers)
            if last is None and not any(len(samples) for _, samples in plan):
                raise StoreError(
                    f"{self.source}: reader {reader} of {readers} (ranks x DataLoader workers) "
                    f"gets no sample: the store holds {self.manifest.num_samples} samples in "
                    f"{len(self.manifest.shards)} shards; use fewer workers or a larger store"
                )
            for shard_index, samples in plan:
                if position + len(samples) <= skip:
                    position += len(samples)
                    continue
                info = self.manifest.shards[shard_index]
                chunks = read_shard(
                    self.shard_url(info.name),
                    info,
                    verify=self.verify,
                    k=self.manifest.k,
                    vocab_size=self.manifest.vocab_size,
                    targets=self.manifest.targets,
                    stall_timeout=self.stall_timeout,
                )
                chunk_of = np.repeat(np.arange(len(chunks)), [c.n for c in chunks])
                chunk_start = np.cumsum([0] + [c.n for c in chunks])
                first = max(skip - position, 0)
                position += first
                for i in samples[first:]:
                    c = chunk_of[i]
                    example = chunks[c].example(int(i - chunk_start[c]))
                    if self._draws is not None:
                        example = draws_for_epoch(example, self._draws, self.draws_per_epoch,
                                                  self.seed, epoch, shard_index, int(i))  # fmt: skip
                    example["__key__"] = f"{info.name}/{int(i)}"
                    position += 1
                    self._position = position
                    yield example
            epoch, skip = epoch + 1, 0
            self._epoch, self._position = epoch, 0

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (as DistributedSampler does)."""
        self._start = {"epoch": epoch, "position": 0, "first_epoch": epoch}
        self._epoch, self._position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self._epoch,
            "position": self._position,
            "first_epoch": self._start["first_epoch"],
            "seed": self.seed,
        }
        if self._reader is not None:
            state["reader"], state["readers"] = self._reader
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise StoreError(
                f"{self.source}: the saved stream used seed {state['seed']}, this "
                f"dataset uses seed {self.seed}"
            )
        self._start = dict(state)
        self._epoch, self._position = state["epoch"], state["position"]
