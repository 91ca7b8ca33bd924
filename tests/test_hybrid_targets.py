"""Hybrid targets: the teacher's top-k exact and N draws from outside it. The estimate of Eq. 1
is unbiased with the tail's variance alone; the store holds the teacher's own numbers, resumes
byte-identically, trains and evaluates, and mixes only with other unbiased stores."""

import re

import numpy as np
import pytest
import torch
from smash.kernels.soft_ce import soft_cross_entropy
from smash.precompute.shared.adapters import adapter_for
from smash.precompute.shared.sampled_targets import counter_uniforms, sample_tail_rows
from smash.store.cli import verify_store
from smash.store.collate import collate_examples
from smash.store.manifest import load_manifest
from smash.store.reader import StoreDataset
from smash.train.config import load_config
from smash.train.evaluate import heldout_kl
from smash.train.targets import kernel_targets
from smash.train.trainer import Trainer
from test_precompute import assert_same_store, kill_after_one_shard, run
from train_support import precompute, tiny_config
from transformers import AutoModelForMaskedLM

SEEDS, N, K = 1000, 4, 4  # 4,000 tail draws per row in all, beside an exact top-4
V, R = 50, 3
HYBRID = ("--targets", "hybrid", "--samples", "6")


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    teacher = torch.softmax(torch.randn(R, V, generator=g, dtype=torch.float64) * 2.5, -1)
    student = torch.randn(R, V, generator=g, dtype=torch.float64)
    return teacher, student


def hybrid_batch(p: torch.Tensor, seeds: int, n: int) -> dict[str, torch.Tensor]:
    """Hybrid rows (seeds * R) as the teacher pass makes them: the float32 top-K with float16
    log-probabilities and the tail mass, then n draws from outside it per sampling seed."""
    logp = p.log().float()
    top = torch.topk(logp, K, dim=-1)
    tail = torch.logsumexp(logp.scatter(1, top.indices, float("-inf")), dim=-1)
    parts = []
    for seed in range(seeds):
        u = torch.from_numpy(counter_uniforms(seed, np.arange(len(p)), np.zeros(len(p)), n))
        parts.append(sample_tail_rows(logp, top.indices, u))
    ids, counts = (torch.cat(x) for x in zip(*parts))
    return {
        "topk_ids": top.indices.repeat(seeds, 1),
        "topk_logprobs": top.values.half().repeat(seeds, 1),
        "tail_logmass": tail.repeat(seeds),
        "tail_ids": ids,
        "tail_counts": counts,
    }


def loss_and_grad(student, batch, seeds):
    """Per-row loss (seeds, R) and gradient (seeds, R, V), each row weighted by its W as ``ce``
    does with a hybrid store."""
    logits = student.repeat(seeds, 1).float().requires_grad_()
    ids, logw, tail, rows = kernel_targets(batch)
    loss = soft_cross_entropy(logits, ids, logw, tail_logmass=tail, tail="bucket", weights=rows,
                              reduction="none", impl="torch")  # fmt: skip
    loss.sum().backward()
    return loss.detach().double().view(seeds, R), logits.grad.double().view(seeds, R, V)


def test_the_estimate_is_exact_on_the_head_and_unbiased_on_the_tail(problem):
    """Averaged over 1,000 sampling seeds, loss and gradient are within 4 analytic standard
    errors of Eq. 1 (its head at the float16 precision the store keeps); the standard error is
    the tail's alone, and lower than that of as many draws from the whole distribution."""
    teacher, student = problem
    batch = hybrid_batch(teacher, SEEDS, N)
    loss, grad = loss_and_grad(student, batch, SEEDS)
    head = torch.zeros_like(teacher).scatter(
        1, batch["topk_ids"][:R], batch["topk_logprobs"][:R].double().exp()
    )
    in_head = head > 0
    tail = torch.where(in_head, 0.0, teacher)  # p on the tail, 0 on the head
    r = tail.sum(-1, keepdim=True)
    logs = torch.log_softmax(student, -1)
    s = logs.exp()
    target = head + tail
    full = -(target * logs).sum(-1)
    full_grad = target.sum(-1, keepdim=True) * s - target
    # per tail draw x ~ p/r: r (-log s_x) and -r 1[x = v]; their variances
    q = tail / r
    var = r[:, 0] ** 2 * ((q * logs**2).sum(-1) - (q * logs).sum(-1) ** 2)
    grad_var = r**2 * q * (1 - q)
    se, grad_se = (var / (SEEDS * N)).sqrt(), (grad_var / (SEEDS * N)).sqrt()
    assert ((loss.mean(0) - full).abs() < 4 * se).all(), (loss.mean(0), full, se)
    assert ((grad.mean(0) - full_grad).abs() <= 4 * grad_se + 1e-6).all()
    # the whole distribution's N draws: per-draw variance Var_p(log s), higher here
    sampled_var = (teacher * logs**2).sum(-1) - (teacher * logs).sum(-1) ** 2
    assert (var < sampled_var).all()
    assert (loss.std(0) ** 2 * N < sampled_var).all()  # and so measured over the seeds


def test_the_tail_draws_follow_the_teacher_outside_its_head(problem):
    teacher, _ = problem
    batch = hybrid_batch(teacher, 2000, N)
    ids, counts = batch["tail_ids"], batch["tail_counts"]
    assert (counts.sum(1) == N).all()
    assert not (ids[:, :, None] == batch["topk_ids"][:, None, :]).any()  # per row
    assert all(len(set(row.tolist())) == N for row in ids)  # distinct, padding included
    drawn = torch.zeros(R, V, dtype=torch.float64)
    rows = torch.arange(len(ids)) % R
    drawn.index_put_((rows[:, None].expand_as(ids), ids), counts.double(), accumulate=True)
    share = drawn / drawn.sum(-1, keepdim=True)
    outside = teacher.scatter(1, batch["topk_ids"][:R], 0.0)
    torch.testing.assert_close(share, outside / outside.sum(-1, keepdim=True), atol=0.01, rtol=0)


def test_a_head_that_holds_all_the_mass_draws_nothing():
    logp = torch.full((1, 10), float("-inf"))
    logp[0, 2:5] = torch.tensor([0.5, 0.3, 0.2]).log()
    u = torch.from_numpy(counter_uniforms(0, np.array([0]), np.array([0]), 3))
    ids, counts = sample_tail_rows(logp, torch.tensor([[4, 2, 3, 0]]), u)
    assert counts.tolist() == [[0, 0, 0]] and ids.tolist() == [[1, 5, 6]]
    with pytest.raises(ValueError, match="--k 4 \\+ --samples 7 is more than the vocabulary"):
        sample_tail_rows(logp, torch.tensor([[4, 2, 3, 0]]), torch.zeros(1, 7))


@pytest.fixture(scope="module")
def hybrid_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid")
    assert run(tiny, out, *HYBRID, k=4) == 0
    return out


def test_the_store_holds_the_teachers_top_k_and_its_tail_draws(tiny, hybrid_store, tmp_path):
    manifest = load_manifest(hybrid_store)
    assert manifest.format_version == 4 and manifest.k == 4
    assert manifest.targets == {"mode": "hybrid", "samples": 6, "estimator": "unbiased", "seed": 0}
    assert run(tiny, tmp_path, k=4) == 0  # a top-4 store of the same examples
    topk = list(StoreDataset(tmp_path, shuffle=False))
    hybrid = list(StoreDataset(hybrid_store, shuffle=False))
    for name in ("input_ids", "topk_ids", "topk_logprobs", "tail_logmass"):
        assert all(np.array_equal(a[name], b[name]) for a, b in zip(topk, hybrid)), name
    model = AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).eval()
    for ex in hybrid[::11]:
        shard, row = ex["__key__"].split("/")
        key = int(shard.removeprefix("shard-").removesuffix(".tar")) * 30 + int(row)
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(ex["input_ids"])[None]).logits[0]
        logp = torch.log_softmax(logits[int(ex["mask_positions"][0])].float(), -1)[None]
        u = torch.from_numpy(counter_uniforms(0, np.array([key]), np.array([0]), 6))
        ids, counts = sample_tail_rows(logp, torch.as_tensor(ex["topk_ids"]), u)
        stored = dict(zip(ex["tail_ids"][0].tolist(), ex["tail_counts"][0].tolist()))
        assert stored == dict(zip(ids[0].tolist(), counts[0].tolist()))
        entropy = float(-(logp.double().exp() * logp.double()).sum())
        assert ex["teacher_entropy"][0] == pytest.approx(entropy, rel=2**-11)
    assert verify_store(str(hybrid_store)) == []


def test_a_killed_hybrid_run_resumes_to_the_same_store(tiny, hybrid_store, tmp_path, monkeypatch):
    kill_after_one_shard(tiny, tmp_path, monkeypatch, *HYBRID, k=4)
    assert run(tiny, tmp_path, *HYBRID, k=4) == 0
    assert_same_store(tmp_path, hybrid_store)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--proposal-temperature", "2"), "--proposal-temperature is for --targets sampled"),
        (("--k", "596"), r"--k \+ --samples 602 is larger than the vocabulary"),
    ],
)
def test_options_a_hybrid_store_cannot_take_are_refused(tiny, tmp_path, capsys, extra, message):
    assert run(tiny, tmp_path / "out", *HYBRID, *extra, k=None) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def trainer_for(tmp_path, tiny, stores, **overrides):
    return Trainer(load_config(tiny_config(tmp_path / "run", tiny["student"], stores, **overrides)))


@pytest.mark.parametrize("objective", ["ce", {"ce": 1.0, "hard": 0.5}])
def test_a_hybrid_store_trains_and_evaluates(tiny, hybrid_store, tmp_path, objective):
    trainer = trainer_for(
        tmp_path, tiny, [(hybrid_store, 1.0)], objective=objective, max_steps=3,
        eval_store=str(hybrid_store), eval_every=3, eval_examples=16,
    )  # fmt: skip
    trainer.setup()
    assert trainer.train() == 3
    trainer.cleanup()


def test_mixing_with_a_biased_store_is_refused_naming_both(tiny, hybrid_store, tmp_path):
    topk = precompute("sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "topk", k=8,
                      n=30, shard_size=30)  # fmt: skip
    trainer = trainer_for(tmp_path, tiny, [(hybrid_store, 1.0), (topk, 1.0)])
    with pytest.raises(ValueError) as err:
        trainer.setup()
    message = str(err.value)
    assert str(topk) in message and str(hybrid_store) in message
    assert "hybrid targets (unbiased)" in message and "top-k targets with the 'bucket'" in message


def test_mixing_with_a_sampled_store_trains(tiny, hybrid_store, tmp_path):
    """Both estimate Eq. 1 without bias: one objective, so one run may mix them."""
    sampled = precompute("sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "s",
                         k=None, n=30, shard_size=30, extra=("--targets", "sampled"))  # fmt: skip
    trainer = trainer_for(tmp_path, tiny, [(hybrid_store, 1.0), (sampled, 1.0)], max_steps=2)
    trainer.setup()
    assert trainer.train() == 2
    trainer.cleanup()


def test_heldout_kl_of_a_hybrid_store_estimates_the_exact_one(tiny, tmp_path):
    many = precompute(
        "sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "many", k=4, n=30,
        shard_size=30, extra=("--targets", "hybrid", "--samples", "500"),
    )  # fmt: skip
    exact = precompute("sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "exact",
                       k=600, n=30, shard_size=30)  # fmt: skip
    student = AutoModelForMaskedLM.from_pretrained(tiny["student"]).eval()
    args = {"pad_id": 1, "device": torch.device("cpu"), "max_examples": 30}
    estimate, truth = (
        heldout_kl(student, str(many), **args),
        heldout_kl(student, str(exact), **args),
    )
    assert estimate["rows"] == truth["rows"] == 30
    # the estimate's standard error, the tail's alone: r^2 Var_{p/r}(log s) / 500 per row
    batch = collate_examples(list(StoreDataset(exact, shuffle=False)), pad_id=1)
    heads = collate_examples(list(StoreDataset(many, shuffle=False)), pad_id=1)["topk_ids"]
    adapter = adapter_for(student)
    with torch.no_grad():
        logs = torch.log_softmax(adapter.logits(adapter.answers(batch).hidden).double(), -1)
    p = torch.zeros_like(logs).scatter(1, batch["topk_ids"], batch["topk_logprobs"].double().exp())
    tail = p.scatter(1, heads, 0.0)
    r = tail.sum(-1)
    q = tail / r[:, None]
    var = r**2 * ((q * logs**2).sum(-1) - (q * logs).sum(-1) ** 2)
    se = float(var.sum().sqrt() / 500**0.5 / 30)
    assert abs(estimate["kl"] - truth["kl"]) < 4 * se, (estimate, truth, se)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"temperature": 2.0}, "a hybrid store estimates the teacher at temperature 1"),
        ({"tail": "renorm"}, "a hybrid store's estimate needs no such rule"),
    ],
)
def test_a_temperature_or_tail_mode_is_refused(tiny, hybrid_store, tmp_path, overrides, message):
    trainer = trainer_for(tmp_path, tiny, [(hybrid_store, 1.0)], **overrides)
    with pytest.raises(ValueError, match=message):
        trainer.setup()


def test_a_hybrid_store_damaged_or_mislabelled_is_named(hybrid_store, tmp_path):
    import json
    import shutil

    from smash.store.errors import ManifestError

    old = tmp_path / "old"
    shutil.copytree(hybrid_store, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 3
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="'targets.mode' is 'hybrid' in format version 3"):
        load_manifest(old)
    other = tmp_path / "other"
    shutil.copytree(hybrid_store, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["targets"]["samples"] = 7
    (other / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_store(str(other))
    assert problems and all("holds samples=6, the manifest records samples=7" in why
                            for _, why in problems)  # fmt: skip


def test_draws_never_pick_an_output_row_the_tokenizer_lacks():
    """A model may have more output rows than its tokenizer has ids (T5: 32,128 for 32,100):
    sampled and hybrid draws stay below the tokenizer's size, even when those rows dominate."""
    from smash.precompute.shared.sampled_targets import hybrid_targets, sampled_targets
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32))  # fmt: skip
    with torch.no_grad():
        model.lm_head.bias[50:] = 20.0  # the rows a 50-token tokenizer lacks: most of the mass
    adapter = adapter_for(model.eval())
    hidden = torch.randn(4, 16)
    u = torch.from_numpy(counter_uniforms(0, np.arange(4), np.zeros(4, dtype=np.int64), 8))
    drawn = sampled_targets(adapter, hidden, u, vocab=50)
    hybrid = hybrid_targets(adapter, hidden, 3, u, vocab=50)
    for ids in (drawn.ids, hybrid.head.ids, hybrid.tail_ids):
        assert int(ids.max()) < 50
    assert int(sampled_targets(adapter, hidden, u).ids.max()) >= 50  # without the bound
