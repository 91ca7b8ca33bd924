"""StoreDataset: exact coverage across ranks and workers, deterministic shuffles, exact resume,
and reading over http://."""

import functools
import http.server
import itertools
import threading
from collections import Counter

import pytest
import torch
from smash.store.collate import collate_examples
from smash.store.errors import StoreError
from smash.store.manifest import finalize_store
from smash.store.reader import StoreDataset
from smash.store.writer import StoreWriter
from test_store import VOCAB, assert_same, canonical, make_examples, write_store
from torchdata.stateful_dataloader import StatefulDataLoader

N = 137


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    examples = make_examples(N, seed=11)
    write_store(root, examples, max_samples=20)  # 7 shards: 6 x 20 + 17
    finalize_store(root)
    return root, {f"shard-{i // 20:06d}.tar/{i % 20}": ex for i, ex in enumerate(examples)}


def keys(dataset):
    return [ex["__key__"] for ex in dataset]


class _Worker:
    """Stands in for torch's worker info inside one process."""

    def __init__(self, monkeypatch, wid, num):
        info = type("Info", (), {"id": wid, "num_workers": num})()
        monkeypatch.setattr("smash.store.reader.get_worker_info", lambda: info)


@pytest.mark.parametrize("ranks,workers", [(1, 1), (2, 1), (2, 3), (4, 2), (3, 5)])
def test_ranks_and_workers_cover_every_sample_once(store, monkeypatch, ranks, workers):
    root, _ = store  # 7 shards: (4, 2) and (3, 5) have more readers than shards
    seen = Counter()
    for rank in range(ranks):
        for wid in range(workers):
            _Worker(monkeypatch, wid, workers)
            seen.update(keys(StoreDataset(root, rank=rank, world_size=ranks, seed=3)))
    assert sum(seen.values()) == N
    assert len(seen) == N and set(seen.values()) == {1}


def test_shuffle_is_deterministic_per_epoch(store):
    root, _ = store
    first = keys(StoreDataset(root, seed=5))
    assert first == keys(StoreDataset(root, seed=5))
    assert first != keys(StoreDataset(root, seed=6))
    assert first != keys(StoreDataset(root, shuffle=False))
    two_epochs = keys(StoreDataset(root, seed=5, epochs=2))
    assert two_epochs[:N] == first and sorted(two_epochs[N:]) == sorted(first)
    assert two_epochs[N:] != first
    ds = StoreDataset(root, seed=5)
    ds.set_epoch(1)
    assert keys(ds) == two_epochs[N:]


def test_values_survive_the_reader(store):
    root, by_key = store
    for ex in StoreDataset(root, seed=1):
        assert_same(canonical(by_key[ex["__key__"]]), ex)


@pytest.mark.parametrize("stop", [0, 1, 19, 20, 21, 70, 136, 137, 150])
def test_resume_joins_to_the_uninterrupted_stream(store, stop):
    root, _ = store
    full = keys(StoreDataset(root, seed=9, epochs=2))
    ds = StoreDataset(root, seed=9, epochs=2)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(stop)]
    state = ds.state_dict()
    resumed = StoreDataset(root, seed=9, epochs=2)
    resumed.load_state_dict(state)
    assert head + keys(resumed) == full  # the resumed run stops where the full run stops


@pytest.mark.parametrize("stop", [3, 7, 10, 14, 20])
def test_resume_in_a_later_epoch_streams_only_what_is_left(tmp_path, stop):
    write_store(tmp_path, make_examples(7, seed=4), max_samples=4)  # 2 shards: 4 + 3
    finalize_store(tmp_path)
    full = keys(StoreDataset(tmp_path, seed=3, epochs=3))
    assert len(full) == 21
    ds = StoreDataset(tmp_path, seed=3, epochs=3)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(stop)]
    resumed = StoreDataset(tmp_path, seed=3, epochs=3)
    resumed.load_state_dict(ds.state_dict())
    assert head + keys(resumed) == full
    after_set_epoch = StoreDataset(tmp_path, seed=3, epochs=2)
    after_set_epoch.set_epoch(1)
    assert keys(after_set_epoch) == full[7:]


def test_resume_across_ranks_and_workers_with_stateful_loader(store, monkeypatch):
    root, _ = store

    def loader(ds):
        return StatefulDataLoader(
            ds,
            batch_size=4,
            num_workers=2,
            collate_fn=functools.partial(collate_examples, pad_id=1),
        )

    for rank in range(2):
        full = [
            k
            for b in loader(StoreDataset(root, rank=rank, world_size=2, seed=2))
            for k in b["keys"]
        ]
        dl = loader(StoreDataset(root, rank=rank, world_size=2, seed=2))
        it = iter(dl)
        head = [k for _ in range(5) for k in next(it)["keys"]]
        state = dl.state_dict()
        del it
        dl2 = loader(StoreDataset(root, rank=rank, world_size=2, seed=2))
        dl2.load_state_dict(state)
        tail = [k for b in dl2 for k in b["keys"]]
        assert sorted(head + tail) == sorted(full) and len(head + tail) == len(full)
        assert head == full[:20]


def test_resume_with_other_reader_count_is_refused(store):
    root, _ = store
    ds = StoreDataset(root, rank=0, world_size=2)
    next(iter(ds))
    state = ds.state_dict()
    other = StoreDataset(root, rank=0, world_size=3)
    other.load_state_dict(state)
    with pytest.raises(StoreError, match="reader 0 of 2.*reader 0 of 3"):
        next(iter(other))


def test_collate_pads_and_flattens_mask_rows(store):
    root, _ = store
    examples = list(StoreDataset(root, shuffle=False))[:5]
    batch = collate_examples(examples, pad_id=1)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (5, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    rows = sum(len(e["mask_positions"]) for e in examples)
    assert batch["topk_ids"].shape == (rows, 8) and batch["topk_logprobs"].dtype == torch.float16
    b, p = batch["mask_batch"], batch["mask_positions"]
    assert all(p[i] < lengths[b[i]] for i in range(rows))


def test_reads_over_http(store):
    root, by_key = store
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        got = list(StoreDataset(url, seed=4))
        assert [e["__key__"] for e in got] == keys(StoreDataset(root, seed=4))
        for ex in got[:10]:
            assert_same(canonical(by_key[ex["__key__"]]), ex)
        piped = StoreDataset(url, shard_url=f"pipe:curl -s -f {url}/{{name}}", seed=4)
        assert keys(piped) == [e["__key__"] for e in got]
    finally:
        server.shutdown()


def test_endless_stream_with_nothing_to_read_is_an_error(tmp_path):
    write_store(tmp_path, make_examples(3, seed=2), max_samples=10)
    finalize_store(tmp_path)
    assert keys(StoreDataset(tmp_path, rank=3, world_size=4)) == []  # one epoch: just empty
    with pytest.raises(StoreError, match="reader 3 of 4 .* gets no sample.*3 samples in 1"):
        next(iter(StoreDataset(tmp_path, rank=3, world_size=4, epochs=None)))


def write_sized_store(root, sizes):
    """A store whose shard i holds sizes[i] examples (0: an empty shard)."""
    examples = iter(make_examples(sum(sizes), seed=8))
    writer = StoreWriter(
        root, producer={}, tokenizer={"fingerprint": "x", "vocab_size": VOCAB}, k=8
    )
    for index, n in enumerate(sizes):
        writer.write_shard(index, itertools.islice(examples, n))
    finalize_store(root)


@pytest.mark.parametrize(
    "sizes,ranks,workers", [([5, 0], 2, 1), ([3, 0, 0, 0, 0, 2], 2, 2), ([0, 4, 0, 4, 4], 3, 1)]
)
def test_empty_shards_take_no_part_in_the_split(tmp_path, monkeypatch, sizes, ranks, workers):
    write_sized_store(tmp_path, sizes)
    total, epochs = sum(sizes), 3
    seen = [Counter() for _ in range(epochs)]
    for rank, wid in itertools.product(range(ranks), range(workers)):
        _Worker(monkeypatch, wid, workers)
        ds = StoreDataset(tmp_path, rank=rank, world_size=ranks, seed=1, epochs=None)
        for ex in ds:  # an endless stream never runs dry
            epoch = ds.state_dict()["epoch"]  # the epoch of the sample just yielded
            if epoch == epochs:
                break
            seen[epoch][ex["__key__"]] += 1
    for counts in seen:  # every sample exactly once per epoch across all readers
        assert len(counts) == total and set(counts.values()) == {1}


def test_resume_with_empty_shards_joins_to_the_uninterrupted_stream(tmp_path):
    write_sized_store(tmp_path, [3, 0, 0, 0, 0, 2])
    for rank in range(2):
        full = keys(StoreDataset(tmp_path, rank=rank, world_size=2, seed=2, epochs=2))
        for stop in range(1, len(full) + 1):
            ds = StoreDataset(tmp_path, rank=rank, world_size=2, seed=2, epochs=2)
            head = [ex["__key__"] for ex in itertools.islice(ds, stop)]
            resumed = StoreDataset(tmp_path, rank=rank, world_size=2, seed=2, epochs=2)
            resumed.load_state_dict(ds.state_dict())
            assert head + keys(resumed) == full


@pytest.mark.parametrize("name", ["store{a}", "store{}", "{name}"])
def test_store_path_may_hold_braces(tmp_path, name):
    root = tmp_path / name
    write_store(root, make_examples(5, seed=6), max_samples=3)
    finalize_store(root)
    assert sorted(keys(StoreDataset(root))) == sorted(keys(StoreDataset(root / "manifest.json")))
    assert len(keys(StoreDataset(root))) == 5


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 1}, "rank is given but world_size is not"),
        ({"world_size": 2}, "world_size is given but rank is not"),
        ({"rank": 2, "world_size": 2}, "rank 2 is outside world_size 2"),
        ({"rank": -1, "world_size": 2}, "rank -1 is outside world_size 2"),
        ({"rank": 0, "world_size": 0}, "rank 0 is outside world_size 0"),
    ],
)
def test_rank_and_world_size_come_together_and_agree(store, kwargs, message):
    root, _ = store
    with pytest.raises(ValueError, match=message):
        StoreDataset(root, **kwargs)
