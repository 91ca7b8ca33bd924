"""Stores are forever: every checked-in store of an older format version is read, verified and
trained on by this version, with values identical to what its own version decoded."""

import json
from pathlib import Path

import numpy as np
import pytest
from smash.store.cli import verify_store
from smash.store.fingerprint import check_tokenizer
from smash.store.manifest import load_manifest
from smash.store.reader import StoreDataset
from smash.train.config import load_config
from smash.train.trainer import Trainer
from train_support import tiny_config

STORES = Path(__file__).parent / "data" / "stores"
OLD_STORES = sorted(p.parent for p in STORES.glob("v*/*/expected.json"))


def test_every_older_version_has_a_checked_in_store():
    from smash.store.manifest import FORMAT_VERSION

    versions = {int(p.parent.name[1:]) for p in OLD_STORES}
    assert set(range(1, FORMAT_VERSION)) <= versions


def decoded(store):
    """What ``StoreDataset`` decodes, example by example: every field, floats as bit patterns
    (``NAME_f16_bits``, ``NAME_f32_bits``), as each store's ``expected.json`` holds them."""
    out = []
    for ex in StoreDataset(store, shuffle=False, epochs=1, rank=0, world_size=1):
        row = {"key": ex["__key__"]}
        for name, value in ex.items():
            if name == "__key__":
                continue
            if isinstance(value, np.ndarray) and value.dtype in (np.float16, np.float32):
                bits = np.uint16 if value.dtype == np.float16 else np.uint32
                row[f"{name}_f{value.dtype.itemsize * 8}_bits"] = value.view(bits).tolist()
            else:
                row[name] = value.tolist() if isinstance(value, np.ndarray) else value
        out.append(row)
    return out


@pytest.mark.parametrize("store", OLD_STORES, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_old_store_reads_with_identical_values(store):
    expected = json.loads((store / "expected.json").read_text())
    got = decoded(store)
    # the fields each version recorded (v1 and v2 recorded those of top-k stores)
    assert [{name: row[name] for name in want} for row, want in zip(got, expected)] == expected
    assert verify_store(str(store)) == []


@pytest.mark.parametrize("store", OLD_STORES, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_old_store_accepts_the_tokenizer_it_was_written_with(store):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(store.parent / "tokenizer")
    check_tokenizer(load_manifest(store), tokenizer, str(store))


@pytest.fixture(scope="module")
def old_student(tmp_path_factory):
    """A tiny student on the tokenizer of the checked-in stores."""
    from smash.precompute.tiny import build_tiny_masked_lm
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("old-student")
    tokenizer = AutoTokenizer.from_pretrained(STORES / "v1" / "tokenizer")
    build_tiny_masked_lm(tokenizer, out, hidden=32, layers=1, heads=2, seed=1)
    return out


def test_the_old_stores_share_one_tokenizer():
    """So that one tiny student trains on all of them."""
    files = {(p / "tokenizer.json").read_text() for p in STORES.glob("v*/tokenizer")}
    assert len(files) == 1


TRAINS = [(p, "ce") for p in OLD_STORES] + [
    (p, objective)
    for p in OLD_STORES
    for objective, kind in (("rule", "pairs"), ("hard", "sentiment"), ("mlm", "mlm"))
    if p.name == kind
]


@pytest.mark.parametrize(
    "path, objective",
    TRAINS,
    ids=lambda x: f"{x.parent.name}-{x.name}" if isinstance(x, Path) else x,
)
def test_old_store_trains(old_student, tmp_path, path, objective):
    trainer = Trainer(
        load_config(
            tiny_config(
                tmp_path / "run", old_student, [(path, 1.0)], max_steps=2, objective=objective
            )
        )
    )
    trainer.setup()
    assert trainer.train() == 2
    trainer.cleanup()
    assert (tmp_path / "run" / "student" / "config.json").exists()
