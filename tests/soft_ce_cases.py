"""Shared cases for the soft cross-entropy tests: random teachers and logits, the float64
reference as oracle, tolerances, and a direct call of the Triton launcher."""

import math

import torch
from smash.kernels import soft_cross_entropy_reference
from smash.kernels.soft_ce_inputs import check_inputs
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
