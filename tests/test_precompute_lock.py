"""Two precompute-teacher runs into one --out: the second is refused while the first holds
the folder, and a rerun keeps a finished shard only when its content is the recorded one."""

import shutil
import subprocess
import sys

from smash.precompute.shard_writer import ShardWriterThread
from smash.precompute.shared.folder_lock import LOCK_NAME, FolderInUse, hold_folder
from smash.store.cli import verify_store
from test_precompute import run, store_files

# Holds the lock of the folder argv[1] until it is killed.
HOLDER = """
import sys, time
from pathlib import Path
from smash.precompute.shared.folder_lock import hold_folder
with hold_folder(Path(sys.argv[1]), "precompute-teacher"):
    print("locked", flush=True)
    time.sleep(600)
"""


def sampled(tiny, out, samples):
    """The repro's runs: sampled targets, --samples 12 or 13, 90 examples in shards of 30."""
    return run(tiny, out, "--targets", "sampled", "--samples", str(samples), k=None)


def test_a_second_run_is_refused_and_a_killed_holder_leaves_no_lock(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        assert sampled(tiny, out, 12) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert f"{out} is in use by another run (precompute-teacher, pid {holder.pid} on " in err[0]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert sampled(tiny, out, 12) == 0  # the OS released the killed holder's lock
    assert verify_store(str(out)) == []
    assert not (out / LOCK_NAME).exists()  # a finished run removes its lock file


def test_the_folder_is_locked_while_shards_are_written(tiny, tmp_path, monkeypatch):
    original, seen = ShardWriterThread._write_shard, []

    def probing(self, *args):
        try:
            with hold_folder(tmp_path, "probe"):
                seen.append("free")
        except FolderInUse:
            seen.append("held")
        return original(self, *args)

    monkeypatch.setattr(ShardWriterThread, "_write_shard", probing)
    assert sampled(tiny, tmp_path, 12) == 0
    assert seen == ["held"] * 3


def test_a_rerun_writes_again_shards_of_another_run_of_the_same_size(tiny, tmp_path, capsys):
    """What two interleaved runs left before the lock: some shards of the store are the other
    run's, with the same size (tar pads every small shard to 10,240 bytes)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert sampled(tiny, ours, 12) == 0
    reference = store_files(ours)
    assert sampled(tiny, theirs, 13) == 0
    swapped = ["shard-000000.tar", "shard-000002.tar"]
    for name in swapped:
        assert (theirs / name).stat().st_size == (ours / name).stat().st_size
        shutil.copyfile(theirs / name, ours / name)
    assert [name for name, _ in verify_store(str(ours))] == swapped
    capsys.readouterr()
    assert sampled(tiny, ours, 12) == 0
    out = capsys.readouterr().out
    for name in swapped:
        assert f"{name} was finished, but its checksum differs from the record" in out
    assert verify_store(str(ours)) == []
    assert store_files(ours) == reference
