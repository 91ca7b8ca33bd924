"""Objectives as components: registered by name, weighted and summed, and an objective that
needs the teacher's internals gets them from the online teacher (and only then is one loaded)."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from smash.store.schema import STEP_KEYS
from smash.train.config import ConfigError, load_config
from smash.train.metrics import read_metrics
from smash.train.objectives import Objective, objective_names, register_objective
from smash.train.objectives.ce import PredictionDistillation
from smash.train.student import DistillStudent, OnlineTeacher
from smash.train.trainer import Trainer
from train_support import first_batch, pair_store_of, tiny_config
from transformers import AutoModelForMaskedLM


@register_objective
class LastHiddenMSE(Objective):
    """A test-only objective in the shape of the paper's Eq. 2, on the last layer only: MSE
    between the student's and the teacher's last hidden states over the real tokens."""

    name = "test-last-hidden"
    needs = frozenset({"teacher_hidden_states"})
    student_needs = frozenset({"hidden_states"})

    def loss(self, student, batch, state):
        real = batch["attention_mask"].bool()
        ours = student.answers.hidden_states[-1][real]
        theirs = batch["teacher_hidden_states"][-1][real]
        return F.mse_loss(ours.float(), theirs.float())


@pytest.fixture(scope="module")
def pair_store(tiny, tmp_path_factory):
    return pair_store_of(tiny, tmp_path_factory)


def test_the_built_in_objectives_are_registered():
    assert {"ce", "hard", "rule", "test-last-hidden"} <= set(objective_names())
    with pytest.raises(ValueError, match="already registered"):
        register_objective(type("Other", (LastHiddenMSE,), {}))


def test_weighted_objectives_are_summed(tiny, tiny_tokenizer, pair_store):
    batch = first_batch(pair_store, 6, tiny_tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in STEP_KEYS if k in batch}
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    ce = PredictionDistillation(tail="bucket")
    one = DistillStudent(model, [(ce, 1.0)], [[None]])(**inputs)
    both = DistillStudent(model, [(ce, 1.0), (ce, 0.5)], [[None, None]])(**inputs)
    torch.testing.assert_close(both, 1.5 * one)


def test_the_online_teacher_fills_only_what_is_needed(tiny, tiny_tokenizer, pair_store):
    batch = {k: v for k, v in first_batch(pair_store, 4, tiny_tokenizer.pad_token_id).items()}
    teacher = OnlineTeacher(str(tiny["teacher"]), torch.device("cpu"))
    filled = teacher.fill(batch, frozenset({"teacher_hidden_states"}))
    assert torch.equal(filled["topk_ids"], batch["topk_ids"])  # not asked for: the store's
    model = AutoModelForMaskedLM.from_pretrained(tiny["teacher"])
    with torch.no_grad():
        direct = model.base_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        ).hidden_states
    assert len(filled["teacher_hidden_states"]) == len(direct)
    for got, expected in zip(filled["teacher_hidden_states"], direct):
        torch.testing.assert_close(got, expected)


def test_an_objective_on_the_teachers_internals_needs_the_teacher(tmp_path, pair_store, tiny):
    config = tiny_config(tmp_path, tiny["student"], [(pair_store, 1.0)],
                         objective={"ce": 1.0, "test-last-hidden": 0.5})  # fmt: skip
    with pytest.raises(ConfigError, match="'test-last-hidden' distils the teacher's internals"):
        load_config(config)
    with pytest.raises(ConfigError, match="its weight must be a finite number > 0"):
        load_config({**config, "objective": {"ce": 0}})


def test_a_new_objective_trains_with_the_online_teacher(tiny, pair_store, tmp_path):
    """The student is the teacher with one layer's output scaled: the hidden-state term is
    above 0, and its gradient (the only one) moves the student."""
    from safetensors.torch import load_file, save_file

    student = tmp_path / "student"
    shutil.copytree(tiny["teacher"], student)
    weights = load_file(student / "model.safetensors")
    name = next(k for k in weights if k.endswith("layer.1.output.dense.weight"))
    weights[name] = weights[name] * 0.5
    save_file(weights, student / "model.safetensors", metadata={"format": "pt"})
    config = tiny_config(tmp_path / "run", student, [(pair_store, 1.0)], max_steps=6,
                         objective={"test-last-hidden": 1.0}, teacher=str(tiny["teacher"]))  # fmt: skip
    trainer = Trainer(load_config(config))
    trainer.setup()
    assert trainer.needs == {"teacher_hidden_states"}
    trainer.train()
    trainer.cleanup()
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 6 and all(0.0 < loss < 1.0 for loss in losses)
    trained = load_file(tmp_path / "run" / "student" / "model.safetensors")
    assert not torch.equal(trained[name], weights[name])
