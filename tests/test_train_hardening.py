"""What adversarial use of train-student found: a resume with another number of DataLoader
workers, a disk that fills during a checkpoint, and a kill while DeepSpeed writes ``latest``."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from smash.train.checkpoint import COMPLETE, resume_tag
from smash.train.cli import main as train_student
from smash.train.metrics import read_metrics
from train_support import pair_store_of, tiny_config, write_config


@pytest.fixture(scope="module")
def pair_store(tiny, tmp_path_factory):
    return pair_store_of(tiny, tmp_path_factory)


def config_file(tmp_path, tiny, pair_store, out, **overrides):
    config = tiny_config(out, tiny["student"], [(pair_store, 1.0)], **overrides)
    return write_config(tmp_path / "config.json", config)


def test_resuming_with_another_number_of_workers_says_what_to_do(
    tiny, pair_store, tmp_path, capsys
):
    path = config_file(tmp_path, tiny, pair_store, tmp_path / "run", max_steps=4,
                       checkpoint_every=2, num_workers=1)  # fmt: skip
    assert train_student(["--config", path, "--stop-at-step", "2"]) == 0
    capsys.readouterr()
    assert train_student(["--config", path, "--resume", "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "written with 1 DataLoader workers per rank and this run has 0" in err
    assert "resume with --num-workers 1" in err and len(err.strip().splitlines()) == 1
    assert train_student(["--config", path, "--resume"]) == 0


def test_resuming_with_another_number_of_ranks_says_how_many(tiny, pair_store, tmp_path, capsys):
    path = config_file(tmp_path, tiny, pair_store, tmp_path / "run", max_steps=2,
                       checkpoint_every=1)  # fmt: skip
    assert train_student(["--config", path, "--stop-at-step", "1"]) == 0
    step = tmp_path / "run" / "checkpoints" / "step1"
    shutil.copy(step / "rank0.pt", step / "rank1.pt")  # as if two processes had written it
    capsys.readouterr()
    assert train_student(["--config", path, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "written by 2 ranks and this run has 1" in err and "resume with 2 processes" in err


def test_a_kill_while_deepspeed_writes_latest_falls_back_to_the_complete_checkpoint(
    tiny, pair_store, tmp_path
):
    out = tmp_path / "run"
    path = config_file(tmp_path, tiny, pair_store, out, max_steps=3, checkpoint_every=1,
                       keep_checkpoints=3)  # fmt: skip
    assert train_student(["--config", path, "--stop-at-step", "2"]) == 0
    checkpoints = out / "checkpoints"
    assert resume_tag(checkpoints) == "step2"
    # killed inside DeepSpeed's save of step 2: its files may be there, `latest` is cut short
    # and step 2 was never marked complete
    (checkpoints / "step2" / COMPLETE).unlink()
    (checkpoints / "latest").write_text("")
    (checkpoints / "step9").mkdir()  # a stale save of some later, killed attempt
    assert resume_tag(checkpoints) == "step1"
    assert train_student(["--config", path, "--resume"]) == 0
    assert [p.name for p in sorted(checkpoints.glob("step*"))] == ["step1", "step2", "step3"]
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == [1, 2, 2, 3]  # step 2 trained again from the step-1 checkpoint


def checkpoint_testss_of_an_older_version_resume_from_latest(tiny, pair_store, tmp_path):
    out = tmp_path / "run"
    path = config_file(tmp_path, tiny, pair_store, out, max_steps=2, checkpoint_every=1,
                       keep_checkpoints=3)  # fmt: skip
    assert train_student(["--config", path, "--stop-at-step", "1"]) == 0
    (out / "checkpoints" / "step1" / COMPLETE).unlink()  # written before the marker existed
    assert resume_tag(out / "checkpoints") == "step1"
    assert train_student(["--config", path, "--resume"]) == 0


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (root only); its size can be raised while mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = []

    def make(size: int) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                              check=False, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()})")
        mounted.append(mount)
        return mount

    def grow(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    make.grow = grow
    yield make
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_during_a_checkpoint_is_named_and_the_last_one_kept(
    tiny, pair_store, tmp_path, small_disk, capsys
):
    # how much one checkpoint takes, measured on the normal disk
    probe = tmp_path / "probe"
    path = config_file(tmp_path, tiny, pair_store, probe, max_steps=1, checkpoint_every=1)
    assert train_student(["--config", path]) == 0
    one = _size(probe / "checkpoints" / "step1")
    shutil.rmtree(probe)

    disk = small_disk(int(one * 1.6) + 65536)  # room for one checkpoint, not two
    out = disk / "run"
    path = config_file(tmp_path, tiny, pair_store, out, max_steps=3, checkpoint_every=1,
                       keep_checkpoints=3)  # fmt: skip
    capsys.readouterr()
    assert train_student(["--config", path]) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "train-student: error:" in line]
    step1, step2 = out / "checkpoints" / "step1", out / "checkpoints" / "step2"
    assert line.endswith(
        f"train-student: error: {step2}: the checkpoint could not be written (no space left on "
        f"device); the newest complete checkpoint is {step1}"
    )
    assert not (out / "checkpoints" / "step2").exists()  # the partial one is gone
    assert resume_tag(out / "checkpoints") == "step1"

    small_disk.grow(one * 8)
    assert train_student(["--config", path, "--resume"]) == 0
    assert resume_tag(out / "checkpoints") == "step3"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--objective", "ce@1", "--objective", "ce@0.5"],
         "--objective ce is given more than once (ce@1.0, ce@0.5); give each objective once"),
        (["--objective", "ce", "--objective", "hard@0.5", "--objective", "ce"],
         "--objective ce is given more than once (ce, ce)"),
        (["--store", "{store}", "--store", "{store}@2"],
         "stores[1]: '{store}' is the store of stores[0] ('{store}') again"),
        (["--store", "{store}", "--store", "{store}/."], "is the store of stores[0]"),
    ],
)  # fmt: skip
def test_a_repeated_objective_or_store_is_refused_before_anything_runs(
    tiny, pair_store, tmp_path, capsys, flags, message
):
    """A repeated objective would keep its last weight, a repeated store take twice its share."""
    path = config_file(tmp_path, tiny, pair_store, tmp_path / "run")
    flags = [f.format(store=pair_store) for f in flags]
    assert train_student(["--config", path, *flags]) == 2
    assert message.format(store=pair_store) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_config_listing_a_store_twice_is_refused(tiny, pair_store, tmp_path, capsys):
    path = write_config(tmp_path / "config.json", tiny_config(
        tmp_path / "run", tiny["student"], [(pair_store, 1.0), (pair_store, 3.0)]))  # fmt: skip
    assert train_student(["--config", path]) == 2
    assert "stores[1]" in capsys.readouterr().err
