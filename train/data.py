"""Micro-batches mixed from several stores, resumable through ``StatefulDataLoader``.

Each micro-batch comes from *one* store, picked at random in proportion to the stores'
weights. Whole-batch mixing keeps a batch's top-k width (stores may differ in k) and its
label words (``hard``/``rule``) uniform; with gradient accumulation an optimizer step still
mixes tasks. The pick of batch n of reader g is a pure function of (seed, g, n), so the
mixing resumes exactly from a counter, next to each store's own stream position.

Every store is a ``StoreDataset`` streaming forever: it splits its shards across ranks and
DataLoader workers by itself, so each sample is seen once per epoch of that store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from smash.store.collate import collate_examples
from smash.store.locations import DEFAULT_STALL_TIMEOUT
from smash.store.reader import StoreDataset
from torch.utils.data import IterableDataset, get_worker_info

if TYPE_CHECKING:
    from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["MixedBatches", "loader_workers", "make_loader"]


def _reader_index() -> int:
    """This process's reader number: rank * workers + worker (as ``StoreDataset`` counts)."""
    rank = (
        torch.distributed.get_rank()
        if (torch.distributed.is_available() and torch.distributed.is_initialized())
        else 0
    )
    info = get_worker_info()
    return rank * (info.num_workers if info else 1) + (info.id if info else 0)


class MixedBatches(IterableDataset):
    """Collated micro-batches of ``batch_size`` examples, each from one of ``stores``.

    Yields ``collate_examples`` dicts plus ``store`` (int): which store the batch came from.
    """

    def __init__(
        self,
        stores: Sequence[StoreDataset],
        weights: Sequence[float],
        batch_size: int,
        pad_id: int,
        seed: int = 0,
    ):
        super().__init__()
        if len(stores) != len(weights) or not stores:
            raise ValueError("give one weight per store, and at least one store")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stores = list(stores)
        self.probs = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self._batches = 0
        self._start = 0

    def _pick(self, reader: int, n: int) -> int:
        if len(self.stores) == 1:
            return 0
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, reader, n])))
        return int(rng.choice(len(self.stores), p=self.probs))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader = _reader_index()
        streams = [iter(s) for s in self.stores]
        n = self._start
        while True:
            store = self._pick(reader, n)
            examples = [next(streams[store]) for _ in range(self.batch_size)]
            batch = collate_examples(examples, self.pad_id)
            batch["store"] = store
            n += 1
            self._batches = n
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self._batches, "streams": [s.state_dict() for s in self.stores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["streams"]) != len(self.stores):
            raise ValueError(
                f"the saved data state has {len(state['streams'])} stores, this "
                f"run has {len(self.stores)}: resume with the same stores"
            )
        self._start = self._batches = state["batches"]
        for stream, saved in zip(self.stores, state["streams"]):
            stream.load_state_dict(saved)


def make_loader(
    stores: Sequence[str],
    weights: Sequence[float],
    *,
    batch_size: int,
    pad_id: int,
    seed: int,
    num_workers: int,
    pin_memory: bool = False,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    draws_per_epoch: int | None = None,
) -> StatefulDataLoader:
    """A ``StatefulDataLoader`` over ``MixedBatches`` of the given store paths.

    ``draws_per_epoch``: sampled and hybrid stores give each epoch that many of a mask's
    draws (``smash.store.draw_subsets``). Shards are verified against their checksums as they
    are read; a bad shard, or a read
    that receives nothing for ``stall_timeout`` seconds, raises ``ShardError`` naming it
    (inside a worker, the DataLoader re-raises it with that text).
    """
    from torchdata.stateful_dataloader import StatefulDataLoader

    datasets = [
        StoreDataset(
            path,
            seed=seed,
            shuffle=True,
            epochs=None,
            stall_timeout=stall_timeout,
            draws_per_epoch=draws_per_epoch,
        )
        for path in stores
    ]
    mixed = MixedBatches(datasets, weights, batch_size, pad_id, seed=seed)
    # Its own generator: starting an iterator draws a worker seed, which must not come from
    # the global RNG (a resumed run starts its iterator after restoring that RNG's state).
    return StatefulDataLoader(
        mixed,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


def loader_workers(state: dict[str, Any]) -> int:
    """How many DataLoader workers a ``StatefulDataLoader`` state was saved with (torchdata
    records the count in the main snapshot of a multi-process state only)."""
    return int(state.get("_snapshot", {}).get("_main_snapshot", {}).get("_num_workers", 0))
