"""train-student with T5 (paper 4.7): offline = online, a whole run, and mixed families refused."""

import pytest
import torch
from smash.store.manifest import load_manifest
from smash.train.cli import main as train_student
from smash.train.objectives.ce import PredictionDistillation
from smash.train.objectives.hard import HardLabels, HardStore
from smash.train.objectives.rule import RuleLabels
from smash.train.student import DistillStudent, OnlineTeacher
from train_support import (
    assert_offline_equals_online,
    first_batch,
    loss_and_grads,
    precompute,
    tiny_config,
    write_config,
)
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer


@pytest.fixture(scope="module")
def t5_tok(tiny_t5):
    return AutoTokenizer.from_pretrained(tiny_t5["teacher"])


@pytest.fixture(scope="module")
def t5_store(tiny, tiny_t5, t5_tok, tmp_path_factory):
    """Sentence pairs from the tiny T5 teacher with the whole vocabulary (k = V)."""
    out = tmp_path_factory.mktemp("t5_pairs") / "store"
    return precompute("sentence-pair", tiny["corpus"], tiny_t5["teacher"], out, k=len(t5_tok), n=48)


@pytest.mark.parametrize(
    "objective, loss",
    [("ce", "logits"), ("ce", "fused_linear"), ("hard", "logits"), ("rule", "logits")],
)
def test_offline_store_equals_online_t5_teacher(tiny_t5, t5_tok, t5_store, objective, loss):
    """A T5 store with k = V gives the live T5 teacher's losses and gradients."""
    batch = first_batch(t5_store, 12, t5_tok.pad_token_id)
    sentinel = t5_tok.convert_tokens_to_ids("<extra_id_0>")
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["student"])
    if objective == "ce":
        chosen, state = PredictionDistillation(loss=loss, tail="bucket", temperature=2.0), None
    else:
        words = torch.tensor(load_manifest(t5_store).producer["verbalizer_ids"])
        hard = objective == "hard"
        chosen, state = (HardLabels(), HardStore(words, False)) if hard else (RuleLabels(), words)
    student = DistillStudent(model, [(chosen, 1.0)], [[state]], sentinel_id=sentinel)
    teacher = OnlineTeacher(str(tiny_t5["teacher"]), torch.device("cpu"), sentinel_id=sentinel)
    offline_loss, offline_grads = loss_and_grads(student, batch)
    online_loss, online_grads = loss_and_grads(student, teacher.fill(batch))
    torch.testing.assert_close(online_loss, offline_loss, rtol=1e-5, atol=1e-6)
    assert offline_grads.keys() == online_grads.keys() and offline_grads
    assert any("decoder" in name for name in offline_grads)  # the loss reaches the decoder
    for name in offline_grads:
        torch.testing.assert_close(online_grads[name], offline_grads[name], rtol=1e-4, atol=1e-7)


def test_offline_and_online_t5_runs_train_the_same(tiny_t5, t5_store, tmp_path):
    """The whole trainer on a T5 store: losses per step and the exported weights."""
    assert_offline_equals_online(tmp_path, tiny_t5["student"], t5_store, tiny_t5["teacher"],
                                 AutoModelForSeq2SeqLM, eval_store=str(t5_store),
                                 eval_examples=8)  # fmt: skip


def test_mixing_families_is_refused_naming_both(tiny, tiny_t5, t5_store, tmp_path, capsys):
    masked_store = precompute("sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "m",
                              k=8, n=3, shard_size=3)  # fmt: skip
    cases = [  # (student, store, teacher)
        (tiny["student"], t5_store, None),
        (tiny_t5["student"], masked_store, None),
        (tiny_t5["student"], t5_store, str(tiny["teacher"])),
    ]
    for i, (student, store, teacher) in enumerate(cases):
        config = tiny_config(tmp_path / f"run{i}", student, [(store, 1.0)], teacher=teacher)
        assert train_student(["--config", write_config(tmp_path / f"c{i}.json", config)]) == 2
        message = capsys.readouterr().err
        if teacher is None:
            theirs, ours = ("t5", "masked-lm") if store == t5_store else ("masked-lm", "t5")
            assert f"{store}: a store of a {theirs} teacher" in message, message
            assert f"the student {student} is a {ours} model" in message
        else:
            assert f"teacher {teacher} is a masked-lm model and the student {student} a t5" in (
                message
            )
