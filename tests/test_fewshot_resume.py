"""A few-shot evaluation as a resumable job: OUT/points.jsonl records every finished grid point,
a killed evaluation continues without repeating one, and a finished one re-renders at once."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fewshot_support import cli_error
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.precompute.shared.folder_lock import LOCK_NAME
from smash.train.fewshot import runner
from smash.train.fewshot.cli import main
from smash.train.fewshot.jobs import Job
from smash.train.fewshot.ledger import Ledger, UnitKey
from smash.train.fewshot.protocol import PointResult

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
REAL_UNIT = Job._unit
SETTINGS = {"data": "/d", "eval_every": 2, "template": ["SST-2=x"]}


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("SST-2", "MRPC")], seeds=[13, 21], k=8)
    return root


def _argv(tiny, kshot, out) -> list[str]:
    return ["--model", str(tiny["student"]), "--tasks", "SST-2", "MRPC", "--data", str(kshot),
            "--mode", "prompt", "zero-shot", "--k", "8", "--seeds", "13", "21", "--lrs", "1e-3",
            "--batch-sizes", "2", "4", "--max-steps", "4", "--eval-every", "2", "--max-length",
            "64", "--device", "cpu", "--out", str(out)]  # fmt: skip


def _entries(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["entries"]


class Killed(BaseException):
    """Like a kill mid-grid, it goes through every ``except Exception``."""


def _count_units(monkeypatch, fail_after: int | None = None) -> list[str]:
    """Count the units trained (or zero-shot), optionally dying like a kill after some."""
    calls = []

    def unit(job, work, cache):
        if fail_after is not None and len(calls) == fail_after:
            raise Killed
        calls.append(work.key.mode)
        return REAL_UNIT(job, work, cache)

    monkeypatch.setattr(Job, "_unit", unit)
    return calls


def _unit_lines(out: Path) -> list[dict]:
    """The ledger's unit lines (not its settings or test lines)."""
    lines = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    return [line for line in lines if "unit" in line]


def test_killed_evaluation_resumes_without_repeating_a_point(tiny, kshot, tmp_path, monkeypatch):
    """2 tasks x 2 seeds x (2 grid points + zero-shot) = 12 units. Killed after 5, the resumed
    run trains the other 7 and writes the report of an uninterrupted run."""
    whole = tmp_path / "whole"
    assert main(_argv(tiny, kshot, whole)) == 0

    killed = tmp_path / "killed"
    calls = _count_units(monkeypatch, fail_after=5)
    with pytest.raises(Killed):
        main(_argv(tiny, kshot, killed))
    assert len(calls) == 5 and not (killed / "results.json").exists()
    assert len(_unit_lines(killed)) == 5

    calls = _count_units(monkeypatch)
    assert main([*_argv(tiny, kshot, killed), "--resume"]) == 0
    assert len(calls) == 12 - 5
    assert _entries(killed) == _entries(whole)

    # finished: the report is rendered again without training or loading any model
    calls = _count_units(monkeypatch)
    monkeypatch.setattr(runner, "_factory", lambda *a: pytest.fail("a model was loaded"))
    assert main([*_argv(tiny, kshot, killed), "--resume"]) == 0
    assert calls == [] and _entries(killed) == _entries(whole)


def test_resume_adds_new_seeds_and_refuses_other_settings(tiny, kshot, tmp_path, monkeypatch,
                                                          capsys):  # fmt: skip
    out = tmp_path / "out"
    argv = _argv(tiny, kshot, out)
    seeds = argv.index("--seeds")
    one_seed = argv[: seeds + 2] + argv[seeds + 3 :]
    assert main(one_seed) == 0
    calls = _count_units(monkeypatch)
    assert main([*argv, "--resume"]) == 0
    assert len(calls) == 6  # seed 21 only: 2 tasks x (2 grid points + zero-shot)
    err = cli_error(capsys, argv)
    assert f"{out / 'points.jsonl'} holds 12 finished units of an earlier evaluation" in err
    err = cli_error(capsys, [*argv, "--resume", "--eval-batch-size", "8"])
    assert "was made with other settings (eval_batch_size differ)" in err


def test_resume_trains_again_what_reads_changed_inputs(tiny, kshot, tmp_path, monkeypatch):
    """A unit is keyed by what it reads, by content: a longer max length, or a split file
    edited in place, makes new units; the others are reused."""
    out = tmp_path / "out"
    data = tmp_path / "data"
    shutil.copytree(kshot, data)
    argv = _argv(tiny, data, out)
    assert main(argv) == 0
    calls = _count_units(monkeypatch)
    assert main([*argv, "--resume", "--max-length", "48"]) == 0
    assert len(calls) == 12  # every unit reads the prompt at the new length
    calls.clear()
    test = data / "SST-2" / "8-13" / "test.tsv"
    test.write_text(test.read_text() + "A new row was great.\t1\n")
    assert main([*argv, "--resume"]) == 0
    assert len(calls) == 3  # SST-2 seed 13: 2 grid points and zero-shot
    tests = {(e["task"], s["seed"]): s["tests"] for e in _entries(out) for s in e["seeds"]}
    assert set(tests) == {(t, s) for t in ("SST-2", "MRPC") for s in (13, 21)}


# Holds an exclusive flock on a folder, as a running evaluation does, until it is killed.
HOLDER = """
import sys, time
from smash.precompute.shared.folder_lock import hold_folder
with hold_folder(sys.argv[1], "evaluate-fewshot"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_another_evaluation_writes_to_is_refused(tiny, kshot, tmp_path, capsys, resume):
    """Two evaluations in one OUT would take each other's ledger for their own: the second is
    refused, naming the folder, and once the first is killed (the OS drops its lock), the
    folder is free again."""
    out = tmp_path / "out"
    argv = _argv(tiny, kshot, out)
    argv[argv.index("prompt")] = "zero-shot"
    argv.remove("zero-shot")  # zero-shot only: 4 quick units
    if resume:  # a finished evaluation, taken up again
        assert main(argv) == 0
    before = sorted(p.name for p in out.glob("*")) if out.exists() else []
    out.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        err = cli_error(capsys, argv + ["--resume"] * resume)
        assert f"{out} is in use by another run (evaluate-fewshot, pid {holder.pid} on " in err
        assert (
            sorted(p.name for p in out.glob("*") if p.name != LOCK_NAME) == before
        )  # none written
    finally:
        holder.kill()
        holder.wait()
    assert main(argv + ["--resume"] * resume) == 0
    assert len((out / "points.jsonl").read_text().splitlines()) == 1 + 4  # zero-shot: no test lines


def test_an_evaluation_refused_on_bad_input_leaves_no_folder(tiny, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    err = cli_error(capsys, _argv(tiny, tmp_path / "no-data", out))
    assert "no-data" in err and not (tmp_path / "new").exists()


def _key(seed: int = 13, lr: float | None = 1e-3) -> UnitKey:
    return UnitKey("m", "/m", 16, 100, "prompt", "SST-2", seed, lr, None if lr is None else 4)


def _result(dev: float) -> PointResult:
    return PointResult(lr=1e-3, batch_size=4, dev=dev, step=20, tests={"SST-2": dev / 2})


def test_ledger_round_trip_and_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "points.jsonl"
    ledger = Ledger(path, SETTINGS, resume=False)
    ledger.record(_key(13), _result(0.75), seconds=1.5)
    ledger.record(_key(21), _result(float("nan")), seconds=1.0)
    with path.open("a") as f:
        f.write('{"unit": {"model": "m", "pa')  # the kill came mid-line
    before = path.read_bytes()
    with pytest.raises(ValueError, match="pass --resume"):
        Ledger(path, SETTINGS, resume=False)
    assert path.read_bytes() == before  # a refused open changes nothing
    again = Ledger(path, SETTINGS, resume=True)
    assert len(again) == 2 and again.get(_key(13)) == _result(0.75)
    assert again.get(_key(21)).tests["SST-2"] != again.get(_key(21)).tests["SST-2"]  # NaN
    assert again.get(_key(42)) is None and again.get(_key(13, lr=2e-5)) is None
    assert path.read_text().endswith("\n")  # the cut line is gone; appending goes on cleanly
    again.record(_key(42), _result(0.5), seconds=1.0)
    assert len(Ledger(path, SETTINGS, resume=True)) == 3


def test_ledger_errors(tmp_path):
    path = tmp_path / "points.jsonl"
    Ledger(path, SETTINGS, resume=False).record(_key(), _result(0.5), seconds=1.0)
    with pytest.raises(ValueError, match="holds 1 finished units.*pass --resume"):
        Ledger(path, SETTINGS, resume=False)
    with pytest.raises(ValueError, match=r"other settings \(eval_every, template differ\)"):
        Ledger(path, {**SETTINGS, "eval_every": 4, "template": []}, resume=True)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"unit": {}}', lines[1]]) + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: not a line this program writes"):
        Ledger(path, SETTINGS, resume=True)


def test_the_truncation_rule_is_part_of_a_prompt_units_key(tiny, kshot, tmp_path, monkeypatch,
                                                           capsys):  # fmt: skip
    """--truncation lmbff makes new prompt units; standard fine-tuning's are not prompts."""
    out = tmp_path / "out"
    argv = _argv(tiny, kshot, out)
    argv[argv.index("prompt")] = "finetune"
    assert main(argv) == 0
    calls = _count_units(monkeypatch)
    assert main([*argv, "--resume", "--truncation", "lmbff"]) == 0
    assert calls == ["zero-shot"] * 4  # 2 tasks x 2 seeds
    units = [line["unit"] for line in _unit_lines(out)]
    rules = [(u["mode"], json.loads(u["inputs"]).get("truncation")) for u in units]
    # the default's keys are as before there was a choice
    assert set(rules) == {("finetune", None), ("zero-shot", None), ("zero-shot", "lmbff")}
    err = cli_error(capsys, [*argv, "--resume", "--mode", "distill", "--distill-store",
                             str(tmp_path), "--truncation", "lmbff"])  # fmt: skip
    assert "--truncation lmbff does not apply to --mode distill / distill-bt10 / ipet-pt" in err
    err = cli_error(capsys, [*argv, "--resume", "--mode", "ipet-pt", "--ipet-store",
                             str(tmp_path), "--truncation", "lmbff"])  # fmt: skip
    assert "--truncation lmbff does not apply to --mode distill / distill-bt10 / ipet-pt" in err


def _ledger_lines(tmp_path) -> tuple[Path, list[str]]:
    path = tmp_path / "points.jsonl"
    ledger = Ledger(path, SETTINGS, resume=False)
    ledger.record(_key(13), _result(0.75), seconds=1.5)
    ledger.record(_key(21), _result(0.5), seconds=1.0)
    return path, path.read_text().splitlines()


def test_blank_lines_in_a_ledger_are_no_damage(tmp_path):
    path, lines = _ledger_lines(tmp_path)
    path.write_text("\n" + lines[0] + "\n\n" + lines[1] + "\n  \n" + lines[2] + "\n\n")
    with pytest.raises(ValueError, match="holds 2 finished units"):
        Ledger(path, SETTINGS, resume=False)
    again = Ledger(path, SETTINGS, resume=True)
    assert len(again) == 2 and again.get(_key(21)) == _result(0.5)
    again.record(_key(42), _result(0.25), seconds=1.0)
    assert len(Ledger(path, SETTINGS, resume=True)) == 3


def _unit_line(line: str, **result) -> str:
    item = json.loads(line)
    item["result"].update(result)
    return json.dumps(item)


@pytest.mark.parametrize(
    "edit, number, problem",
    [
        (lambda lines: ["[1, 2]", *lines[1:]], 1,
         'the line is [1, 2], expected an object with "settings"'),
        (lambda lines: ['{"settings": ["a"]}', *lines[1:]], 1,
         'settings is ["a"], expected an object'),
        (lambda lines: [lines[0], lines[1], _unit_line(lines[2], dev=None)], 3,
         "result.dev is null, expected a number"),
        (lambda lines: [lines[0], _unit_line(lines[1], dev="0.5"), lines[2]], 2,
         'result.dev is "0.5", expected a number'),
        (lambda lines: [lines[0], _unit_line(lines[1], tests={"SST-2": "x"}), lines[2]], 2,
         'result.tests is {"SST-2": "x"}, expected an object of numbers'),
        (lambda lines: [lines[0], _unit_line(lines[1], step=2.5), lines[2]], 2,
         "result.step is 2.5, expected an integer"),
        (lambda lines: [lines[0], '{"unit": {}, "result": {}}', lines[2]], 2,
         "unit has no field 'model'"),
        (lambda lines: [lines[0], lines[1].replace('"seed": 13', '"seed": 13, "x": 1'), lines[2]],
         2, "unit has a field 'x' this program does not write"),
        (lambda lines: [lines[0], "7", lines[2]], 2,
         'the line is 7, expected an object with "unit"'),
    ],
)  # fmt: skip
def test_a_hand_edited_ledger_names_the_line_and_what_is_wrong(tmp_path, edit, number, problem):
    path, lines = _ledger_lines(tmp_path)
    path.write_text("\n".join(edit(lines)) + "\n")
    before = path.read_bytes()
    with pytest.raises(ValueError) as err:
        Ledger(path, SETTINGS, resume=True)
    assert str(err.value) == (
        f"{path}:{number}: not a line this program writes: {problem} (fix it, or pass another --out)"
    )
    assert path.read_bytes() == before


def test_two_models_of_one_name_are_refused(tiny, kshot, tmp_path, capsys):
    argv = _argv(tiny, kshot, tmp_path / "out")
    other = tmp_path / "copy" / "student"
    shutil.copytree(tiny["student"], other)
    argv[2:2] = [str(other)]  # two folders, both named "student" by default
    err = cli_error(capsys, argv)
    assert "two models are named 'student' (one row each): give each a name with --name" in err


@pytest.mark.parametrize("flag", ["--template", "--verbalizer"])
def test_a_per_task_flag_needs_task_equals_value(tiny, kshot, tmp_path, capsys, flag):
    err = cli_error(capsys, [*_argv(tiny, kshot, tmp_path / "out"), flag, "SST-2"])
    assert f"{flag} 'SST-2': expected TASK=VALUE" in err
    err = cli_error(capsys, [*_argv(tiny, kshot, tmp_path / "out"), flag, "NOPE=x"])
    assert "unknown task 'NOPE'" in err
    assert not (tmp_path / "out").exists()
