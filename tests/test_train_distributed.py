"""Two CPU processes (torchrun, gloo): disjoint data, every sample once per epoch."""

import json
import subprocess
import sys

import pytest
from smash.store.manifest import load_manifest
from smash.train.metrics import read_metrics
from train_support import (
    PAIR_EXAMPLES,
    clean_env,
    free_port,
    pair_store_of,
    tiny_config,
    write_config,
)

MICRO, ACCUMULATION, RANKS = 4, 2, 2


@pytest.fixture(scope="module")
def pair_store(tiny, tmp_path_factory):
    return pair_store_of(tiny, tmp_path_factory)


def test_two_processes_see_every_sample_once_per_epoch(tiny, pair_store, tmp_path):
    assert len(load_manifest(pair_store).shards) % RANKS == 0
    epoch_steps = PAIR_EXAMPLES // (RANKS * MICRO * ACCUMULATION)
    config = tiny_config(
        tmp_path / "run",
        tiny["student"],
        [(pair_store, 1.0)],
        max_steps=epoch_steps,
        num_workers=1,
        record_keys=True,
        log_every=5,
        checkpoint_every=epoch_steps,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(RANKS),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "smash.train.cli",
        "--config",
        write_config(tmp_path / "c.json", config),
    ]
    done = subprocess.run(
        command,
        env=clean_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        check=False,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    seen = {}
    for rank in range(RANKS):
        lines = (tmp_path / "run" / "keys" / f"rank{rank}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == epoch_steps * ACCUMULATION
        seen[rank] = [key for r in records for key in r["keys"]]
    everything = seen[0] + seen[1]
    assert len(everything) == PAIR_EXAMPLES
    assert len(set(everything)) == PAIR_EXAMPLES  # every sample exactly once
    assert not set(seen[0]) & set(seen[1])  # the ranks' data are disjoint

    logged = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert logged[-1]["step"] == epoch_steps
    assert logged[-1]["samples"] == 5 * RANKS * MICRO * ACCUMULATION  # summed over ranks
    assert (tmp_path / "run" / "checkpoints" / f"step{epoch_steps}" / "rank1.pt").exists()
    assert (tmp_path / "run" / "student" / "model.safetensors").exists()
