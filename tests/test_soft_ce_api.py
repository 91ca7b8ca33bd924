"""The public soft cross-entropy entry point: reductions, upstream gradients, dispatch and
clear errors on bad input."""

import math

import pytest
import torch
from smash.kernels.soft_ce import soft_cross_entropy
from smash.kernels.soft_ce_reference import soft_cross_entropy_reference
from soft_ce_cases import (
    GRAD_TOL,
    LOSS_TOL,
    V,
    assert_close,
    make_logits,
    make_teacher,
    reference_f64,
    reference_in,
)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "impl, grad_in_forward", [("triton", True), ("triton", False), ("torch", True)]
)
def test_public_api_reductions_and_upstream_grad(impl, grad_in_forward, reduction):
    gen = torch.Generator().manual_seed(30)
    b, s, k = 2, 3, 5
    ids, lp, tail = make_teacher(b * s, V, k, gen, full_mass_rows=[4])
    ids, lp, tail = ids.view(b, s, k), lp.view(b, s, k), tail.view(b, s)
    logits = make_logits(b * s, V, torch.float32, gen).view(b, s, V).requires_grad_()
    mask = torch.tensor([[True, False, True], [True, True, False]])
    loss = soft_cross_entropy(
        logits,
        ids,
        lp,
        tail_logmass=tail,
        tail="uniform",
        temperature=2.0,
        weights=mask,
        reduction=reduction,
        impl=impl,
        grad_in_forward=grad_in_forward,
    )
    upstream = torch.randn(loss.shape, generator=gen, dtype=torch.float64) + 2.0
    loss.backward(upstream.float())
    ref, ref_grad = reference_f64(
        logits,
        ids,
        lp,
        tail,
        tail="uniform",
        temperature=2.0,
        weights=mask,
        reduction=reduction,
        upstream=upstream,
    )
    assert loss.shape == ref.shape
    assert_close(loss, ref, LOSS_TOL[torch.float32])
    assert_close(logits.grad, ref_grad, GRAD_TOL[torch.float32], grad=True)
    if reduction == "mean":  # the mean is over the rows that count
        rows = soft_cross_entropy_reference(
            logits.detach()[mask],
            ids[mask],
            lp[mask],
            tail_logmass=tail[mask],
            tail="uniform",
            temperature=2.0,
            reduction="mean",
        )
        torch.testing.assert_close(loss, rows, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_all_masked_batch_gives_zero_loss_and_gradient(impl):
    gen = torch.Generator().manual_seed(31)
    ids, lp, tail = make_teacher(4, V, 6, gen)
    logits = make_logits(4, V, torch.bfloat16, gen).requires_grad_()
    loss = soft_cross_entropy(
        logits,
        ids,
        lp,
        tail_logmass=tail,
        tail="bucket",
        weights=torch.zeros(4, dtype=torch.bool),
        impl=impl,
    )
    (loss * 2).backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_forward_without_grad_and_second_backward_refused():
    gen = torch.Generator().manual_seed(32)
    ids, lp, _ = make_teacher(3, V, 4, gen)
    logits = make_logits(3, V, torch.float32, gen).requires_grad_()
    with torch.no_grad():
        nograd = soft_cross_entropy(logits, ids, lp, impl="triton")
    loss = soft_cross_entropy(logits, ids, lp, impl="triton")
    torch.testing.assert_close(nograd, loss.detach(), atol=0, rtol=0)
    (loss * 3).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        (loss * 3).backward()


def test_recomputed_gradient_survives_a_second_backward():
    gen = torch.Generator().manual_seed(37)
    ids, lp, tail = make_teacher(3, V, 4, gen)
    logits = make_logits(3, V, torch.float16, gen).requires_grad_()
    loss = soft_cross_entropy(
        logits, ids, lp, tail_logmass=tail, tail="uniform", impl="triton", grad_in_forward=False
    )
    (loss * 3).backward(retain_graph=True)
    first = logits.grad.clone()
    (loss * 3).backward()
    torch.testing.assert_close(logits.grad, 2 * first)


def confident_fp16_case(n, k, teacher_tail, gen):
    """fp16 logits with the teacher's top-k ids lifted, and a teacher tail mass of
    ``teacher_tail``: the bucket gradient on each tail token is ~teacher_tail / (V-k)."""
    ids = torch.stack([torch.randperm(V, generator=gen)[:k] for _ in range(n)])
    lp = torch.full((n, k), math.log((1 - teacher_tail) / k)).half()
    tail = torch.full((n,), math.log(teacher_tail))
    logits = torch.randn(n, V, generator=gen).scatter_add(1, ids, torch.full((n, k), 16.0))
    return logits.half(), ids, lp, tail


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fp16_gradient_survives_loss_scaling(impl):
    """Under DeepSpeed's fp16 loss scaling (upstream 2**16 / N) the fp16 gradient, divided by
    the upstream, matches the float64 reference, on the tail tokens (~1e-6 / N each before
    scaling: below fp16's range if written before the scale is applied) at their own scale."""
    gen = torch.Generator().manual_seed(38)
    n = 32
    logits, ids, lp, tail = confident_fp16_case(n, 8, 1e-3, gen)
    x = logits.clone().requires_grad_()
    upstream = 2.0**16 / n
    loss = soft_cross_entropy(x, ids, lp, tail_logmass=tail, tail="bucket", impl=impl)
    (loss * upstream).backward()
    _, ref_grad = reference_f64(
        logits, ids, lp, tail, tail="bucket", upstream=torch.tensor(1.0).double()
    )
    _, same = reference_in(
        torch.float16, logits, ids, lp, tail, tail="bucket", upstream=torch.tensor(upstream)
    )
    same, grad = same.double() / upstream, x.grad.double() / upstream
    assert_close(grad, ref_grad, GRAD_TOL[torch.float16], grad=True, same_dtype=same)
    outside = torch.ones_like(logits, dtype=torch.bool).scatter_(1, ids, False)
    assert_close(
        grad[outside], ref_grad[outside], GRAD_TOL[torch.float16], grad=True,
        same_dtype=same[outside],
    )  # fmt: skip


def test_auto_dispatch_uses_reference_on_cpu(monkeypatch):
    import smash.kernels.soft_ce_triton as triton_mod

    def boom(*args, **kwargs):
        raise AssertionError("the Triton kernel must not run for CPU tensors with impl='auto'")

    monkeypatch.setattr(triton_mod, "soft_ce_fwd_triton", boom)
    gen = torch.Generator().manual_seed(33)
    ids, lp, _ = make_teacher(2, 30, 3, gen)
    logits = make_logits(2, 30, torch.float32, gen)
    auto = soft_cross_entropy(logits, ids, lp)
    torch.testing.assert_close(auto, soft_cross_entropy_reference(logits, ids, lp))
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="CUDA"):
        soft_cross_entropy(logits, ids, lp, impl="triton")


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"tail": "ghost"}, ValueError, "unknown tail mode"),
        ({"reduction": "avg"}, ValueError, "unknown reduction"),
        ({"impl": "cuda"}, ValueError, "unknown impl"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"tail": "bucket", "tail_logmass": None}, ValueError, "needs tail_logmass"),
        ({"tail": "uniform", "tail_logmass": torch.zeros(3)}, ValueError, "tail_logmass"),
        ({"teacher_logprobs": torch.zeros(4, 6)}, ValueError, "same shape"),
        (
            {
                "teacher_ids": torch.zeros(3, 4, dtype=torch.long),
                "teacher_logprobs": torch.zeros(3, 4),
            },
            ValueError,
            "batch shape",
        ),
        ({"teacher_ids": torch.full((4, 5), 30)}, ValueError, "outside"),
        ({"teacher_ids": torch.tensor([[0, 1, 2, 3, 3]]).repeat(4, 1)}, ValueError, "duplicate"),
        ({"teacher_ids": torch.zeros(4, 5)}, TypeError, "int32 or int64"),
        ({"weights": torch.ones(5)}, ValueError, "weights"),
        ({"weights": torch.tensor([1.0, -0.5, 1.0, 1.0])}, ValueError, "weights must be finite"),
        ({"weights": torch.tensor([1.0, 1.0, math.nan, 1.0])}, ValueError, "weights must be"),
        ({"weights": torch.tensor([math.inf, 1.0, 1.0, 1.0])}, ValueError, "weights must be"),
        ({"logits": torch.zeros(4, 30, dtype=torch.long)}, TypeError, "floating"),
        (
            {"logits": torch.zeros(4, 30, dtype=torch.float16), "grad_in_forward": True},
            ValueError,
            "grad_in_forward=True with float16",
        ),
    ],
)
def test_bad_input_is_a_clear_error(change, error, match):
    gen = torch.Generator().manual_seed(34)
    ids, lp, tail = make_teacher(4, 30, 5, gen)
    args = {
        "logits": make_logits(4, 30, torch.float32, gen),
        "teacher_ids": ids,
        "teacher_logprobs": lp,
        "tail_logmass": tail,
        "tail": "bucket",
    }
    args.update(change)
    for impl in ("torch", "triton"):
        with pytest.raises(error, match=match):
            soft_cross_entropy(**{"impl": impl, **args})
