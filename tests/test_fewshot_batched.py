"""Model batching: units of one mode, task and batch size trained together, their weights
stacked, equal to each unit trained alone up to fp32 round-off (the tiny models have dropout
off); the units whose learners cannot be batched train alone; a kill resumes exactly."""

import json
from pathlib import Path

import pytest
import torch
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot.batched import train_together
from smash.train.fewshot.cli import main
from smash.train.fewshot.demonstrations import DemoPromptLearner
from smash.train.fewshot.jobs import Job
from smash.train.fewshot.learners import FinetuneLearner, PromptLearner
from smash.train.fewshot.protocol import Protocol, checkpoint_tests, train_point

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
REAL_JOB = Job.__call__


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("SST-2", "STS-B")], seeds=[13, 21], k=8)
    return root


def _maker(kind: str, tiny, tokenizer, task, split):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    def make():
        if kind == "finetune":  # a fresh head: its seed's, as alone
            model = AutoModelForSequenceClassification.from_pretrained(
                tiny["student"], num_labels=task.num_outputs
            )
            return FinetuneLearner(model, tokenizer, task, 64)
        model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
        if kind == "prompt-demo":
            return DemoPromptLearner(model, tokenizer, task, task.template, task.verbalizer, 64,
                                     split.train, seed=13, samples=2)  # fmt: skip
        return PromptLearner(model, tokenizer, task, task.template, task.verbalizer, 64)

    return make


def _recording(make, losses: list):
    """``make``'s learner, its loss at every step recorded."""

    def made():
        learner = make()
        loss = learner.loss
        learner.loss = lambda out, labels: (
            losses.append(loss(out, labels).item()) or loss(out, labels)
        )
        return learner

    return made


@pytest.mark.parametrize(
    "kind, task_name", [("prompt", "SST-2"), ("prompt", "STS-B"), ("finetune", "SST-2"),
                        ("prompt-demo", "SST-2")],
)  # fmt: skip
def test_units_trained_together_equal_each_alone(tiny, tiny_tokenizer, kshot, kind, task_name):
    """Two seeds x two learning rates at batch 4: each unit's loss at every step, its best dev
    metric, step, checkpoint and test metrics are those of the unit trained alone. (The tiny
    model's STS-B predictions span about 3e-4, so one fp32 rounding step of a prediction,
    2.4e-7 at 2.5, moves its Pearson correlation by up to 1e-3.)"""
    task = get_task(task_name)
    protocol = Protocol(max_steps=4, eval_every=2)
    cpu = torch.device("cpu")
    units = [(seed, lr) for seed in (13, 21) for lr in (1e-3, 1e-2)]
    splits = {seed: load_kshot(kshot, task, 8, seed) for seed in (13, 21)}
    makes = {seed: _maker(kind, tiny, tiny_tokenizer, task, splits[seed]) for seed in (13, 21)}
    alone = []
    for seed, lr in units:
        losses: list[float] = []
        result, state = train_point(_recording(makes[seed], losses), splits[seed], seed, lr, 4,
                                    protocol, cpu)  # fmt: skip
        alone.append((result, state, losses))
    learners = []
    for seed, _ in units:
        torch.manual_seed(seed)
        learners.append(makes[seed]())
    together = train_together(learners, [splits[s] for s, _ in units], [s for s, _ in units],
                              [lr for _, lr in units], 4, protocol, cpu)  # fmt: skip
    for (seed, _), learner, (result, state, losses), (a_result, a_state, a_losses) in zip(
        units, learners, together, alone
    ):
        assert losses == pytest.approx(a_losses, rel=1e-4, abs=1e-5)
        assert state.keys() == a_state.keys()
        for name in state:
            torch.testing.assert_close(state[name], a_state[name], rtol=1e-4, atol=1e-5)
        assert (result.lr, result.batch_size, result.step) == (a_result.lr, 4, a_result.step)
        tolerance = 1e-2 if task.is_regression else 0
        assert result.dev == pytest.approx(a_result.dev, abs=tolerance)
        tests = checkpoint_tests(learner, splits[seed], state, protocol, cpu)
        alone_tests = checkpoint_tests(makes[seed](), splits[seed], a_state, protocol, cpu)
        assert tests == pytest.approx(alone_tests, abs=tolerance)
    assert len({tuple(losses) for _, _, losses in together}) == 4  # four different units


def _argv(tiny, kshot, out) -> list[str]:
    """SST-2, 2 seeds x 3 learning rates x 2 batch sizes, and zero-shot: 14 units."""
    return ["--model", str(tiny["student"]), "--tasks", "SST-2", "--data", str(kshot), "--mode",
            "prompt", "zero-shot", "--k", "8", "--seeds", "13", "21", "--lrs", "1e-4", "3e-3",
            "1e-2", "--batch-sizes", "2", "4", "--max-steps", "4", "--eval-every", "2",
            "--max-length", "64", "--device", "cpu", "--out", str(out)]  # fmt: skip


def _entries(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["entries"]


@pytest.fixture(scope="module")
def batched(tiny, kshot, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batched") / "out"
    assert main([*_argv(tiny, kshot, out), "--batch-units", "4"]) == 0
    return out


def test_batch_units_chooses_and_scores_as_one_at_a_time(tiny, kshot, tmp_path, batched):
    """The report equals one unit at a time's but for fp32 round-off in the metrics."""
    out = tmp_path / "out"
    assert main(_argv(tiny, kshot, out)) == 0
    for mine, theirs in zip(_entries(batched), _entries(out), strict=True):
        for a, b in zip(mine["seeds"], theirs["seeds"], strict=True):
            assert (a["lr"], a["batch_size"], a["step"]) == (b["lr"], b["batch_size"], b["step"])
            assert a["grid_dev"] == pytest.approx(b["grid_dev"], abs=1e-6)
            assert a["tests"] == pytest.approx(b["tests"], abs=1e-6)


def test_a_killed_batched_evaluation_resumes_exactly(
    tiny, kshot, tmp_path, monkeypatch, capsys, batched
):
    """The 12 prompt units make 4 jobs (batch 2 and 4, each 6 units cut in 4 + 2), recorded
    in one write each; a kill after the first job keeps its 4 units, and the resumed run
    trains the others in the jobs an uninterrupted run would."""
    out = tmp_path / "out"
    jobs = []

    def job(self, cache=None):
        if len(jobs) == 1:
            raise KeyboardInterrupt
        jobs.append(len(self.units))
        return REAL_JOB(self, cache)

    monkeypatch.setattr(Job, "__call__", job)
    with pytest.raises(KeyboardInterrupt):
        main([*_argv(tiny, kshot, out), "--batch-units", "4"])
    lines = (out / "points.jsonl").read_text().splitlines()
    assert jobs == [4] and len(lines) == 1 + 4
    jobs.clear()
    capsys.readouterr()
    monkeypatch.setattr(Job, "__call__", lambda self, cache=None: jobs.append(len(self.units))
                        or REAL_JOB(self, cache))  # fmt: skip
    assert main([*_argv(tiny, kshot, out), "--batch-units", "4", "--resume"]) == 0
    assert jobs == [2, 4, 2, 1, 1]  # the rest of batch 2, batch 4; zero-shot one at a time
    assert "14 units, 4 recorded, 10 to train in 5 jobs" in capsys.readouterr().err
    assert _entries(out) == _entries(batched)


def test_a_learner_without_a_batched_path_trains_alone_in_its_job(
    tiny_t5, kshot, tmp_path, monkeypatch
):
    """T5 has no batched path: the two units of its job train one after the other, as they do
    with --batch-units 1, to the same ledger."""
    jobs = []
    monkeypatch.setattr(Job, "__call__", lambda self, cache=None: jobs.append(len(self.units))
                        or REAL_JOB(self, cache))  # fmt: skip
    units = {}
    for batch_units in ("2", "1"):
        out = tmp_path / batch_units
        assert main(["--model", str(tiny_t5["student"]), "--tasks", "SST-2", "--data", str(kshot),
                     "--mode", "prompt", "--k", "8", "--seeds", "13", "--lrs", "1e-3", "1e-2",
                     "--batch-sizes", "4", "--max-steps", "2", "--eval-every", "2",
                     "--max-length", "64", "--device", "cpu", "--out", str(out),
                     "--batch-units", batch_units]) == 0  # fmt: skip
        lines = (out / "points.jsonl").read_text().splitlines()[1:]
        units[batch_units] = [json.loads(line)["result"] for line in lines if '"unit"' in line]
    assert jobs == [2, 1, 1] and units["2"] == units["1"]
