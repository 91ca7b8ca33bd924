"""The paper's distillation settings 3-5 (section 4.4): hidden states (Eq. 2), attentions (Eq. 3)
and DistilBERT's loss, each equal to a hand-written reference on the Hugging Face models' own
outputs (losses and student gradients); the mlm task's store; dynamic masking; the refusals."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from smash.precompute.corpus import open_corpus
from smash.precompute.masked_lm import MaskedLMTask
from smash.precompute.sentences import SentenceSplitter
from smash.precompute.shared.masking import Masking, example_rng
from smash.store.manifest import load_manifest
from smash.store.reader import StoreDataset
from smash.store.schema import STEP_KEYS
from smash.train.config import ConfigError, load_config
from smash.train.dynamic_masking import remask, restored_ids
from smash.train.metrics import read_metrics
from smash.train.objectives import objective_class
from smash.train.objectives.ce import PredictionDistillation
from smash.train.objectives.internals import layer_map
from smash.train.student import DistillStudent, OnlineTeacher, attention_path
from smash.train.trainer import Trainer
from train_support import first_batch, grads_of, mlm_store_of, pair_store_of, tiny_config
from transformers import AutoModelForMaskedLM


@pytest.fixture(scope="module")
def pair_store(tiny, tmp_path_factory):
    return pair_store_of(tiny, tmp_path_factory)


@pytest.fixture(scope="module")
def mlm_store(tiny, tmp_path_factory):
    return mlm_store_of(tiny, tmp_path_factory)


def test_layer_map_is_the_uniform_strategy():
    assert layer_map(6, 12) == [0, 2, 4, 6, 8, 10, 12]  # DistilRoBERTa <- RoBERTa-base
    assert layer_map(6, 24) == [0, 4, 8, 12, 16, 20, 24]
    assert layer_map(1, 2) == [0, 2]
    assert layer_map(4, 6) == [0, 1, 3, 4, 6]  # not a multiple: the last still maps to the last
    with pytest.raises(ValueError, match="layer counts must be >= 1"):
        layer_map(0, 12)


def _step(tiny, batch, objectives, *, attentions=False, student=None, train=False):
    """The objectives' loss and student gradients through ``DistillStudent`` with the online
    teacher, and the teacher (to check that nothing reached it). ``train``: the student in
    train mode, its dropout on, as the trainer runs it."""
    model = AutoModelForMaskedLM.from_pretrained(
        student or tiny["student_wide"], **attention_path(attentions)
    )
    model.train(train)
    teacher = OnlineTeacher(str(tiny["teacher"]), torch.device("cpu"), attentions=attentions)
    needs = frozenset().union(*(o.needs for o, _ in objectives))
    inputs = teacher.fill({k: batch[k] for k in STEP_KEYS if k in batch}, needs)
    student = DistillStudent(model, objectives, [[None] * len(objectives)])
    loss = student(**inputs)
    loss.backward()
    return loss.detach(), grads_of(model), teacher.adapter.model


def _reference(tiny, batch, loss_of, *, attentions=False, student=None):
    """``loss_of(student_outputs, teacher_outputs)`` on the HF models' own forward passes (eval
    mode, where the eager path's attention weights are the probabilities)."""
    eager = {"attn_implementation": "eager"} if attentions else {}
    model = AutoModelForMaskedLM.from_pretrained(student or tiny["student_wide"], **eager)
    teacher = AutoModelForMaskedLM.from_pretrained(tiny["teacher"], **eager)
    args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    flags = {"output_hidden_states": True, "output_attentions": attentions}
    with torch.no_grad():
        theirs = teacher(**args, **flags)
    ours = model(**args, **flags)
    loss = loss_of(ours, theirs)
    loss.backward()
    return loss.detach(), grads_of(model)


def _assert_same(got, expected, rtol=1e-5, atol=1e-6):
    (loss, grads), (ref_loss, ref_grads) = got, expected
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=rtol, atol=atol, msg=name)


def test_hidden_state_distillation_is_eq_2(tiny, tiny_tokenizer, pair_store):
    batch = first_batch(pair_store, 6, tiny_tokenizer.pad_token_id)  # lengths differ: padding
    assert not batch["attention_mask"].bool().all()
    hidn = objective_class("hidn")()
    loss, grads, teacher = _step(tiny, batch, [(hidn, 1.0)])
    real = batch["attention_mask"].bool()

    def eq2(ours, theirs):  # student layers 0, 1 <- teacher layers 0, 2, over real tokens
        total = 0.0
        for m, g in ((0, 0), (1, 2)):
            diff = (ours.hidden_states[m] - theirs.hidden_states[g])[real]  # (real tokens, H)
            total = total + (diff**2).sum() / diff.numel()
        return total

    _assert_same((loss, grads), _reference(tiny, batch, eq2))
    assert loss > 0
    assert all(p.grad is None for p in teacher.parameters())  # no gradient reaches the teacher


def eq3(batch):
    """Eq. 3 by hand: student layer 1 <- teacher layer 2, every head, real (q, k) pairs."""
    real = batch["attention_mask"].bool()

    def loss(ours, theirs):
        a, t = ours.attentions[0], theirs.attentions[1]  # (B, heads, L, L)
        total = 0.0
        for h in range(a.shape[1]):
            diffs = [(a[b, h] - t[b, h])[real[b]][:, real[b]] for b in range(len(a))]
            squares = torch.cat([(d**2).reshape(-1) for d in diffs])
            total = total + squares.mean()
        return total

    return loss


def test_attention_distillation_is_eq_3(tiny, tiny_tokenizer, pair_store):
    batch = first_batch(pair_store, 6, tiny_tokenizer.pad_token_id)
    attn = objective_class("attn")()
    loss, grads, teacher = _step(tiny, batch, [(attn, 1.0)], attentions=True)
    _assert_same((loss, grads), _reference(tiny, batch, eq3(batch), attentions=True))
    assert loss > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_attention_distillation_takes_the_probabilities_before_dropout(
    tiny, tiny_tokenizer, pair_store, tmp_path
):
    """The student in train mode with attention dropout 0.1 (DistilRoBERTa's): Eq. 3 on its
    attention probabilities, not on the weights after dropout. Hidden dropout is off, so the
    one student layer's probabilities are those of eval mode, and so are loss and gradients."""
    student = tmp_path / "student"
    shutil.copytree(tiny["student_wide"], student)
    config = json.loads((student / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1)
    (student / "config.json").write_text(json.dumps(config))
    batch = first_batch(pair_store, 6, tiny_tokenizer.pad_token_id)
    attn = objective_class("attn")()
    torch.manual_seed(0)
    got = _step(tiny, batch, [(attn, 1.0)], attentions=True, student=student, train=True)
    expected = _reference(tiny, batch, eq3(batch), attentions=True, student=student)
    _assert_same(got[:2], expected)


def test_distilbert_loss_is_5_ce_2_mlm_1_cos(tiny, tiny_tokenizer, mlm_store):
    batch = first_batch(mlm_store, 4, tiny_tokenizer.pad_token_id)
    assert (batch["mlm_labels"] >= 0).all() and len(batch["mask_batch"]) > 4  # several per row
    objectives = [
        (PredictionDistillation(temperature=2.0, scale_t2=True, kernel_impl="torch"), 5.0),
        (objective_class("mlm")(), 2.0),
        (objective_class("cos")(), 1.0),
    ]
    loss, grads, teacher = _step(tiny, batch, objectives)
    rows, positions = batch["mask_batch"], batch["mask_positions"]
    real = batch["attention_mask"].bool()

    def distilbert(ours, theirs):
        s, t = ours.logits[rows, positions], theirs.logits[rows, positions]  # (R, V)
        stored = F.log_softmax(t, -1).half().float()  # the teacher's numbers, as a store holds them
        ce = -(F.softmax(stored / 2, -1) * F.log_softmax(s / 2, -1)).sum(-1).mean() * 2**2
        mlm = F.cross_entropy(s, batch["mlm_labels"])
        h_s, h_t = ours.hidden_states[-1][real], theirs.hidden_states[-1][real]
        cos = F.cosine_embedding_loss(h_s, h_t, torch.ones(len(h_s)))
        return 5 * ce + 2 * mlm + cos

    _assert_same((loss, grads), _reference(tiny, batch, distilbert), rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())


def test_the_mlm_store_holds_every_mask_its_top_k_and_its_original_token(
    tiny, tiny_tokenizer, mlm_store
):
    manifest = load_manifest(mlm_store)
    assert manifest.producer["task"] == "mlm" and manifest.producer["template"] is None
    task = MaskedLMTask(SentenceSplitter(), segment_words=30, max_length=64)
    segments = [ex.sentences[0] for ex in task.examples(open_corpus(str(tiny["corpus"])), 0)]
    stored = list(StoreDataset(mlm_store, shuffle=False, epochs=1, rank=0, world_size=1))
    assert len(stored) == manifest.num_samples == 48
    teacher = AutoModelForMaskedLM.from_pretrained(tiny["teacher"])
    masked = chosen = replaced = 0
    for ex, segment in zip(stored, segments):
        ids, positions, labels = ex["input_ids"], ex["mask_positions"], ex["mlm_labels"]
        restored = ids.copy()
        restored[positions] = labels
        expected = tiny_tokenizer(segment, truncation=True, max_length=64)["input_ids"]
        assert restored.tolist() == expected  # the original tokens, every one of them
        assert len(positions) >= 1 and 0 not in positions and len(ids) - 1 not in positions
        masked += len(positions)
        chosen += len(ids) - 2
        replaced += int((ids[positions] == tiny_tokenizer.mask_token_id).sum())
        with torch.no_grad():
            logits = teacher(input_ids=torch.from_numpy(ids)[None]).logits[0, positions]
        logprobs = torch.log_softmax(logits.float(), -1)
        top = torch.topk(logprobs, 32, dim=-1)
        for row in range(len(positions)):  # the same top-k set, values to fp16 rounding
            assert set(ex["topk_ids"][row].tolist()) == set(top.indices[row].tolist())
            ours = torch.from_numpy(ex["topk_logprobs"][row].astype(np.float32))
            theirs = logprobs[row, torch.from_numpy(ex["topk_ids"][row])]
            torch.testing.assert_close(ours, theirs, rtol=0, atol=4e-3)
    assert 0.10 < masked / chosen < 0.20  # 15% of the non-special tokens
    assert 0.70 < replaced / masked < 0.90  # 80% of them became <mask>


def test_dynamic_masking_restores_the_text_and_masks_it_anew(tiny_tokenizer, mlm_store):
    batch = first_batch(mlm_store, 6, tiny_tokenizer.pad_token_id)
    options = {
        "mask_id": tiny_tokenizer.mask_token_id,
        "vocab_size": len(tiny_tokenizer),
        "special_ids": tiny_tokenizer.all_special_ids,
    }
    first = remask(batch, Masking(), example_rng(3, 0, 5, 0), **options)
    again = remask(batch, Masking(), example_rng(3, 0, 5, 0), **options)
    other = remask(batch, Masking(), example_rng(3, 0, 6, 0), **options)
    for key in ("input_ids", "mask_batch", "mask_positions", "mlm_labels"):
        assert torch.equal(first[key], again[key])  # a pure function of seed, rank, step
    assert not torch.equal(first["mask_positions"], other["mask_positions"])
    assert not torch.equal(first["mask_positions"], batch["mask_positions"])
    assert torch.equal(restored_ids(first), restored_ids(batch))
    assert "topk_ids" not in first  # the stored teacher outputs belong to the old masks
    real = batch["attention_mask"].bool()
    assert real[first["mask_batch"], first["mask_positions"]].all()  # never padding
    assert set(torch.unique(first["mask_batch"]).tolist()) == set(range(6))


SETTINGS = {  # the paper's section 4.4 settings 3-5b on the tiny models
    "3 ce+hidn": {"objective": {"ce": 1.0, "hidn": 0.01}, "online": True},
    "4 ce+attn": {"objective": {"ce": 1.0, "attn": 0.01}, "online": True},
    "5a distilbert offline": {"objective": {"ce": 5.0, "mlm": 2.0}, "mlm": True},
    "5b distilbert online": {
        "objective": {"ce": 5.0, "mlm": 2.0, "cos": 1.0},
        "online": True,
        "mlm": True,
        "dynamic_masking": True,
    },
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_each_setting_trains(tiny, pair_store, mlm_store, tmp_path, setting, capsys):
    spec = SETTINGS[setting]
    extra = {"teacher": str(tiny["teacher"])} if spec.get("online") else {}
    if spec.get("mlm"):
        extra.update(temperature=2.0, scale_t2=True)
    if spec.get("dynamic_masking"):
        extra["dynamic_masking"] = True
    store = mlm_store if spec.get("mlm") else pair_store
    config = tiny_config(tmp_path / "run", tiny["student_wide"], [(store, 1.0)], max_steps=3,
                         objective=spec["objective"], **extra)  # fmt: skip
    trainer = Trainer(load_config(config))
    trainer.setup()
    assert trainer.train() == 3
    trainer.cleanup()
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    said = capsys.readouterr().out
    assert ("online-teacher mode: loading the teacher" in said) == bool(spec.get("online"))
    if spec.get("dynamic_masking"):
        assert "masks drawn anew every step" in said


def test_mismatched_models_and_stores_are_refused(tiny, pair_store, mlm_store, tmp_path):
    def setup(student, store, **overrides):
        config = tiny_config(tmp_path / "run", student, [(store, 1.0)], max_steps=1, **overrides)
        Trainer(load_config(config)).setup()

    teacher = str(tiny["teacher"])
    with pytest.raises(ValueError, match=r"'hidn'.*hidden sizes.*student .*has 32 .*teacher .*64"):
        setup(tiny["student"], pair_store, objective={"ce": 1, "hidn": 0.01}, teacher=teacher)
    with pytest.raises(ValueError, match=r"'attn'.*head counts.*has 2 .*has 4"):
        setup(tiny["student"], pair_store, objective={"ce": 1, "attn": 0.01}, teacher=teacher)
    with pytest.raises(ValueError, match=r"'mlm' needs the original tokens.*'sentence-pair'"):
        setup(tiny["student"], pair_store, objective={"ce": 1, "mlm": 1})
    with pytest.raises(ValueError, match=r"dynamic_masking needs masked-text stores"):
        setup(tiny["student"], pair_store, teacher=teacher, dynamic_masking=True)
    with pytest.raises(ConfigError, match="dynamic_masking needs the online teacher"):
        load_config(tiny_config(tmp_path, tiny["student"], [(mlm_store, 1)], dynamic_masking=True))


@pytest.mark.parametrize(
    "name, objective, teacher",
    [
        ("paper-ce-hidn", {"ce": 1.0, "hidn": 0.01}, "roberta-base"),
        ("paper-ce-attn", {"ce": 1.0, "attn": 0.01}, "roberta-base"),
        ("paper-distilbert-offline", {"ce": 5.0, "mlm": 2.0}, None),
        ("paper-distilbert-online", {"ce": 5.0, "mlm": 2.0, "cos": 1.0}, "roberta-base"),
    ],
)
def test_shipped_settings_hold_the_papers_values(name, objective, teacher):
    from smash.train.engine import resolve_deepspeed

    cfg = load_config(name, stores=["s"])
    ds = resolve_deepspeed(cfg.deepspeed, max_steps=cfg.max_steps)
    assert (cfg.objectives, cfg.teacher, cfg.student) == (objective, teacher, "distilroberta-base")
    distilbert = "distilbert" in name  # appendix A: lr 1e-5, length 512, batch 4 x 32, T = 2
    assert ds["train_batch_size"] == 128 and cfg.max_steps == 200_000
    assert ds["train_micro_batch_size_per_gpu"] == (4 if distilbert else 32)
    assert ds["optimizer"]["params"]["lr"] == (1e-5 if distilbert else 1e-4)
    assert cfg.max_length == (512 if distilbert else 128)
    assert (cfg.temperature, cfg.scale_t2) == ((2.0, True) if distilbert else (1.0, False))
    assert cfg.dynamic_masking == (name == "paper-distilbert-online")
