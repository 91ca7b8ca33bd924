"""The Triton soft cross-entropy kernel, run by the interpreter (TRITON_INTERPRET=1 from
conftest), against the float64 reference; and a compile of every variant for sm_90."""

import math
import zlib

import pytest
import torch
from smash.kernels.soft_ce import soft_cross_entropy
from smash.kernels.soft_ce_inputs import TAIL_MODES, check_inputs
from smash.kernels.soft_ce_triton import soft_ce_fwd_triton
from soft_ce_cases import (
    BLOCK_V,
    GRAD_TOL,
    LOSS_TOL,
    V,
    assert_close,
    make_logits,
    make_teacher,
    reference_f64,
    reference_in,
    run_kernel,
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
    kw = {"tail": mode, "temperature": temperature, "scale_t2": True, "weights": weights,
          "reduction": "none", "upstream": torch.full((n,), 2.0, dtype=torch.float64)}  # fmt: skip
    ref_rows, ref_grad = reference_f64(logits, ids, lp, tail, **kw)
    same_rows, same_grad = reference_in(dtype, logits, ids, lp, tail, **kw)
    assert grad.dtype == dtype
    assert_close(loss, ref_rows, LOSS_TOL[dtype], same_dtype=same_rows)
    assert_close(grad, ref_grad, GRAD_TOL[dtype], grad=True, same_dtype=same_grad)
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


# Logit gap between the top-k ids and the rest, per row (times T): the student's mass
# outside the top-k goes from ~1e-1 down to ~1e-30, where 1 - sum(top-k) is pure rounding.
CONFIDENT_GAPS = (6.0, 20.0, 40.0, 74.0)


def confident_student(ids, dtype, temperature, gen):
    """Random logits with the top-k ids lifted by CONFIDENT_GAPS[row] * T."""
    gaps = torch.tensor(CONFIDENT_GAPS)[:, None] * temperature
    noise = torch.randn(ids.shape[0], V, generator=gen)
    return noise.scatter_add(1, ids, gaps.expand(ids.shape).contiguous()).to(dtype)


def student_tail_mass(logits, ids, temperature):
    x = logits.double() / temperature
    return torch.exp(x.scatter(1, ids, -math.inf).logsumexp(-1) - x.logsumexp(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("mode", TAIL_MODES)
def test_kernel_exact_when_student_tail_vanishes(mode, temperature, dtype):
    """A confident student: the bucket term -q_tail log P_tail and its gradient on the tail
    tokens match the float64 reference however small P_tail is."""
    gen = torch.Generator().manual_seed(21)
    ids, lp, tail = make_teacher(len(CONFIDENT_GAPS), V, 8, gen)
    logits = confident_student(ids, dtype, temperature, gen)
    p_tail = student_tail_mass(logits, ids, temperature)
    assert p_tail.max() > 1e-2 and p_tail.min() < 1e-29
    loss, grad = run_kernel(logits, ids, lp, tail, mode=mode, temperature=temperature)
    kw = {"tail": mode, "temperature": temperature, "reduction": "none",
          "upstream": torch.full((len(CONFIDENT_GAPS),), 2.0, dtype=torch.float64)}  # fmt: skip
    ref_rows, ref_grad = reference_f64(logits, ids, lp, tail, **kw)
    same_rows, same_grad = reference_in(dtype, logits, ids, lp, tail, **kw)
    assert_close(loss, ref_rows, LOSS_TOL[dtype], same_dtype=same_rows)
    assert_close(grad, ref_grad, GRAD_TOL[dtype], grad=True, same_dtype=same_grad)
    if mode == "bucket":  # the tail's gradient -q_tail s_v / P_tail, at its own scale
        # (renorm's is s_v itself, below the half-precision range for a confident row)
        outside = torch.ones_like(logits, dtype=torch.bool).scatter_(1, ids, False)
        for row in range(len(CONFIDENT_GAPS)):
            got, expected = grad[row, outside[row]], ref_grad[row, outside[row]]
            same = same_grad[row, outside[row]]
            assert_close(got, expected, GRAD_TOL[dtype], grad=True, same_dtype=same)


def test_bucket_recomputed_gradient_when_student_tail_vanishes():
    """grad_in_forward=False: backward reads the tail log-sum-exp saved by the forward."""
    gen = torch.Generator().manual_seed(22)
    ids, lp, tail = make_teacher(len(CONFIDENT_GAPS), V, 8, gen)
    logits = confident_student(ids, torch.float32, 2.0, gen).requires_grad_()
    kw = {"tail": "bucket", "temperature": 2.0, "reduction": "sum"}
    loss = soft_cross_entropy(
        logits, ids, lp, tail_logmass=tail, impl="triton", grad_in_forward=False, **kw
    )
    (loss * 3).backward()
    ref, ref_grad = reference_f64(
        logits, ids, lp, tail, upstream=torch.tensor(3.0, dtype=torch.float64), **kw
    )
    assert_close(loss, ref, LOSS_TOL[torch.float32])
    outside = torch.ones_like(logits, dtype=torch.bool).scatter_(1, ids, False)
    assert_close(logits.grad[outside], ref_grad[outside], GRAD_TOL[torch.float32], grad=True)


COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from smash.kernels.soft_ce_triton import _soft_ce_kernel

for dtype in ("bf16", "fp16", "fp32"):
    sig = {"logits_ptr": f"*{dtype}", "stride_logits": "i64", "grad_ptr": f"*{dtype}",
           "stride_grad": "i64", "ids_ptr": "*i64", "stride_ids": "i64",
           "sorted_ids_ptr": "*i64", "tlp_ptr": "*fp16",
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
                         "BLOCK_V": 4096, "BLOCK_K": 64, "TAIL_FLOOR": 1.2e-38}
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


@pytest.mark.parametrize("mode", TAIL_MODES)
def test_column_major_teacher_rows(mode):
    """Teacher ids and log-probs whose column stride is not 1 (e.g. a transpose's view)."""
    gen = torch.Generator().manual_seed(39)
    ids, lp, tail = make_teacher(3, V, 5, gen)
    logits = make_logits(3, V, torch.float32, gen)
    ids_t, lp_t = ids.T.contiguous().T, lp.T.contiguous().T
    assert ids_t.stride(-1) != 1
    loss, grad = run_kernel(logits, ids_t, lp_t, tail, mode=mode)
    ref, ref_grad = reference_f64(
        logits, ids, lp, tail, tail=mode, reduction="none",
        upstream=torch.full((3,), 2.0, dtype=torch.float64),
    )  # fmt: skip
    assert_close(loss, ref, LOSS_TOL[torch.float32])
    assert_close(grad, ref_grad, GRAD_TOL[torch.float32], grad=True)
