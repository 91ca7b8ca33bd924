"""Test only what can be chosen: each seed's chosen grid point gets the one test pass, and the
report is the one of testing every point (``--test-every-point``, LM-BFF's way); a kill at any
point, even between a seed's last grid point and its test pass, resumes exactly. And dev and
test passes in length-sorted batches under a token budget."""

import json
from pathlib import Path

import pytest
import torch
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot.checkpoints import CHECKPOINTS_NAME
from smash.train.fewshot.cli import main
from smash.train.fewshot.jobs import CheckpointTest, Job
from smash.train.fewshot.learners import PromptLearner
from smash.train.fewshot.protocol import predict

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
REAL_UNIT, REAL_TEST = Job._unit, CheckpointTest.__call__


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("SST-2", "STS-B")], seeds=[13, 21], k=8)
    return root


def _argv(tiny, kshot, out) -> list[str]:
    """2 tasks x 2 seeds x 3 grid points, + zero-shot: 16 units, 4 seeds to test (zero-shot
    units test themselves)."""
    return ["--model", str(tiny["student"]), "--tasks", "SST-2", "STS-B", "--data", str(kshot),
            "--mode", "prompt", "zero-shot", "--k", "8", "--seeds", "13", "21", "--lrs", "1e-4",
            "3e-3", "1e-2", "--batch-sizes", "4", "--max-steps", "4", "--eval-every", "2",
            "--max-length", "64", "--device", "cpu", "--out", str(out)]  # fmt: skip


class Killed(BaseException):
    """Like a kill, it goes through every ``except Exception``."""


def _watch(monkeypatch, kill_unit: int | None = None, kill_test: int | None = None) -> dict:
    """Count the units trained and the test passes run; die like a kill at the given one."""
    calls = {"units": 0, "tests": 0}

    def unit(job, work, cache):
        if calls["units"] == kill_unit:
            raise Killed
        calls["units"] += 1
        return REAL_UNIT(job, work, cache)

    def test(job):
        if calls["tests"] == kill_test:
            raise Killed
        calls["tests"] += 1
        return REAL_TEST(job)

    monkeypatch.setattr(Job, "_unit", unit)
    monkeypatch.setattr(CheckpointTest, "__call__", test)
    return calls


def _report(out: Path) -> tuple:
    result = json.loads((out / "results.json").read_text())
    return result["entries"], result["table"], (out / "results.md").read_text()


def _ledger(out: Path) -> tuple[dict, dict]:
    """The ledger's units ({key: result}) and test lines ({key: tests})."""
    units, tested = {}, {}
    for line in (out / "points.jsonl").read_text().splitlines()[1:]:
        item = json.loads(line)
        if "tested" in item:
            tested[json.dumps(item["tested"], sort_keys=True)] = item["tests"]
        else:
            units[json.dumps(item["unit"], sort_keys=True)] = item["result"]
    return units, tested


@pytest.fixture(scope="module")
def every_point(tiny, kshot, tmp_path_factory) -> Path:
    """The evaluation with every grid point tested."""
    out = tmp_path_factory.mktemp("every") / "out"
    assert main([*_argv(tiny, kshot, out), "--test-every-point"]) == 0
    return out


def test_only_the_chosen_points_are_tested_and_the_report_is_the_same(
    tiny, kshot, tmp_path, monkeypatch, capsys, every_point
):
    """The same results.json entries and table, results.md and every unit's dev metric and
    step; the ledger holds the test metrics of each seed's chosen point only (in a test line
    after its seed's units; its unit line's ``tests`` is empty), and they are the ones that
    testing every point gave that point."""
    out = tmp_path / "out"
    calls = _watch(monkeypatch)
    assert main(_argv(tiny, kshot, out)) == 0
    assert calls == {"units": 16, "tests": 4}  # one test pass per trained seed
    err = capsys.readouterr().err
    assert (
        "evaluate-fewshot: 16 units, 0 recorded, 16 to train in 16 jobs, one at a time in this "
        "process on cpu; 8 test passes (one per seed, of the grid point it chooses, and one per "
        "zero-shot unit)\n"
    ) in err
    assert " units/h | student zero-shot STS-B seed 21 |" in err  # the bar's last state
    assert _report(out) == _report(every_point)
    units, tested = _ledger(out)
    all_units, none = _ledger(every_point)
    assert none == {} and units.keys() == all_units.keys()
    for key, result in units.items():
        assert {**result, "tests": {}} == {**all_units[key], "tests": {}}
        zero_shot = json.loads(key)["mode"] == "zero-shot"
        assert result["tests"] == (all_units[key]["tests"] if zero_shot else {})
    assert all(tests == all_units[key]["tests"] for key, tests in tested.items())
    chosen = {(e["task"], s["seed"], s["lr"]) for e in _report(out)[0] if e["mode"] == "prompt"
              for s in e["seeds"]}  # fmt: skip
    assert {(u["task"], u["seed"], u["lr"]) for u in map(json.loads, tested)} == chosen
    assert len(chosen) == 4
    assert not any((out / CHECKPOINTS_NAME).glob("*"))  # every kept checkpoint is let go


@pytest.mark.parametrize(
    "kill, units_before, tests_after",
    [
        ({"kill_unit": 1}, 1, 4),  # after a seed's first grid point: its checkpoint on disk
        ({"kill_unit": 4}, 4, 3),  # the first seed tested, the second's first point recorded
        ({"kill_test": 0}, 3, 4),  # between a seed's last grid point and its test pass
    ],
)
def test_a_kill_at_any_point_resumes_exactly(
    tiny, kshot, tmp_path, monkeypatch, capsys, every_point, kill, units_before, tests_after
):
    out = tmp_path / "out"
    _watch(monkeypatch, **kill)
    with pytest.raises(Killed):
        main(_argv(tiny, kshot, out))
    units, _ = _ledger(out)
    assert len(units) == units_before and any((out / CHECKPOINTS_NAME).glob("*.pt"))
    calls = _watch(monkeypatch)
    capsys.readouterr()
    assert main([*_argv(tiny, kshot, out), "--resume"]) == 0
    assert calls == {"units": 16 - units_before, "tests": tests_after}
    assert (
        f"16 units, {units_before} recorded, {16 - units_before} to train in "
        f"{16 - units_before} jobs, one at a time in this process on cpu; {tests_after + 4} test"
    ) in capsys.readouterr().err
    assert _report(out) == _report(every_point)
    assert not any((out / CHECKPOINTS_NAME).glob("*"))


def test_a_ledger_of_every_point_resumes_without_a_test_pass(
    tiny, kshot, tmp_path, monkeypatch, every_point
):
    """Units tested when they were trained (--test-every-point, or an earlier version that
    tested every point) are never tested again."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "points.jsonl").write_bytes((every_point / "points.jsonl").read_bytes())
    calls = _watch(monkeypatch)
    assert main([*_argv(tiny, kshot, out), "--resume"]) == 0
    assert calls == {"units": 0, "tests": 0} and _report(out) == _report(every_point)


def test_evaluation_batches_hold_the_token_budget_and_predict_the_same(tiny, tiny_tokenizer, kshot):
    """Length-sorted batches of at most the budget's padded tokens (an example longer than the
    budget alone) give the predictions of one example at a time, in the examples' order."""
    from transformers import AutoModelForMaskedLM

    task = get_task("STS-B")
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    learner = PromptLearner(model, tiny_tokenizer, task, task.template, task.verbalizer, 64)
    features = learner.encode(load_kshot(kshot, task, 8, 13).tests["STS-B"])
    shapes = []
    forward = learner.forward
    learner.forward = lambda batch: shapes.append(tuple(batch.input_ids.shape)) or forward(batch)
    alone = predict(learner, features, 1, torch.device("cpu"))
    longest = max(len(f.input_ids) for f in features)
    shapes.clear()
    budget = 3 * longest
    batched = predict(learner, features, 100, torch.device("cpu"), token_budget=budget)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert all(rows * width <= budget for rows, width in shapes) and len(shapes) < len(features)
    assert sum(rows for rows, _ in shapes) == len(features)
    lengths = sorted(len(f.input_ids) for f in features)
    budget = lengths[len(lengths) // 2]  # the longer half is over it: each of them alone
    shapes.clear()
    batched = predict(learner, features, 100, torch.device("cpu"), token_budget=budget)
    assert batched == pytest.approx(alone, abs=1e-5)
    over = [(1, n) for n in lengths if n > budget]
    assert sorted(s for s in shapes if s[0] * s[1] > budget) == over
    assert sum(rows for rows, _ in shapes) == len(features)
