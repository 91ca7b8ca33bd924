"""An evaluation over many processes gives the report of one process, and loses or repeats no
finished unit when one of them is killed: ``--shard I/N`` (a job array's shards each evaluate
every N-th (model, mode, task) into a ledger of their own, beside each other in one OUT; the
run without ``--shard`` merges them) and ``--ray`` (every job a Ray task on a local Ray, two
at a time on this machine's CPUs; the driver alone writes the ledger)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fewshot_support import cli_error
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot.cli import main
from smash.train.fewshot.driver import Driver
from smash.train.fewshot.jobs import Job
from smash.train.fewshot.ledger import Ledger
from smash.train.fewshot.protocol import Protocol
from smash.train.fewshot.ray_executor import RayExecutor, run_job
from smash.train.fewshot.report import entry_to_json
from smash.train.fewshot.runner import evaluate_models

# 2 tasks x (prompt: 2 seeds x 2 grid points; zero-shot: 2 seeds): 4 groups, 12 units
from test_fewshot_resume import _argv

REAL_UNIT = Job._unit
ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("SST-2", "MRPC")], seeds=[13, 21], k=8)
    return root


def _report(out: Path) -> tuple:
    result = json.loads((out / "results.json").read_text())
    return result["entries"], result["table"]


@pytest.fixture(scope="module")
def whole(tiny, kshot, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "out"
    assert main(_argv(tiny, kshot, out)) == 0
    return out


def test_shards_merged_give_the_report_of_one_process(
    tiny, kshot, tmp_path, monkeypatch, capsys, whole
):
    out = tmp_path / "out"
    trained = []
    monkeypatch.setattr(Job, "_unit", lambda job, work, cache: trained.append(work.key) or
                        REAL_UNIT(job, work, cache))  # fmt: skip
    for i in (1, 2):
        assert main([*_argv(tiny, kshot, out), "--shard", f"{i}/2"]) == 0
        err = capsys.readouterr().err
        assert f"evaluate-fewshot: shard {i}/2: 6 units, 0 recorded, 6 to train" in err
        assert f"shard {i}/2 is done ({out / f'points.shard-{i}-of-2.jsonl'})" in err
    assert not (out / "results.json").exists() and not (out / "points.jsonl").exists()
    groups = {1: {("prompt", "SST-2"), ("zero-shot", "SST-2")},
              2: {("prompt", "MRPC"), ("zero-shot", "MRPC")}}  # every 2nd group  # fmt: skip
    for i, expected in groups.items():
        lines = (out / f"points.shard-{i}-of-2.jsonl").read_text().splitlines()[1:]
        units = [json.loads(line)["unit"] for line in lines if '"unit"' in line]
        assert {(u["mode"], u["task"]) for u in units} == expected
    assert len(trained) == 12
    err = cli_error(capsys, _argv(tiny, kshot, out))  # a forgotten --resume
    assert "points.shard-1-of-2.jsonl holds 6 finished units of an earlier evaluation" in err
    trained.clear()
    assert main([*_argv(tiny, kshot, out), "--resume"]) == 0
    assert trained == [] and _report(out) == _report(whole)
    assert not (out / "points.jsonl").exists()  # nothing left to record


def test_a_shard_killed_is_finished_by_the_merging_run(tiny, kshot, tmp_path, monkeypatch, whole):
    """Shard 2 never ran and shard 1 was killed after 3 units: the run without --shard trains
    what no ledger holds, into its own, and writes the whole report."""
    out = tmp_path / "out"
    trained = []

    def unit(job, work, cache):
        if len(trained) == 3:
            raise KeyboardInterrupt
        trained.append(work.key)
        return REAL_UNIT(job, work, cache)

    monkeypatch.setattr(Job, "_unit", unit)
    with pytest.raises(KeyboardInterrupt):
        main([*_argv(tiny, kshot, out), "--shard", "1/2"])
    trained.clear()
    monkeypatch.setattr(Job, "_unit", lambda job, work, cache: trained.append(work.key) or
                        REAL_UNIT(job, work, cache))  # fmt: skip
    assert main([*_argv(tiny, kshot, out), "--resume"]) == 0
    assert len(trained) == 12 - 3 and _report(out) == _report(whole)


# Holds OUT as a running shard does (shared), until it is killed.
HOLDER = """
import sys, time
from smash.precompute.shared.folder_lock import hold_folder
with hold_folder(sys.argv[1], "evaluate-fewshot --shard 1/2", shared=True):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_shards_share_the_folder_and_a_whole_run_waits_for_them(tiny, kshot, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        err = cli_error(capsys, _argv(tiny, kshot, out))
        assert f"{out} is in use by another run (evaluate-fewshot --shard 1/2, pid" in err
        argv = [*_argv(tiny, kshot, out), "--mode", "zero-shot", "--shard", "2/2"]
        argv.remove("prompt")
        assert main(argv) == 0  # another shard runs beside it
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("value", ["0/2", "3/2", "1", "1/0", "a/b", "1/2/3"])
def test_a_shard_outside_its_range_is_refused(tiny, kshot, tmp_path, capsys, value):
    err = cli_error(capsys, [*_argv(tiny, kshot, tmp_path / "out"), "--shard", value])
    assert err == (
        f"evaluate-fewshot: error: argument --shard: expected I/N with 1 <= I <= N (e.g. 2/8), "
        f"got {value!r}"
    )


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's tests (its start takes seconds): two CPUs, so two tasks
    run at a time. An evaluation finds it initialised and leaves it running."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _ledger_units(path: Path) -> list[str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return [json.dumps(line["unit"], sort_keys=True) for line in lines if "unit" in line]


def test_ray_gives_the_report_of_one_process(tiny, kshot, tmp_path, capsys, ray_session, whole):
    out = tmp_path / "out"
    assert main([*_argv(tiny, kshot, out), "--ray"]) == 0
    assert _report(out) == _report(whole)
    assert (
        "12 units, 0 recorded, 12 to train in 12 jobs, as Ray tasks on cpu (2 CPU, 0 GPU; 1 CPU "
        "and 0 GPU a unit, 2 at a time)"
    ) in capsys.readouterr().err
    assert sorted(_ledger_units(out / "points.jsonl")) == sorted(
        _ledger_units(whole / "points.jsonl")
    )


def test_a_killed_ray_driver_resumes_without_repeating_a_unit(
    tiny, kshot, tmp_path, monkeypatch, ray_session, whole
):
    out = tmp_path / "out"
    record = Driver._record

    def killed_after_five(driver, outcomes):
        if len(driver.plan.ledger) >= 5:
            raise KeyboardInterrupt  # its running tasks are cancelled, as by the driver's death
        record(driver, outcomes)

    monkeypatch.setattr(Driver, "_record", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        main([*_argv(tiny, kshot, out), "--ray"])
    assert len(_ledger_units(out / "points.jsonl")) == 5
    monkeypatch.setattr(Driver, "_record", record)
    assert main([*_argv(tiny, kshot, out), "--ray", "--resume"]) == 0
    units = _ledger_units(out / "points.jsonl")
    assert len(units) == len(set(units)) == 12  # each unit recorded once
    assert _report(out) == _report(whole)


def test_a_killed_ray_worker_is_run_again(tiny, kshot, tmp_path, ray_session, whole):
    """The worker of the first task kills itself (SIGKILL) before its job: Ray runs the task
    again, and every unit is recorded once, as one process records it."""
    marker = tmp_path / "died"

    def dies_once(job):  # pickled by value: runs in the worker
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return run_job(job)
        os.kill(os.getpid(), signal.SIGKILL)

    out = tmp_path / "out"
    out.mkdir()
    ledger = Ledger(out / "points.jsonl", {}, resume=False)
    protocol = Protocol(learning_rates=(1e-3,), batch_sizes=(2, 4), max_steps=4, eval_every=2)
    tasks = [get_task("SST-2"), get_task("MRPC")]
    entries = evaluate_models([("student", str(tiny["student"]))], tasks, kshot,
                              ["prompt", "zero-shot"], protocol, [13, 21], k=8, max_length=64,
                              ledger=ledger, executor=lambda: RayExecutor(run=dies_once))  # fmt: skip
    assert marker.exists()
    assert [entry_to_json(e) for e in entries] == _report(whole)[0]
    units = _ledger_units(out / "points.jsonl")
    assert len(units) == len(set(units)) == 12
