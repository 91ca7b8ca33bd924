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
    out = []
    for ex in StoreDataset(store, shuffle=False, epochs=1, rank=0, world_size=1):
        out.append(
            {
                "key": ex["__key__"],
                "input_ids": ex["input_ids"].tolist(),
                "mask_positions": ex["mask_positions"].tolist(),
                "topk_ids": ex["topk_ids"].tolist(),
                "topk_logprobs_f16_bits": ex["topk_logprobs"].view(np.uint16).tolist(),
                "tail_logmass_f32_bits": ex["tail_logmass"].view(np.uint32).tolist(),
                "label": ex["label"],
                "meta": ex["meta"],
            }
        )
    return out


@pytest.mark.parametrize("store", OLD_STORES, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_old_store_reads_with_identical_values(store):
    expected = json.loads((store / "expected.json").read_text())
    assert decoded(store) == expected
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


@pytest.mark.parametrize("version", sorted({p.parent.name for p in OLD_STORES}))
@pytest.mark.parametrize(
    "objective, store", [("ce", "pairs"), ("rule", "pairs"), ("hard", "sentiment")]
)
def test_old_store_trains(old_student, tmp_path, version, objective, store):
    path = STORES / version / store
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
