"""Soft cross-entropy: the reference against dense definitions, the Triton kernel (run by the
interpreter, TRITON_INTERPRET=1 from conftest) against the float64 reference, and the API."""

import math
import zlib

import pytest
import torch
from smash.kernels import TAIL_MODES, soft_cross_entropy, soft_cross_entropy_reference
from smash.kernels.soft_ce_inputs import check_inputs
from smash.kernels.soft_ce_reference import soft_ce_rows_reference
from smash.kernels.soft_ce_triton import soft_ce_fwd_triton

V = 1000  # not a multiple of BLOCK_V
BLOCK_V = 256  # 4 blocks per row, the last one partial
# dtype -> (atol, rtol) of the kernel against the float64 reference. Losses are accumulated
# in fp32 in both, so only the gradient's final rounding to the dtype differs; gradient
# atols are relative to the largest |gradient|.
LOSS_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-5, 1e-5), torch.bfloat16: (1e-5, 1e-5)}
GRAD_TOL = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}


def make_teacher(n, vocab, k, gen, full_mass_rows=()):
    """Top-k of a random teacher, entries shuffled (any order), stored as the store does."""
    full = torch.log_softmax(torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2.5, -1)
    lp, ids = full.topk(k, dim=-1)
    perm = torch.rand(n, k, generator=gen).argsort(dim=-1)
    ids, lp = ids.gather(1, perm), lp.gather(1, perm)
    tail = torch.log1p(-lp.exp().sum(-1))
    for r in full_mass_rows:  # the top-k holds all the mass
        lp[r] = torch.log_softmax(lp[r], -1)
        tail[r] = -math.inf
    return ids, lp.to(torch.float16), tail.to(torch.float32)


def make_logits(n, vocab, dtype, gen, scale=3.0, offset=4.0):
    """Random logits, shifted: the loss is shift-invariant but the uniform tail's row sum is not."""
    return (torch.randn(n, vocab, generator=gen) * scale + offset).to(dtype)


def reference_f64(logits, ids, lp, tail_mass, *, upstream, **kw):
    """Loss and gradient of the float64 reference for the given upstream gradient."""
    x = logits.detach().to(torch.float64).requires_grad_()
    loss = soft_cross_entropy_reference(x, ids, lp, tail_logmass=tail_mass, **kw)
    (grad,) = torch.autograd.grad(loss, x, upstream)
    return loss.detach(), grad


def assert_close(actual, expected, tol, grad=False):
    atol, rtol = tol
    if grad:
        atol *= expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def dense_ce(logits, target, temperature=1.0):
    """-sum_v t_v log s_v with a dense (N, V) target: the paper's Eq. 1."""
    return -(target * torch.log_softmax(logits / temperature, -1)).sum(-1)


# --- the reference against dense, independently written definitions ------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_reference_all_modes_equal_dense_ce_when_topk_holds_all_mass(temperature):
    gen = torch.Generator().manual_seed(1)
    n, vocab, k = 4, 50, 7
    ids, lp, tail = make_teacher(n, vocab, k, gen, full_mass_rows=range(n))
    logits = make_logits(n, vocab, torch.float64, gen)
    target = torch.zeros(n, vocab, dtype=torch.float64)
    target.scatter_(1, ids, torch.softmax(lp.double() / temperature, -1))
    expected = dense_ce(logits, target, temperature)
    for tail_mode in TAIL_MODES:
        got = soft_cross_entropy_reference(
            logits,
            ids,
            lp,
            tail_logmass=tail,
            tail=tail_mode,
            temperature=temperature,
            reduction="none",
        )
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_reference_tail_modes_match_their_dense_definitions_at_t1():
    gen = torch.Generator().manual_seed(2)
    n, vocab, k = 5, 40, 6
    ids, lp, _ = make_teacher(n, vocab, k, gen)
    logits = make_logits(n, vocab, torch.float64, gen)
    p = lp.double().exp()
    r = 1 - p.sum(-1, keepdim=True)  # the fp16 rounding makes this differ from exp(tail)
    in_top = torch.zeros(n, vocab, dtype=torch.bool).scatter_(1, ids, True)
    logs = torch.log_softmax(logits, -1)
    kw = {"tail_logmass": torch.log(r[:, 0]).float(), "reduction": "none"}

    renorm = torch.zeros(n, vocab, dtype=torch.float64).scatter_(1, ids, p / p.sum(-1, True))
    uniform = torch.where(in_top, 0.0, r / (vocab - k)).scatter_(1, ids, p)
    log_student_tail = torch.logsumexp(logs.masked_fill(in_top, -math.inf), -1)
    bucket = -(p * logs.gather(1, ids)).sum(-1) - r[:, 0] * log_student_tail

    def got(mode):
        return soft_cross_entropy_reference(logits, ids, lp, tail=mode, **kw)

    torch.testing.assert_close(got("renorm"), dense_ce(logits, renorm), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got("uniform"), dense_ce(logits, uniform), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got("bucket"), bucket, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("tail", TAIL_MODES)
def test_reference_gradcheck_float64(tail):
    gen = torch.Generator().manual_seed(3)
    n, vocab, k = 3, 11, 4
    ids, lp, tail_mass = make_teacher(n, vocab, k, gen, full_mass_rows=[1])
    x = make_logits(n, vocab, torch.float64, gen).requires_grad_()
    weights = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def f(logits):
        return soft_cross_entropy_reference(
            logits,
            ids,
            lp,
            tail_logmass=tail_mass,
            tail=tail,
            temperature=2.0,
            scale_t2=True,
            weights=weights,
        )

    assert torch.autograd.gradcheck(f, (x,))


# --- the Triton kernel (interpreted) against the float64 reference --------------------------


def run_kernel(logits, ids, lp, tail, *, mode, temperature=1.0, weights=None, grad=True, **kw):
    """Call the launcher with poisoned (NaN) output buffers; every entry must be written."""
    inputs = check_inputs(
        logits.shape[:-1],
        logits.shape[-1],
        logits.device,
        ids,
        lp,
        tail_logmass=tail,
        tail=mode,
        temperature=temperature,
        scale_t2=kw.pop("scale_t2", False),
        weights=weights,
        reduction="sum",
        check_ids=True,
    )
    loss_out = torch.full((logits.shape[0],), math.nan)
    grad_out = torch.full_like(logits, math.nan) if grad else None
    scale = torch.tensor(2.0) if grad else None  # a non-1 upstream factor
    return soft_ce_fwd_triton(
        logits,
        inputs,
        grad_scale=scale,
        grad_out=grad_out,
        loss_out=loss_out,
        block_v=BLOCK_V,
        **kw,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("mode", TAIL_MODES)
def test_kernel_matches_reference(mode, temperature, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{mode}{temperature}{dtype}".encode()))
    n, k = 6, 17
    ids, lp, tail = make_teacher(n, V, k, gen, full_mass_rows=[2])
    logits = make_logits(n, V, dtype, gen)
    logits[1, ::7] = math.nan  # row 1 is ignored: its (padding) logits must not leak
    weights = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 1.0])
    loss, grad = run_kernel(
        logits, ids, lp, tail, mode=mode, temperature=temperature, weights=weights, scale_t2=True
    )
    ref_rows, ref_grad = reference_f64(
        logits,
        ids,
        lp,
        tail,
        tail=mode,
        temperature=temperature,
        scale_t2=True,
        weights=weights,
        reduction="none",
        upstream=torch.full((n,), 2.0, dtype=torch.float64),
    )
    assert grad.dtype == dtype
    assert_close(loss, ref_rows, LOSS_TOL[dtype])
    assert_close(grad, ref_grad, GRAD_TOL[dtype], grad=True)
    assert loss[1] == 0 and (grad[1] == 0).all()


@pytest.mark.parametrize("k", [1, 256])
@pytest.mark.parametrize("mode", TAIL_MODES)
def test_kernel_extreme_k(mode, k):
    gen = torch.Generator().manual_seed(10 + k)
    n = 4
    ids, lp, tail = make_teacher(n, V, k, gen, full_mass_rows=[0])
    logits = make_logits(n, V, torch.float32, gen)
    loss, grad = run_kernel(logits, ids, lp, tail, mode=mode, temperature=2.0)
    ref_rows, ref_grad = reference_f64(
        logits,
        ids,
        lp,
        tail,
        tail=mode,
        temperature=2.0,
        reduction="none",
        upstream=torch.full((n,), 2.0, dtype=torch.float64),
    )
    assert_close(loss, ref_rows, LOSS_TOL[torch.float32])
    assert_close(grad, ref_grad, GRAD_TOL[torch.float32], grad=True)


@pytest.mark.parametrize("mode", TAIL_MODES)
def test_kernel_in_place_and_forward_only(mode):
    gen = torch.Generator().manual_seed(20)
    ids, lp, tail = make_teacher(3, V, 9, gen)
    logits = make_logits(3, V, torch.float32, gen)
    loss, grad = run_kernel(logits, ids, lp, tail, mode=mode)
    loss_fwd, none = run_kernel(logits, ids, lp, tail, mode=mode, grad=False)
    assert none is None
    torch.testing.assert_close(loss_fwd, loss, atol=0, rtol=0)
    inputs = check_inputs(
        logits.shape[:-1],
        V,
        logits.device,
        ids,
        lp,
        tail_logmass=tail,
        tail=mode,
        temperature=1.0,
        scale_t2=False,
        weights=None,
        reduction="sum",
        check_ids=True,
    )
    buf = logits.clone()
    loss_ip, grad_ip = soft_ce_fwd_triton(
        buf, inputs, grad_scale=torch.tensor(2.0), grad_out=buf, block_v=BLOCK_V
    )
    assert grad_ip.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(loss_ip, loss, atol=0, rtol=0)
    torch.testing.assert_close(grad_ip, grad, atol=0, rtol=0)


def test_kernel_bucket_gradient_bounded_when_student_tail_vanishes():
    gen = torch.Generator().manual_seed(21)
    n, k = 3, 8
    ids, lp, tail = make_teacher(n, V, k, gen)
    logits = torch.zeros(n, V).scatter_(1, ids, 40.0)  # student tail mass ~1e-15: below fp32
    loss, grad = run_kernel(logits, ids, lp, tail, mode="bucket")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    q_tail = tail.exp()
    outside = torch.ones(n, V, dtype=torch.bool).scatter_(1, ids, False)
    # -q_tail * s_v / P_tail with the ratio clipped to 1, times the upstream factor 2
    assert (grad[outside].view(n, -1) >= -2 * q_tail[:, None] - 1e-6).all()
    ref_rows, _ = reference_f64(
        logits,
        ids,
        lp,
        tail,
        tail="bucket",
        reduction="none",
        upstream=torch.ones(n, dtype=torch.float64),
    )
    # the loss term q_tail * log P_tail is floored, so the kernel's loss is an upper bound
    assert (loss >= ref_rows.float() - 1e-3).all()


# --- the public entry point ----------------------------------------------------------------


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
        ({"logits": torch.zeros(4, 30, dtype=torch.long)}, TypeError, "floating"),
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


def test_rows_of_reference_are_per_row_losses():
    gen = torch.Generator().manual_seed(35)
    ids, lp, tail = make_teacher(3, 30, 4, gen)
    logits = make_logits(3, 30, torch.float64, gen)
    inputs = check_inputs(
        logits.shape[:-1],
        30,
        logits.device,
        ids,
        lp,
        tail_logmass=tail,
        tail="bucket",
        temperature=1.0,
        scale_t2=False,
        weights=None,
        reduction="none",
        check_ids=True,
    )
    rows = soft_ce_rows_reference(logits, inputs)
    for r in range(3):
        one = soft_ce_rows_reference(logits[r : r + 1], inputs.rows(r, r + 1))
        torch.testing.assert_close(one[0], rows[r], atol=0, rtol=0)


COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from smash.kernels.soft_ce_triton import _soft_ce_kernel

for dtype in ("bf16", "fp16", "fp32"):
    sig = {"logits_ptr": f"*{dtype}", "stride_logits": "i64", "grad_ptr": f"*{dtype}",
           "stride_grad": "i64", "ids_ptr": "*i64", "stride_ids": "i64", "tlp_ptr": "*fp16",
           "stride_tlp": "i64", "tail_ptr": "*fp32", "weight_ptr": "*fp32",
           "grad_scale_ptr": "*fp32", "stride_scale": "i32", "loss_ptr": "*fp32",
           "lse_ptr": "*fp32", "V": "i32", "K": "i32",
           "inv_t": "fp32", "loss_scale": "fp32"}
    for tail in range(3):
        # (weights, loss, lse stored, grad): forward only, gradient in forward, backward
        for weighted, loss, lse, grad in [(False, True, True, False), (True, True, False, True),
                                          (True, False, False, True)]:
            constants = {"TAIL": tail, "HAS_WEIGHT": weighted, "COMPUTE_LOSS": loss,
                         "STORE_LSE": lse, "COMPUTE_GRAD": grad,
                         "BLOCK_V": 4096, "BLOCK_K": 64, "TAIL_FLOOR": 1e-30}
            src = ASTSource(_soft_ce_kernel, sig, constants)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": 8})
            assert ".entry _soft_ce_kernel" in compiled.asm["ptx"], (dtype, tail, grad)
print("compiled")
"""


def test_kernel_compiles_for_hopper():
    """The interpreter runs code the GPU compiler may reject (types, constexpr use, layouts):
    compile every variant down to PTX for sm_90, which needs no GPU. In a fresh process,
    because the compiler misbehaves under TRITON_INTERPRET=1."""
    import os
    import subprocess
    import sys

    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_SM90], check=False, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


def test_strided_logits_rows():
    """Rows of a wider buffer (row stride != V) are read through their stride."""
    gen = torch.Generator().manual_seed(36)
    ids, lp, tail = make_teacher(3, V, 5, gen)
    wide = make_logits(3, V + 24, torch.float32, gen)
    logits = wide[:, :V].requires_grad_()
    assert not logits.is_contiguous()
    loss = soft_cross_entropy(logits, ids, lp, tail_logmass=tail, tail="bucket", impl="triton")
    loss.backward()
    ref, ref_grad = reference_f64(
        logits, ids, lp, tail, tail="bucket", upstream=torch.tensor(1.0, dtype=torch.float64)
    )
    assert_close(loss, ref, LOSS_TOL[torch.float32])
    assert_close(logits.grad, ref_grad, GRAD_TOL[torch.float32], grad=True)
