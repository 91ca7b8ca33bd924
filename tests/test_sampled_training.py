"""Training on sampled targets: the estimate of Eq. 1 is unbiased, and the trainer, ``hard``,
held-out KL and the store-mixing rule work on sampled stores."""

import json
import math

import numpy as np
import pytest
import torch
from smash.kernels.soft_ce import soft_cross_entropy
from smash.precompute.shared.adapters import adapter_for
from smash.precompute.shared.sampled_targets import counter_uniforms, sample_rows
from smash.store.collate import collate_examples
from smash.store.reader import StoreDataset
from smash.train.config import load_config
from smash.train.evaluate import heldout_kl
from smash.train.objectives.hard import hard_labels
from smash.train.targets import kernel_targets
from smash.train.trainer import Trainer
from train_support import precompute, tiny_config

SEEDS, N = 1000, 4  # 4,000 draws per row in all
V, R = 50, 3


def draws_for_seeds(p: torch.Tensor, seeds: int, n: int, tau: float) -> dict[str, torch.Tensor]:
    """Sampled rows (seeds * R, n) as the teacher pass makes them (counter uniforms, inverse CDF
    of the proposal at ``tau``, distinct ids, counts and ratios), one sampling seed after
    another, as a batch."""
    parts = []
    for seed in range(seeds):
        u = torch.from_numpy(counter_uniforms(seed, np.arange(len(p)), np.zeros(len(p)), n))
        parts.append(sample_rows(p.log().float(), u, tau)[:3])
    ids, counts, ratios = (torch.cat(x) for x in zip(*parts))
    return {"topk_ids": ids, "sample_counts": counts, "sample_logratios": ratios}


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    teacher = torch.softmax(torch.randn(R, V, generator=g, dtype=torch.float64) * 2.5, -1)
    student = torch.randn(R, V, generator=g, dtype=torch.float64)
    return teacher, student


def sampled_loss_and_grad(student, batch, seeds, impl="torch"):
    """Per-row loss (seeds, R) and gradient (seeds, R, V) of the kernel on sampled targets,
    each row weighted by its W as ``ce`` does."""
    logits = student.repeat(seeds, 1).float().requires_grad_()
    tid, logw, tail, rows = kernel_targets(batch)
    loss = soft_cross_entropy(logits, tid, logw, tail_logmass=tail, tail="bucket", weights=rows,
                              reduction="none", impl=impl)  # fmt: skip
    loss.sum().backward()
    return loss.detach().double().view(seeds, R), logits.grad.double().view(seeds, R, V)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sampled_loss_and_gradient_converge_to_the_full_eq1(problem, tau):
    """Averaged over 1,000 sampling seeds of N=4 draws (4,000 draws per row), the sampled loss
    and its gradient are within 4 standard errors of the full-vocabulary Eq. 1, drawing from
    the teacher (tau = 1) or from a flatter proposal with importance weights (tau = 2)."""
    teacher, student = problem
    batch = draws_for_seeds(teacher, SEEDS, N, tau)
    loss, grad = sampled_loss_and_grad(student, batch, SEEDS)
    logs = torch.log_softmax(student, -1)
    s = logs.exp()
    full = -(teacher * logs).sum(-1)  # Eq. 1 over the whole vocabulary, (R,)
    full_grad = s - teacher  # its gradient w.r.t. the logits
    # per draw x ~ q: w(x) (-log s_x) and w(x) (s_v - 1[x = v]), w = p/q; their variances
    q = torch.softmax(teacher.log() / tau, -1)
    m2 = (teacher**2 / q).sum(-1, keepdim=True)  # E_q[w^2]
    var = (teacher**2 / q * logs**2).sum(-1) - full**2
    grad_var = s**2 * m2 - 2 * s * teacher**2 / q + teacher**2 / q - full_grad**2
    se, grad_se = (var / (SEEDS * N)).sqrt(), (grad_var / (SEEDS * N)).sqrt()
    assert ((loss.mean(0) - full).abs() < 4 * se).all(), (loss.mean(0), full, se)
    assert ((grad.mean(0) - full_grad).abs() <= 4 * grad_se + 1e-6).all()
    # and the bound can fail: the top-4 renormalised target misses Eq. 1 by far more
    top = torch.topk(teacher, 4, -1)
    renorm = -(top.values / top.values.sum(-1, keepdim=True) * logs.gather(1, top.indices))
    assert ((renorm.sum(-1) - full).abs() > 4 * se).any()


def test_a_flatter_proposal_draws_further_into_the_tail(problem):
    teacher, _ = problem
    one, two = (draws_for_seeds(teacher, 200, N, tau) for tau in (1.0, 2.0))
    distinct = [(b["sample_counts"] > 0).sum().item() for b in (one, two)]
    assert distinct[1] > distinct[0]
    assert (one["sample_logratios"] == 0).all()
    assert (two["sample_logratios"][two["sample_counts"] == 0] == 0).all()


@pytest.mark.parametrize("loss", ["logits", "fused_linear"])
def test_ce_weights_rows_by_w_at_a_proposal_temperature(tiny, loss):
    """Through the ``ce`` objective on the tiny student: the mean over rows of
    sum_i (c_i w_i / N)(-log s_i), with either loss implementation."""
    from smash.precompute.shared.adapters import Answers
    from smash.train.objectives.base import StudentOutputs
    from smash.train.objectives.ce import PredictionDistillation
    from transformers import AutoModelForMaskedLM

    g = torch.Generator().manual_seed(1)
    teacher = torch.softmax(torch.randn(6, 600, generator=g, dtype=torch.float64) * 3, -1)
    batch = draws_for_seeds(teacher, 1, 8, 2.0)
    adapter = adapter_for(AutoModelForMaskedLM.from_pretrained(tiny["student"]))
    student = StudentOutputs(adapter, Answers(torch.randn(6, 32, generator=g)))
    value = PredictionDistillation(loss=loss, tail="bucket").loss(student, batch, True)
    c, w = batch["sample_counts"].double(), batch["sample_logratios"].double().exp()
    logs = torch.log_softmax(student.logits.double(), -1).gather(1, batch["topk_ids"])
    expect = -(c * w / 8 * logs).sum(-1).mean()
    torch.testing.assert_close(value.double(), expect, rtol=1e-5, atol=1e-6)


def test_the_estimator_is_exact_when_counts_equal_probabilities():
    """Counts proportional to the teacher give Eq. 1 itself (no renormalisation bias)."""
    counts = torch.tensor([[6, 3, 2, 1, 0]])
    ids = torch.tensor([[4, 0, 2, 1, 3]])
    student = torch.randn(1, 5, dtype=torch.float64)
    batch = {"topk_ids": ids, "sample_counts": counts, "sample_logratios": torch.zeros(1, 5)}
    tid, logw, tail, rows = kernel_targets(batch)
    assert rows.tolist() == [1.0]
    loss = soft_cross_entropy(student, tid, logw, tail_logmass=tail, tail="uniform", impl="torch")
    p = torch.zeros(1, 5, dtype=torch.float64).scatter(1, ids, counts.double() / 12)
    expect = -(p * torch.log_softmax(student, -1)).sum()
    torch.testing.assert_close(loss.double(), expect, rtol=1e-6, atol=1e-6)


def test_triton_kernel_agrees_on_sampled_targets(problem):
    """The kernel's Triton path (interpreted here) gives the reference's loss and gradient on
    sampled rows, padding entries (log 0 = -inf) included."""
    teacher, student = problem
    batch = draws_for_seeds(teacher, 4, N, 2.0)
    assert (batch["sample_counts"] == 0).any() and (batch["sample_logratios"] != 0).any()
    ref = sampled_loss_and_grad(student, batch, 4, impl="torch")
    tri = sampled_loss_and_grad(student, batch, 4, impl="triton")
    for a, b in zip(ref, tri):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hard_labels_of_sampled_rows_are_the_most_drawn_label_word():
    ids = torch.tensor([[7, 3, 9, 0], [5, 6, 1, 2]])
    counts = torch.tensor([[5, 2, 1, 0], [4, 0, 0, 0]])
    verbalizer = torch.tensor([9, 3, 8])
    batch = {"topk_ids": ids, "sample_counts": counts, "sample_logratios": torch.zeros(2, 4)}
    tid, scores, _, _ = kernel_targets(batch)
    assert hard_labels(tid, scores, verbalizer).tolist() == [1, -1]


# ---------------------------------------------------------------- through the trainer


@pytest.fixture(scope="module")
def sampled_pairs(tiny, tmp_path_factory):
    return precompute(
        "sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path_factory.mktemp("sp"),
        k=None, n=48, shard_size=24, extra=("--targets", "sampled", "--samples", "8"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def topk_pairs(tiny, tmp_path_factory):
    return precompute(
        "sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path_factory.mktemp("tp"),
        k=600, n=48, shard_size=24,
    )  # fmt: skip


def trainer_for(tmp_path, tiny, stores, **overrides):
    return Trainer(load_config(tiny_config(tmp_path / "run", tiny["student"], stores, **overrides)))


@pytest.mark.parametrize("objective", ["ce", {"ce": 1.0, "hard": 0.5}])
def test_a_sampled_store_trains_and_evaluates(tiny, sampled_pairs, tmp_path, objective):
    trainer = trainer_for(
        tmp_path, tiny, [(sampled_pairs, 1.0)], objective=objective, max_steps=3,
        eval_store=str(sampled_pairs), eval_every=3, eval_examples=16,
    )  # fmt: skip
    trainer.setup()
    assert trainer.train() == 3
    trainer.cleanup()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert any("eval_kl" in r for r in records)


def test_heldout_kl_of_a_sampled_store_estimates_the_exact_one(tiny, tmp_path):
    """With many draws per mask, the sampled store's KL estimate approaches the exact KL of a
    full-vocabulary top-k store on the same examples."""
    from transformers import AutoModelForMaskedLM

    many = precompute(
        "sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "many", k=None, n=30,
        shard_size=30, extra=("--targets", "sampled", "--samples", "600"),
    )  # fmt: skip
    exact = precompute(
        "sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "exact", k=600, n=30,
        shard_size=30,
    )  # fmt: skip
    student = AutoModelForMaskedLM.from_pretrained(tiny["student"]).eval()
    args = {"pad_id": 1, "device": torch.device("cpu"), "max_examples": 30}
    estimate, truth = (
        heldout_kl(student, str(many), **args),
        heldout_kl(student, str(exact), **args),
    )
    assert estimate["rows"] == truth["rows"] == 30
    # the estimate's standard error: Var_p(log s) / 600 per row, from the exact store
    batch = collate_examples(list(StoreDataset(exact, shuffle=False)), pad_id=1)
    adapter = adapter_for(student)
    with torch.no_grad():
        logs = torch.log_softmax(adapter.logits(adapter.answers(batch).hidden).double(), -1)
    p = torch.zeros_like(logs).scatter(1, batch["topk_ids"], batch["topk_logprobs"].double().exp())
    var = (p * logs**2).sum(-1) - (p * logs).sum(-1) ** 2
    se = float(var.sum().sqrt() / 600**0.5 / 30)
    assert abs(estimate["kl"] - truth["kl"]) < 4 * se, (estimate, truth, se)


def test_mixing_topk_and_sampled_stores_is_refused_naming_both(
    tiny, sampled_pairs, topk_pairs, tmp_path
):
    trainer = trainer_for(tmp_path, tiny, [(topk_pairs, 1.0), (sampled_pairs, 1.0)])
    with pytest.raises(ValueError) as err:
        trainer.setup()
    message = str(err.value)
    assert str(topk_pairs) in message and str(sampled_pairs) in message
    assert "top-k targets with the 'bucket' tail" in message
    assert "sampled targets (unbiased)" in message


def test_another_temperature_on_a_sampled_store_is_refused(tiny, sampled_pairs, tmp_path):
    trainer = trainer_for(tmp_path, tiny, [(sampled_pairs, 1.0)], temperature=2.0)
    with pytest.raises(ValueError, match="sampled store estimates the teacher at temperature 1"):
        trainer.setup()


@pytest.mark.parametrize("tail", ["renorm", "uniform"])
def test_a_tail_mode_on_a_sampled_store_is_refused(tiny, sampled_pairs, tmp_path, tail):
    """The tail mode says how a top-k store's tail mass enters the loss; a sampled store has
    none, so another mode than the default would be silently ignored."""
    trainer = trainer_for(tmp_path, tiny, [(sampled_pairs, 1.0)], tail=tail)
    with pytest.raises(ValueError, match=f"tail='{tail}' says how a top-k store's tail mass"):
        trainer.setup()
