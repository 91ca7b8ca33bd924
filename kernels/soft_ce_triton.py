"""Triton kernel for the soft cross-entropy of :mod:`smash.kernels.soft_ce`, and its launcher.

One program per row of the (N, V) logits. Each program

1. builds the tempered teacher target ``q`` (k values) and ``q_tail`` from the stored
   top-k log-probabilities and tail mass, and gathers the student's k logits at the ids;
2. sweeps the row once with an online max / log-sum-exp, accumulating in fp32 (plus
   the row sum of the logits for the ``uniform`` tail, and for ``bucket`` a second sum
   of exponentials, over the tokens outside the top-k only, under the same running max);
3. writes the row's loss, and, when a gradient is wanted, sweeps the row a second
   time writing ``(p - q_tail-part) * scale`` in the logits' dtype, then, after a
   barrier, overwrites the k top-k columns with ``(p_j - q_j) * scale``.

The bucket tail needs ``log P_tail``, the log of the student's mass outside the top-k.
``1 - sum_j p_j`` would lose it to cancellation exactly when it matters (a confident
student, ``P_tail`` below ~1e-6 in fp32), so the sweep sums ``exp(x - m)`` over the
non-top-k tokens directly: each block zeroes its top-k entries (the ids, sorted on the
host, that fall inside the block: k compares of the block's width per row in all)
before the sum. ``log P_tail`` is then exact to fp32 rounding down to the underflow of
``exp``, about 1e-38 of the row's largest probability, where it is floored.

Gradient in the forward pass, or recomputed in backward (why both, and the default)
--------------------------------------------------------------------------------
Let ``B = N·V·bytes(logits)``. The floor for loss-plus-gradient is ``2B``: read the
logits once, write the gradient once.

* Gradient in the forward (default, as Liger-Kernel does): the loss sweep reads ``B``;
  the gradient sweep reads the same row again right after, while it is still in L2
  (one bf16 RoBERTa row is 100 KB; the rows in flight on an H100 are a few tens of MB,
  inside its 50 MB L2), and writes ``B``: DRAM traffic ≈ ``2B``, the floor. But the
  upstream gradient is unknown in the forward: when it is not exactly 1, backward must
  scale the saved gradient in place (``+2B``, ``4B`` in all) after a host sync to find out.
* Recompute in backward (``soft_ce_bwd_triton``): the forward reads ``B`` and keeps only
  the log-sum-exps (2N floats); backward reads ``B`` again (cold: a separate launch) and
  writes ``B`` with the upstream factor folded in: ``3B`` whatever the upstream, no sync.

Peak memory is the same (logits plus one N×V gradient either way). So: ``2B`` against
``3B`` when the upstream gradient is 1 (a plain ``loss.backward()``), ``4B`` against
``3B`` otherwise (DeepSpeed's gradient-accumulation division, fp16 loss scaling).
The default follows the common case of the loss being backpropagated as is; the
trainer picks the other with ``grad_in_forward=False``. fp16 logits always recompute: a
gradient written in fp16 before the loss scale is known underflows (its tail entries,
~1e-8 / N, flush to zero). ``benchmarks/bench_kernel.py`` times both, with upstream 1
and not 1, against the ``2B`` floor. When no gradient is needed (eval, ``no_grad``)
the gradient sweep is compiled out: one read of the logits.

The gradient may be written over the logits (``grad_out=logits``): every element is
read before its own store, and the top-k logits are gathered before the sweeps. The
fused-linear path uses this on its private logits chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .soft_ce_inputs import TAIL_MODES, SoftCEInputs

__all__ = ["DEFAULT_BLOCK_V", "DEFAULT_NUM_WARPS", "soft_ce_bwd_triton", "soft_ce_fwd_triton"]

DEFAULT_BLOCK_V = 4096
DEFAULT_NUM_WARPS = 8
# Floor on the bucket mode's sum of exp(x - max) outside the top-k: the smallest normal
# fp32, below which exp has underflowed (keeps log P_tail finite when k = V).
_TAIL_SUM_FLOOR = 1.1754943508222875e-38


@triton.jit
def _drop_ids(e, offs, sorted_ids_ptr, lo, hi):
    """``e`` with 0 at the columns ``sorted_ids[lo:hi]``: the top-k ids inside this block."""
    for j in range(lo, hi):
        e = tl.where(offs == tl.load(sorted_ids_ptr + j), 0.0, e)
    return e


@triton.jit
def _soft_ce_kernel(
    logits_ptr,
    stride_logits,
    grad_ptr,
    stride_grad,
    ids_ptr,
    stride_ids,
    sorted_ids_ptr,  # (N, K) contiguous, each row sorted ascending; read by bucket only
    tlp_ptr,
    stride_tlp,
    tail_ptr,
    weight_ptr,
    grad_scale_ptr,
    stride_scale,
    loss_ptr,
    lse_ptr,  # (N, 2) fp32: log-sum-exp of x/T over the row, and (bucket) outside the top-k
    V,
    K,
    inv_t,
    loss_scale,
    TAIL: tl.constexpr,  # 0 renorm, 1 bucket, 2 uniform (index in TAIL_MODES)
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_LOSS: tl.constexpr,  # sweep for the log-sum-exp and write the loss; else load lse
    STORE_LSE: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TAIL_FLOOR: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    logits_ptr += row * stride_logits
    grad_ptr += row * stride_grad
    sorted_ids_ptr += row * K
    cols = tl.arange(0, BLOCK_V)

    w = 1.0
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + row).to(tl.float32)
    if w == 0.0:
        # A row that does not count: zero loss and gradient, logits never read.
        if COMPUTE_LOSS:
            tl.store(loss_ptr + row, 0.0)
        if STORE_LSE:
            tl.store(lse_ptr + 2 * row, 0.0)
            if TAIL == 1:
                tl.store(lse_ptr + 2 * row + 1, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, V, BLOCK_V):
                offs = start + cols
                zero = tl.zeros([BLOCK_V], dtype=grad_ptr.dtype.element_ty)
                tl.store(grad_ptr + offs, zero, mask=offs < V)
        return

    # --- teacher target: q over the k ids, q_tail over the other V-k tokens -----------
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    ids = tl.load(ids_ptr + row * stride_ids + offs_k, mask=mask_k, other=0)
    a = tl.load(tlp_ptr + row * stride_tlp + offs_k, mask=mask_k, other=float("-inf"))
    a = a.to(tl.float32) * inv_t  # (BLOCK_K,) tempered teacher logits
    n_tail = V - K
    b = float("-inf")  # log of the tail's total tempered weight
    if TAIL != 0:
        tau = tl.load(tail_ptr + row).to(tl.float32)
        log_n = tl.log(tl.maximum(n_tail, 1).to(tl.float32))
        b = tl.where(n_tail > 0, log_n + (tau - log_n) * inv_t, float("-inf"))
    m_t = tl.maximum(tl.max(a, axis=0), b)
    e_a = tl.exp(a - m_t)
    e_b = tl.exp(b - m_t)
    z_t = tl.sum(e_a, axis=0) + e_b
    q = e_a / z_t  # (BLOCK_K,), 0 on padding
    q_tail = e_b / z_t

    # --- student: gathered top-k logits, then one online sweep ------------------------
    x_k = tl.load(logits_ptr + ids, mask=mask_k, other=0.0).to(tl.float32) * inv_t
    row_sum = 0.0
    if COMPUTE_LOSS:
        m = float("-inf")
        d = 0.0
        if TAIL == 1:
            d_tail = 0.0  # sum of exp(x - m) outside the top-k
            sorted_ids = tl.load(sorted_ids_ptr + offs_k, mask=mask_k, other=0)
            j_lo = 0  # sorted_ids[:j_lo] lie in the blocks already swept
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            mask = offs < V
            x = tl.load(logits_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
            x = x * inv_t
            m_new = tl.maximum(m, tl.max(x, axis=0))
            rescale = tl.exp(m - m_new)
            e = tl.exp(x - m_new)
            d = d * rescale + tl.sum(e, axis=0)
            m = m_new
            if TAIL == 1:
                j_hi = tl.sum(((sorted_ids < start + BLOCK_V) & mask_k).to(tl.int32), axis=0)
                e_tail = _drop_ids(e, offs, sorted_ids_ptr, j_lo, j_hi)
                d_tail = d_tail * rescale + tl.sum(e_tail, axis=0)
                j_lo = j_hi
            if TAIL == 2:
                row_sum += tl.sum(tl.where(mask, x, 0.0), axis=0)
        lse = m + tl.log(d)
        if STORE_LSE:
            tl.store(lse_ptr + 2 * row, lse)
        if TAIL == 1:
            lse_tail = m + tl.log(tl.maximum(d_tail, TAIL_FLOOR))
            if STORE_LSE:
                tl.store(lse_ptr + 2 * row + 1, lse_tail)
    else:
        lse = tl.load(lse_ptr + 2 * row)
        if TAIL == 1:
            lse_tail = tl.load(lse_ptr + 2 * row + 1)

    logp_k = x_k - lse  # (BLOCK_K,) student log-probs at the ids
    q_each = 0.0  # uniform: target of each tail token (0 when there is no tail: b = -inf)
    if TAIL == 2:
        q_each = q_tail / tl.maximum(n_tail, 1)

    if COMPUTE_LOSS:
        loss = -tl.sum(tl.where(mask_k, q * logp_k, 0.0), axis=0)
        if TAIL == 1:
            loss -= tl.where(q_tail > 0.0, q_tail * (lse_tail - lse), 0.0)  # log P_tail
        if TAIL == 2:
            tail_logp = row_sum - tl.sum(tl.where(mask_k, x_k, 0.0), axis=0) - n_tail * lse
            loss -= q_each * tail_logp
        tl.store(loss_ptr + row, loss * loss_scale * w)

    if COMPUTE_GRAD:
        g_scale = tl.load(grad_scale_ptr + row * stride_scale).to(tl.float32)
        g_scale = g_scale * w * loss_scale * inv_t
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            mask = offs < V
            x = tl.load(logits_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
            p = tl.exp(x * inv_t - lse)
            if TAIL == 1:
                # d/dz of -q_tail log P_tail on a tail token: -q_tail s_v / P_tail, where
                # s_v / P_tail = exp(x/T - lse_tail) <= 1. The clip only acts on the top-k
                # columns (overwritten below), keeping their interim value finite.
                g = p - q_tail * tl.exp(tl.minimum(x * inv_t - lse_tail, 0.0))
            elif TAIL == 2:
                g = p - q_each
            else:
                g = p
            tl.store(grad_ptr + offs, (g * g_scale).to(grad_ptr.dtype.element_ty), mask=mask)
        # The top-k columns were written above with the tail formula; every store of
        # the sweep must land before they are overwritten.
        tl.debug_barrier()
        g_k = (tl.exp(logp_k) - q) * g_scale
        tl.store(grad_ptr + ids, g_k.to(grad_ptr.dtype.element_ty), mask=mask_k)


def _launch(
    logits: torch.Tensor,
    inputs: SoftCEInputs,
    *,
    loss: torch.Tensor | None,
    lse: torch.Tensor | None,
    lse_known: bool,
    grad: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    block_v: int | None,
    num_warps: int | None,
) -> None:
    n, vocab = logits.shape
    if n == 0:
        return
    # The kernel reads ids and teacher log-probs with a row stride and unit column stride.
    ids, tlp = _unit_stride(inputs.teacher_ids), _unit_stride(inputs.teacher_logprobs)
    k = ids.shape[-1]
    dummy = torch.empty(1, device=logits.device)  # pointer a compiled-out branch never reads
    bucket = inputs.tail == "bucket"
    sorted_ids = ids.sort(dim=-1).values.contiguous() if bucket else dummy  # (N, k)
    _soft_ce_kernel[(n,)](
        logits,
        logits.stride(0),
        grad if grad is not None else logits,
        grad.stride(0) if grad is not None else 0,
        ids,
        ids.stride(0),
        sorted_ids,
        tlp,
        tlp.stride(0),
        inputs.tail_logmass if inputs.tail_logmass is not None else dummy,
        inputs.weights if inputs.weights is not None else dummy,
        grad_scale if grad_scale is not None else dummy,
        1 if grad_scale is not None and grad_scale.dim() == 1 else 0,
        loss if loss is not None else dummy,
        lse if lse is not None else dummy,
        vocab,
        k,
        1.0 / inputs.temperature,
        inputs.loss_scale,
        TAIL=TAIL_MODES.index(inputs.tail),
        HAS_WEIGHT=inputs.weights is not None,
        COMPUTE_LOSS=not lse_known,
        STORE_LSE=lse is not None and not lse_known,
        COMPUTE_GRAD=grad is not None,
        BLOCK_V=block_v or min(DEFAULT_BLOCK_V, triton.next_power_of_2(vocab)),
        BLOCK_K=triton.next_power_of_2(k),
        TAIL_FLOOR=_TAIL_SUM_FLOOR,
        num_warps=num_warps or DEFAULT_NUM_WARPS,
    )


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def soft_ce_fwd_triton(
    logits: torch.Tensor,  # (N, V)
    inputs: SoftCEInputs,
    *,
    grad_scale: torch.Tensor | None,
    grad_out: torch.Tensor | None = None,
    loss_out: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row losses (N,) fp32 and, if ``grad_scale`` is given, d(loss)/d(logits).

    ``grad_scale`` is a 0-d fp32 tensor on the logits' device that multiplies every
    row's gradient (``1/sum(weights)`` for a mean); keeping it on the device avoids a
    host sync. The gradient (N, V) has the logits' dtype and goes to ``grad_out`` when
    given (it may be ``logits`` itself). ``loss_out`` likewise receives the losses, and
    ``lse_out`` (N, 2) fp32, when given, each row's log-sum-exp of ``logits / T`` and, for
    the bucket tail, that over the tokens outside the top-k, for :func:`soft_ce_bwd_triton`.
    """
    logits = _unit_stride(logits)
    n = logits.shape[0]
    if grad_scale is not None and grad_out is None:
        grad_out = torch.empty_like(logits)
    if loss_out is None:
        loss_out = torch.empty(n, device=logits.device, dtype=torch.float32)
    _launch(
        logits, inputs, loss=loss_out, lse=lse_out, lse_known=False,
        grad=grad_out if grad_scale is not None else None, grad_scale=grad_scale,
        block_v=block_v, num_warps=num_warps,
    )  # fmt: skip
    return loss_out, grad_out if grad_scale is not None else None


def soft_ce_bwd_triton(
    logits: torch.Tensor,  # (N, V)
    inputs: SoftCEInputs,
    lse: torch.Tensor,  # (N, 2) fp32 from soft_ce_fwd_triton(lse_out=...)
    grad_scale: torch.Tensor,  # () or (N,) fp32: upstream gradient times the reduction factor
    *,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """d(loss)/d(logits) (N, V) in the logits' dtype, recomputed from the saved log-sum-exp.

    One read of the logits and one write of the gradient; a per-row ``grad_scale`` (N,)
    carries a ``reduction="none"`` upstream gradient without any extra pass.
    """
    logits = _unit_stride(logits)
    grad = torch.empty_like(logits)
    _launch(
        logits, inputs, loss=None, lse=lse, lse_known=True, grad=grad,
        grad_scale=grad_scale.to(torch.float32).contiguous(), block_v=block_v,
        num_warps=num_warps,
    )  # fmt: skip
    return grad
