"""Fused LM head + soft cross-entropy against the float64 reference on materialised logits.
The Triton path runs in the interpreter (TRITON_INTERPRET=1 from conftest)."""

import math

import pytest
import torch
from smash.kernels.fused_linear_soft_ce import chunk_rows, fused_linear_soft_cross_entropy
from smash.kernels.soft_ce_reference import soft_cross_entropy_reference
from soft_ce_cases import FUSED_TOL, assert_close

N, H, V, K = 37, 24, 300, 9  # odd sizes; chunk_size=8 leaves a partial last chunk


def make_case(gen, dtype, *, bias=True):
    full = torch.log_softmax(torch.randn(N, V, generator=gen, dtype=torch.float64) * 2, -1)
    lp, ids = full.topk(K, dim=-1)
    tail = torch.log1p(-lp.exp().sum(-1)).float()
    hidden = torch.randn(N, H, generator=gen).to(dtype)
    weight = (torch.randn(V, H, generator=gen) / math.sqrt(H)).to(dtype)
    b = (torch.randn(V, generator=gen) * 0.1).to(dtype) if bias else None
    weights = (torch.rand(N, generator=gen) > 0.2).float()  # some rows ignored
    return hidden, weight, b, ids, lp.half(), tail, weights


def reference_grads(hidden, weight, bias, ids, lp, upstream, dtype=torch.float64, **kw):
    """The reference on materialised logits, computed in ``dtype``: loss and gradients."""
    params = [t.detach().to(dtype).requires_grad_() for t in (hidden, weight)]
    if bias is not None:
        params.append(bias.detach().to(dtype).requires_grad_())
    logits = params[0] @ params[1].T + (params[2] if bias is not None else 0)
    loss = soft_cross_entropy_reference(logits, ids, lp, **kw)
    return loss.detach(), torch.autograd.grad(loss, params, upstream.to(loss.dtype))


def check(got, expected, dtype, same_dtype=None):
    assert_close(got, expected, FUSED_TOL[dtype], grad=True, same_dtype=same_dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "impl, dtype, tail, temperature",
    [
        ("triton", torch.float32, "bucket", 2.0),
        ("triton", torch.float32, "uniform", 1.0),
        ("triton", torch.bfloat16, "renorm", 2.0),
        ("torch", torch.float32, "bucket", 1.0),
        ("torch", torch.bfloat16, "uniform", 2.0),
    ],
)
def test_fused_linear_matches_reference(impl, dtype, tail, temperature, reduction):
    gen = torch.Generator().manual_seed(7)
    hidden, weight, bias, ids, lp, tail_mass, weights = make_case(gen, dtype)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    kw = {
        "tail_logmass": tail_mass,
        "tail": tail,
        "temperature": temperature,
        "scale_t2": True,
        "weights": weights,
        "reduction": reduction,
    }
    loss = fused_linear_soft_cross_entropy(*leaves, ids, lp, impl=impl, chunk_size=8, **kw)
    (loss * 2).backward()
    upstream = torch.tensor(2.0).double()
    ref, ref_grads = reference_grads(hidden, weight, bias, ids, lp, upstream, **kw)
    same, same_grads = reference_grads(hidden, weight, bias, ids, lp, upstream, dtype, **kw)
    check(loss, ref, torch.float32, same)  # the loss is fp32, the inputs as given
    for leaf, expected, same_grad in zip(leaves, ref_grads, same_grads, strict=True):
        assert leaf.grad.dtype == dtype
        check(leaf.grad, expected, dtype, same_grad)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fused_linear_without_bias_and_frozen_weight(impl):
    gen = torch.Generator().manual_seed(8)
    hidden, weight, _, ids, lp, tail_mass, _ = make_case(gen, torch.float32, bias=False)
    h = hidden.clone().requires_grad_()
    loss = fused_linear_soft_cross_entropy(
        h, weight, None, ids, lp, tail_logmass=tail_mass, tail="uniform", impl=impl, chunk_size=16
    )
    loss.backward()
    assert weight.grad is None
    ref, (ref_h, _) = reference_grads(
        hidden, weight, None, ids, lp, torch.tensor(1.0).double(),
        tail_logmass=tail_mass, tail="uniform",
    )  # fmt: skip
    check(loss, ref, torch.float32)
    check(h.grad, ref_h, torch.float32)


def test_fused_linear_all_masked_and_leading_dims():
    gen = torch.Generator().manual_seed(9)
    hidden, weight, bias, ids, lp, _, _ = make_case(gen, torch.float32)
    h = hidden[:36].reshape(4, 9, H).clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = fused_linear_soft_cross_entropy(
        h, w, bias, ids[:36].view(4, 9, K), lp[:36].view(4, 9, K),
        weights=torch.zeros(4, 9), impl="triton", chunk_size=10,
    )  # fmt: skip
    loss.backward()
    assert loss.item() == 0.0
    assert h.grad.shape == (4, 9, H) and not h.grad.any() and not w.grad.any()


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_fused_linear_fp16_gradients_survive_loss_scaling(impl):
    """fp16 under DeepSpeed's loss scaling (upstream 2**16 / N): the gradients, divided by the
    upstream, match float64, including the bias gradient of the tail tokens (each row's
    logit gradient there is ~3e-6 / N before scaling: subnormal or zero if rounded to fp16
    first; the old forward-pass gradient was ~10% off here)."""
    gen = torch.Generator().manual_seed(11)
    hidden, weight, _, ids, _, _, _ = make_case(gen, torch.float16)
    bias = torch.zeros(V).index_fill_(0, ids[0], 16.0).half()  # confident on row 0's top-k
    ids = ids[0].expand(N, K).contiguous()
    lp = torch.full((N, K), math.log((1 - 1e-3) / K)).half()
    kw = {"tail_logmass": torch.full((N,), math.log(1e-3)), "tail": "bucket"}
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    upstream = 2.0**16 / N
    loss = fused_linear_soft_cross_entropy(*leaves, ids, lp, impl=impl, chunk_size=8, **kw)
    (loss * upstream).backward()
    _, ref_grads = reference_grads(hidden, weight, bias, ids, lp, torch.tensor(1.0).double(), **kw)
    _, same_grads = reference_grads(
        hidden, weight, bias, ids, lp, torch.tensor(upstream), torch.float16, **kw
    )
    same_grads = [g.double() / upstream for g in same_grads]
    for leaf, expected, same in zip(leaves, ref_grads, same_grads, strict=True):
        check(leaf.grad.double() / upstream, expected, torch.float16, same)
    outside = torch.ones(V, dtype=torch.bool).index_fill_(0, ids[0], False)
    check(
        leaves[2].grad[outside].double() / upstream, ref_grads[2][outside], torch.float16,
        same_grads[2][outside],
    )  # fmt: skip


def test_chunk_rows_fits_budget():
    assert chunk_rows(16384, 50265, 2) == 1024  # 1024 * 50265 * 2 B = 98 MiB <= 128 MiB
    assert chunk_rows(100, 50265, 2) == 100
    assert chunk_rows(5, 10**9, 4) == 1


def test_fused_linear_bad_input():
    gen = torch.Generator().manual_seed(10)
    hidden, weight, bias, ids, lp, _, _ = make_case(gen, torch.float32)
    with pytest.raises(ValueError, match="'none'"):
        fused_linear_soft_cross_entropy(hidden, weight, bias, ids, lp, reduction="none")
    with pytest.raises(ValueError, match=r"\(V, H\)"):
        fused_linear_soft_cross_entropy(hidden, weight.T, bias, ids, lp)
    with pytest.raises(TypeError, match="bfloat16"):
        fused_linear_soft_cross_entropy(hidden, weight.bfloat16(), bias, ids, lp)
    with pytest.raises(ValueError, match="bias"):
        fused_linear_soft_cross_entropy(hidden, weight, bias[:-1], ids, lp)
    with pytest.raises(ValueError, match="outside"):
        fused_linear_soft_cross_entropy(hidden, weight, bias, ids + V, lp)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        fused_linear_soft_cross_entropy(hidden, weight, bias, ids, lp, weights=-torch.ones(N))
