"""smash-store inspect / verify on healthy and damaged stores."""

import json
import subprocess
import sys

import numpy as np
import pytest
from smash.store.cli import main, teacher_statistics
from smash.store.codec import ChunkLayout
from smash.store.manifest import finalize_store
from smash.store.writer import StoreWriter
from test_store import VOCAB, make_examples, write_store


@pytest.fixture
def store(tmp_path):
    write_store(tmp_path, make_examples(90, seed=21), max_samples=30)
    finalize_store(tmp_path)
    return tmp_path


def test_inspect_reports_teacher_statistics(store, capsys):
    assert main(["inspect", str(store)]) == 0
    out = capsys.readouterr().out
    assert "90 examples" in out and "mean_topk_mass" in out and "mean_entropy_nats" in out
    stats = teacher_statistics(str(store))
    # make_examples puts 1/1.3 of each row's mass in its top-k.
    assert stats["mean_topk_mass"] == pytest.approx(1 / 1.3, rel=2e-3)
    assert stats["examples"] == 90 and stats["mean_entropy_nats"] > 0


@pytest.mark.parametrize("order", ["value", "id"])
def test_top1_prob_is_the_largest_stored_probability_in_any_layout(tmp_path, order):
    examples = make_examples(40, seed=22)
    StoreWriter(
        tmp_path,
        producer={},
        tokenizer={"fingerprint": "x", "vocab_size": VOCAB},
        k=8,
        layout=ChunkLayout(order=order),
    ).write_shard(0, examples)
    finalize_store(tmp_path)
    rows = np.concatenate(
        [np.exp(ex["topk_logprobs"].astype(np.float64)).max(1) for ex in examples]
    )
    assert teacher_statistics(str(tmp_path))["mean_top1_prob"] == pytest.approx(rows.mean())


def test_inspect_json(store, capsys):
    assert main(["inspect", str(store), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["num_samples"] == 90 and data["statistics"]["examples"] == 90


def test_verify_passes_a_healthy_store(store, capsys):
    assert main(["verify", str(store)]) == 0
    assert "3/3 shards ok" in capsys.readouterr().out


def test_verify_names_every_bad_shard(store, capsys):
    (store / "shard-000000.tar").unlink()
    path = store / "shard-000002.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert main(["verify", str(store)]) == 1
    captured = capsys.readouterr()
    assert "shard-000000.tar: missing" in captured.err
    assert "shard-000002.tar: corrupted" in captured.err
    assert "1/3 shards ok, 2 bad: shard-000000.tar, shard-000002.tar" in captured.out


def test_console_script_reports_bad_manifest_without_traceback(tmp_path):
    (tmp_path / "manifest.json").write_text(
        '{"format": "smash-teacher-store", "format_version": 7}'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "smash.store.cli", "verify", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "manifest.json: field 'format_version' is 7" in proc.stderr
    assert "Traceback" not in proc.stderr
