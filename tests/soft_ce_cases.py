"""Shared cases for the soft cross-entropy tests and ``benchmarks/check_kernels_cuda.py``:
random teachers and logits, the float64 reference as oracle, tolerances (Cut Cross-Entropy's
rule), and a direct call of the Triton launcher. No pytest here: the GPU check imports it."""

import math

import torch
from smash.kernels.soft_ce_inputs import check_inputs
from smash.kernels.soft_ce_reference import soft_cross_entropy_reference
from smash.kernels.soft_ce_triton import soft_ce_fwd_triton

V = 1000  # not a multiple of BLOCK_V
BLOCK_V = 256  # 4 blocks per row, the last one partial
# Tolerances follow Cut Cross-Entropy's rule: against float64, a result may err as much as the
# same-dtype PyTorch reference does (``same_dtype=`` in ``assert_close``), plus the noise
# below. dtype -> (atol, rtol) of that noise; gradient atols are relative to the largest
# |gradient|. Losses are accumulated in fp32 by both; a half-precision gradient may land one
# rounding step (its dtype's eps) away from where the reference's lands.
LOSS_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-5, 1e-5), torch.bfloat16: (1e-5, 1e-5)}
GRAD_TOL = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-6, 2.0**-10),
    torch.bfloat16: (1e-6, 2.0**-7),
}


def rounded_twice(tol):
    """The gradient tolerance for a gradient rounded to its dtype twice: computed in the forward
    pass (``grad_in_forward``), then scaled there by an upstream gradient other than 1."""
    atol, rtol = tol
    return atol, 2 * rtol


# The fused-linear path (loss and the three gradients): its matmuls run in the input dtype and
# it rounds grad_weight once per chunk, so its noise is a few roundings of that dtype.
FUSED_TOL = {
    torch.float32: (2e-5, 1e-4),
    torch.float16: (4e-3, 2.0**-7),
    torch.bfloat16: (4e-3, 2.0**-5),
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
    return reference_in(torch.float64, logits, ids, lp, tail_mass, upstream=upstream, **kw)


def reference_in(dtype, logits, ids, lp, tail_mass, *, upstream, **kw):
    """The PyTorch reference on ``logits`` cast to ``dtype``: its loss and its gradient (in
    that dtype, as autograd rounds it), for the given upstream gradient."""
    x = logits.detach().to(dtype).requires_grad_()
    loss = soft_cross_entropy_reference(x, ids, lp, tail_logmass=tail_mass, **kw)
    (grad,) = torch.autograd.grad(loss, x, upstream.to(loss.dtype))
    return loss.detach(), grad


def error_ratio(actual, expected, tol, grad=False, same_dtype=None) -> float:
    """The worst |actual - expected| over what is allowed: the table's ``(atol, rtol)`` plus,
    with ``same_dtype``, that result's own error against ``expected`` (Cut Cross-Entropy's
    rule). At most 1 passes."""
    atol, rtol = tol
    exp = expected.detach().double()
    if grad:
        atol *= exp.abs().max().item()
    allowed = atol + rtol * exp.abs()
    if same_dtype is not None:
        allowed = allowed + (same_dtype.detach().double() - exp).abs()
    err = (actual.detach().double() - exp).abs()
    if not bool(torch.isfinite(err).all()):
        return math.inf
    ratio = torch.where(err == 0, torch.zeros_like(err), err / allowed)
    return float(ratio.max()) if err.numel() else 0.0


def assert_close(actual, expected, tol, grad=False, same_dtype=None):
    ratio = error_ratio(actual, expected, tol, grad, same_dtype)
    assert ratio <= 1.0, f"error {ratio:.3g}x the allowed (tolerance {tol}, grad={grad})"


def dense_ce(logits, target, temperature=1.0):
    """-sum_v t_v log s_v with a dense (N, V) target: the paper's Eq. 1."""
    return -(target * torch.log_softmax(logits / temperature, -1)).sum(-1)


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
