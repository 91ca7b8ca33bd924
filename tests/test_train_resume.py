"""Kill and resume: a run killed after a checkpoint and resumed ends with the same weights.

CPU, fp32, two stores mixed 2:1, one DataLoader worker, gradient accumulation and dropout:
the resumed run must restore the weights, AdamW's moments, the LR schedule, every stream's
position inside the worker, the store-mixing draws and the RNG states to match bit for bit.
So must a run that masks a masked-text store anew every step with the teacher loaded.
"""

import pytest
import torch
from smash.train.config import load_config
from smash.train.metrics import read_metrics
from smash.train.trainer import Trainer
from train_support import (
    mlm_store_of,
    pair_store_of,
    sentiment_store_of,
    student_with_dropout,
    tiny_config,
)
from transformers import AutoModelForMaskedLM

STEPS, CHECKPOINT, KILLED_AT = 8, 3, 5


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def config_for(tiny, tmp_path_factory):
    pairs = pair_store_of(tiny, tmp_path_factory)
    sentiment = sentiment_store_of(tiny, tmp_path_factory)
    student = student_with_dropout(tiny, tmp_path_factory.mktemp("dropout") / "student")

    def make(out):
        return load_config(
            tiny_config(
                out,
                student,
                [(pairs, 2.0), (sentiment, 1.0)],
                max_steps=STEPS,
                checkpoint_every=CHECKPOINT,
                num_workers=1,
            )
        )

    return make


@pytest.fixture(scope="module")
def dynamic_masking_config_for(tiny, tmp_path_factory):
    """Setting 5b: DistilBERT's loss, the teacher loaded, new masks every step."""
    mlm = mlm_store_of(tiny, tmp_path_factory)

    def make(out):
        return load_config(
            tiny_config(out, tiny["student_wide"], [(mlm, 1.0)], max_steps=STEPS,
                        checkpoint_every=CHECKPOINT, num_workers=1, teacher=str(tiny["teacher"]),
                        objective={"ce": 5.0, "mlm": 2.0, "cos": 1.0}, dynamic_masking=True)
        )  # fmt: skip

    return make


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.module.model.state_dict().items()}


def losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}


@pytest.mark.parametrize("run", ["mixed stores", "dynamic masking"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(request, run, tmp_path, monkeypatch):
    config_for = request.getfixturevalue(
        "config_for" if run == "mixed stores" else "dynamic_masking_config_for"
    )
    straight = Trainer(config_for(tmp_path / "straight"))
    straight.setup()
    assert straight.train() == STEPS
    expected = weights(straight)
    straight.cleanup()

    # the export round trip: the exported student reloads with exactly these weights
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "straight" / "student")
    for name, value in exported.state_dict().items():
        assert torch.equal(value, expected[name]), name

    killed = Trainer(config_for(tmp_path / "killed"))
    killed.setup()
    step = killed._micro_step

    def dies_during_step_after_kill_point(batch, micro):
        if killed.step == KILLED_AT:
            raise Killed
        return step(batch, micro)

    monkeypatch.setattr(killed, "_micro_step", dies_during_step_after_kill_point)
    with pytest.raises(Killed):
        killed.train()
    assert killed.step == KILLED_AT  # steps 4 and 5 were done after the last checkpoint (3)
    killed.cleanup()

    resumed = Trainer(config_for(tmp_path / "killed"), resume=True)
    resumed.setup()
    assert resumed.step == CHECKPOINT
    assert resumed.train() == STEPS
    for name, value in weights(resumed).items():
        assert torch.equal(value, expected[name]), name
    resumed.cleanup()
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")


def test_stop_at_step_keeps_the_schedule(config_for, tmp_path):
    """``--stop-at-step`` (job slots) checkpoints and stops; the LR still spans max_steps."""
    first = Trainer(config_for(tmp_path / "slots"))
    first.setup()
    assert first.train(stop_at_step=2) == 2
    first.cleanup()
    assert not (tmp_path / "slots" / "student").exists()  # exported only when finished
    second = Trainer(config_for(tmp_path / "slots"), resume=True)
    second.setup()
    second.train(stop_at_step=STEPS)
    second.cleanup()
    lrs = [r["lr"] for r in read_metrics(tmp_path / "slots") if "lr" in r]
    assert lrs == pytest.approx(expected_lrs(STEPS, warmup=2, peak=3e-3), rel=1e-9)


def expected_lrs(total, *, warmup, peak):
    """The learning rate after each of ``total`` steps of one uninterrupted schedule."""
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = WarmupDecayLR(
        optimizer,
        total_num_steps=total,
        warmup_max_lr=peak,
        warmup_num_steps=warmup,
        warmup_type="linear",
    )
    out = []
    for _ in range(total):
        optimizer.step()
        schedule.step()
        out.append(schedule.get_lr()[0])
    return out
