"""Draws per epoch: a sampled or hybrid store's examples give each epoch another m of their N
draws, a pure function of (seed, epoch, sample); the estimate of Eq. 1 stays unbiased; the
option is refused where a store has no draws or too few, and a run with it trains and resumes."""

import numpy as np
import pytest
import torch
from smash.store.draw_subsets import draws_for_epoch, subset_counts
from smash.store.errors import StoreError
from smash.store.reader import StoreDataset
from smash.train.config import ConfigError, load_config
from test_hybrid_targets import HYBRID, K, R, hybrid_batch, loss_and_grad, problem  # noqa: F401
from test_precompute import run
from train_support import tiny_config


def test_a_subset_keeps_m_of_each_rows_draws():
    counts = np.array([[3, 2, 1, 0], [6, 0, 0, 0], [0, 0, 0, 0]])
    rng = np.random.Generator(np.random.PCG64(0))
    for _ in range(50):
        sub = subset_counts(counts, 4, rng)
        assert sub[:2].sum(1).tolist() == [4, 4] and (sub <= counts).all()
        assert sub[2].tolist() == [0, 0, 0, 0]  # no draws: nothing to choose
    assert (subset_counts(counts, 6, rng) == counts).all()  # m = N: every draw


def test_a_subset_is_a_function_of_seed_epoch_shard_and_sample():
    example = {"tail_counts": np.array([[5, 4, 3, 0]]), "tail_ids": np.array([[1, 2, 3, 9]])}
    one = draws_for_epoch(example, "tail_counts", 6, 42, 3, 0, 7)
    assert (one["tail_counts"] == draws_for_epoch(example, "tail_counts", 6, 42, 3, 0, 7)
            ["tail_counts"]).all()  # fmt: skip
    others = {tuple(draws_for_epoch(example, "tail_counts", 6, 42, e, 0, 7)["tail_counts"][0])
              for e in range(20)}  # fmt: skip
    assert len(others) > 1 and one["tail_ids"] is example["tail_ids"]
    shards = {tuple(draws_for_epoch(example, "tail_counts", 6, 42, 3, s, 7)["tail_counts"][0])
              for s in range(20)}  # fmt: skip
    assert len(shards) > 1


def test_the_estimate_with_m_of_n_draws_stays_unbiased(problem):  # noqa: F811
    """8 draws stored per row, 4 of them taken per epoch: averaged over 1,000 sampling seeds x
    one epoch each, loss and gradient are within 4 standard errors of the 8-draw estimate's
    mean, which is Eq. 1's (``test_hybrid_targets``)."""
    teacher, student = problem
    seeds = 1000
    full = hybrid_batch(teacher, seeds, 8)
    rng = np.random.Generator(np.random.PCG64(1))
    subset = dict(full, tail_counts=torch.from_numpy(
        subset_counts(full["tail_counts"].numpy(), 4, rng)))  # fmt: skip
    assert (subset["tail_counts"].sum(1) == 4).all()
    loss_all, grad_all = loss_and_grad(student, full, seeds)
    loss_sub, grad_sub = loss_and_grad(student, subset, seeds)
    # the per-seed difference of the two estimates has mean 0 if the subset is unbiased
    diff, grad_diff = loss_sub - loss_all, grad_sub - grad_all
    se = diff.std(0) / seeds**0.5
    grad_se = grad_diff.std(0) / seeds**0.5
    assert ((diff.mean(0)).abs() < 4 * se).all(), (diff.mean(0), se)
    assert ((grad_diff.mean(0)).abs() <= 4 * grad_se + 1e-6).all()  # 1e-6: fp32 round-off
    assert (se > 0).all()  # the subsets did differ from the stores' draws
    assert R == len(teacher) and K == 4


@pytest.fixture(scope="module")
def hybrid_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid")
    assert run(tiny, out, *HYBRID, k=4) == 0  # 6 draws per mask
    return out


@pytest.fixture(scope="module")
def sampled_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled")
    assert run(tiny, out, "--targets", "sampled", "--samples", "6", k=None) == 0
    return out


def test_a_sampled_store_stream_takes_m_draws_each_epoch(sampled_store):
    full, sub = _stream(sampled_store), _stream(sampled_store, draws_per_epoch=4)
    for whole, part in zip(full, sub, strict=True):
        assert (whole["sample_counts"].sum(1) == 6).all()
        assert (part["sample_counts"].sum(1) == 4).all()
        assert (part["sample_counts"] <= whole["sample_counts"]).all()


def _stream(store, **kw) -> list[dict]:
    return list(StoreDataset(store, shuffle=True, seed=3, epochs=2, rank=0, world_size=1, **kw))


def test_a_store_stream_takes_m_draws_each_epoch(hybrid_store):
    full, sub = _stream(hybrid_store), _stream(hybrid_store, draws_per_epoch=2)
    assert [e["__key__"] for e in full] == [e["__key__"] for e in sub]
    half = len(full) // 2
    for whole, part in zip(full, sub):
        drawn = whole["tail_counts"].sum(1)
        assert (part["tail_counts"].sum(1) == np.where(drawn > 0, 2, 0)).all()
        assert (part["tail_counts"] <= whole["tail_counts"]).all()
        assert (part["tail_ids"] == whole["tail_ids"]).all()
    by_key = [{e["__key__"]: e["tail_counts"].tobytes() for e in sub[s]}
              for s in (slice(None, half), slice(half, None))]  # fmt: skip
    assert by_key[0] != by_key[1]  # epoch 0's subsets are not epoch 1's
    assert [e["tail_counts"].tolist() for e in sub] == [
        e["tail_counts"].tolist() for e in _stream(hybrid_store, draws_per_epoch=2)
    ]


def test_a_resumed_stream_gives_the_same_subsets(hybrid_store):
    uninterrupted = _stream(hybrid_store, draws_per_epoch=3)
    first = StoreDataset(hybrid_store, seed=3, epochs=2, rank=0, world_size=1, draws_per_epoch=3)
    it = iter(first)
    head = [next(it) for _ in range(len(uninterrupted) // 2 + 1)]
    resumed = StoreDataset(hybrid_store, seed=3, epochs=2, rank=0, world_size=1,
                           draws_per_epoch=3)  # fmt: skip
    resumed.load_state_dict(first.state_dict())
    got = head + list(resumed)
    assert [e["tail_counts"].tolist() for e in got] == [
        e["tail_counts"].tolist() for e in uninterrupted
    ]


@pytest.mark.parametrize(
    "draws, topk, message",
    [(7, False, "between 1 and the store's 6 draws per mask, got 7"),
     (0, False, "between 1 and the store's 6 draws per mask, got 0"),
     (2, True, "needs sampled or hybrid targets; this store keeps topk")],
)  # fmt: skip
def test_draws_a_store_cannot_give_are_refused(tiny, hybrid_store, tmp_path, draws, topk,
                                               message):  # fmt: skip
    store = hybrid_store
    if topk:
        store = tmp_path / "topk"
        assert run(tiny, store, k=4) == 0
    with pytest.raises(StoreError, match=message) as err:
        StoreDataset(store, draws_per_epoch=draws)
    assert str(store) in str(err.value)


@pytest.mark.parametrize("value", [0, -1])
def test_a_config_with_no_draws_is_refused(tiny, hybrid_store, tmp_path, value):
    with pytest.raises(ConfigError, match=f"draws_per_epoch must be >= 1.*got {value}"):
        load_config(tiny_config(tmp_path / "run", tiny["student"], [(hybrid_store, 1.0)],
                                draws_per_epoch=value))  # fmt: skip


@pytest.mark.parametrize("kind", ["hybrid", "sampled"])
def test_a_run_trains_on_m_of_n_draws(tiny, hybrid_store, sampled_store, tmp_path, kind):
    from smash.train.trainer import Trainer

    store = hybrid_store if kind == "hybrid" else sampled_store
    cfg = load_config(tiny_config(tmp_path / "run", tiny["student"], [(store, 1.0)],
                                  draws_per_epoch=2, max_steps=3))  # fmt: skip
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.train() == 3
    trainer.cleanup()
