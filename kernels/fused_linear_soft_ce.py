"""LM head + soft cross-entropy in one step, never materialising the N×V logits.

``loss = soft_cross_entropy(hidden @ weight.T + bias, ...)`` with the same semantics as
:mod:`smash.kernels.soft_ce`, and gradients for ``hidden``, ``weight`` and ``bias``.

Design: the rows are processed in chunks of ``C`` rows. For each chunk, one matmul
makes its (C, V) logits, the soft-CE kernel turns them *in place* into their gradient
(the kernel sees whole rows, so it needs the log-sum-exp only once), and two more
matmuls fold that gradient into ``grad_hidden`` (C, H) and ``grad_weight`` (V, H).
All gradients are thus done in the forward pass; backward only applies the upstream
factor (fp16 aside, see below). Three matmuls of N·V·H each, exactly as many as an unfused LM head + loss, so
the time stays at matmul + kernel; peak extra memory is one (C, V) chunk instead of
two N×V tensors.

Why row chunks and not vocabulary blocks: a vocabulary block cannot produce its
gradient before the row's log-sum-exp over *all* blocks is known, so a vocabulary-
blocked scheme (Cut Cross-Entropy's) must recompute every logit block in a second
pass: four N·V·H matmuls instead of three, ~1.33× the matmul time, which cannot meet a
1.15× budget. Row chunks keep memory bounded by a fixed byte budget instead.

``grad_weight`` is accumulated over chunks with ``addmm`` in the weight's dtype (one
rounding per chunk for half-precision weights); ``grad_bias`` is accumulated in fp32.

``reduction="none"`` is refused: the weight gradient is summed over rows in the forward
pass, so it cannot take a per-row upstream gradient.

fp16 is the exception: its gradients are computed in backward. A gradient made in the
forward pass is for an upstream gradient of 1, i.e. before fp16 training's loss scale
(DeepSpeed's 2**16 / accumulation steps) is applied, and in fp16 its small entries
underflow: the tail tokens' logit gradients, ~1e-8 / N, are flushed to zero in the
chunk already, so no fp32 accumulation of the matmul results can bring them back (and
fp32 matmuls would forfeit the tensor cores). So for fp16 the forward computes the loss
only, saving ``hidden``, ``weight`` and ``bias`` (no copies), and backward runs the
chunks again with the upstream gradient folded into the kernel's gradient, which the
matmuls then see at the same scale as in an unfused fp16 LM head: four N·V·H matmuls
instead of three, no extra memory. bf16 has fp32's exponent range and keeps the
three-matmul path.
"""

from __future__ import annotations

import torch

from .dispatch import use_triton
from .soft_ce import scale_grad_
from .soft_ce_inputs import SoftCEInputs, check_inputs
from .soft_ce_reference import mean_scale, reduce_rows, soft_ce_rows_reference

__all__ = [
    "CHUNK_BYTES",
    "FusedLinearSoftCEFunction",
    "chunk_rows",
    "fused_linear_soft_cross_entropy",
]

CHUNK_BYTES = 128 * 2**20  # default budget for one (C, V) logits chunk


def chunk_rows(n: int, vocab: int, element_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk: the largest power of two whose (C, V) logits fit ``chunk_bytes``."""
    fit = max(1, chunk_bytes // (vocab * element_size))
    return min(max(n, 1), 1 << (fit.bit_length() - 1))


def _chunk_loss_grad_torch(
    logits: torch.Tensor, inputs: SoftCEInputs, grad_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CPU stand-in for the Triton kernel: the reference, differentiated by autograd."""
    if grad_scale is None:
        return soft_ce_rows_reference(logits, inputs), None
    x = logits.detach().requires_grad_()
    with torch.enable_grad():
        rows = soft_ce_rows_reference(x, inputs)
        (grad,) = torch.autograd.grad(rows.sum() * grad_scale, x)
    return rows.detach(), grad


def _chunk_loss_grad_triton(
    logits: torch.Tensor, inputs: SoftCEInputs, grad_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from .soft_ce_triton import soft_ce_fwd_triton

    grad_out = logits if grad_scale is not None else None  # the chunk is ours: reuse it
    return soft_ce_fwd_triton(logits, inputs, grad_scale=grad_scale, grad_out=grad_out)


def _fused_pass(
    hidden: torch.Tensor,  # (N, H)
    weight: torch.Tensor,  # (V, H)
    bias: torch.Tensor | None,  # (V,)
    inputs: SoftCEInputs,
    triton_path: bool,
    chunk_size: int,
    needs: tuple[bool, bool, bool],  # grads wanted for (hidden, weight, bias)
    grad_scale: torch.Tensor | None,  # 0-d factor on every row's gradient; None iff no needs
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-row losses (N,) fp32 and the gradients asked for, scaled by ``grad_scale``."""
    n = hidden.shape[0]
    need_h, need_w, need_b = needs
    step = _chunk_loss_grad_triton if triton_path else _chunk_loss_grad_torch
    rows = torch.empty(n, device=hidden.device, dtype=torch.float32)
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros_like(weight) if need_w else None
    grad_b = torch.zeros(weight.shape[0], device=hidden.device) if need_b else None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        h = hidden[start:stop]  # (C, H)
        logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)  # (C, V)
        rows[start:stop], g = step(logits, inputs.rows(start, stop), grad_scale)
        if need_h:
            torch.mm(g, weight, out=grad_h[start:stop])
        if need_w:
            grad_w.addmm_(g.T, h)
        if need_b:
            grad_b += g.sum(dim=0, dtype=torch.float32)
    if grad_b is not None:
        grad_b = grad_b.to(bias.dtype)
    return rows, grad_h, grad_w, grad_b


def _reduction_scale(inputs: SoftCEInputs, n: int, device: torch.device) -> torch.Tensor:
    """The reduction's factor on every row's gradient: ``1/sum(weights)`` for a mean, else 1."""
    if inputs.reduction == "mean":
        return mean_scale(inputs, n, device)
    return torch.ones((), device=device)


class FusedLinearSoftCEFunction(torch.autograd.Function):
    """Gradients computed in the forward pass and scaled in backward, except for fp16.

    fp16: the forward computes the loss only and backward runs the chunks again with the
    upstream gradient (the loss scale) folded into the kernel's gradient, as an unfused
    LM head would; see the module doc.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        inputs: SoftCEInputs,
        triton_path: bool,
        chunk_size: int,
        needs: tuple[bool, bool, bool],
    ) -> torch.Tensor:
        ctx.args = (inputs, triton_path, chunk_size, needs)
        ctx.in_backward = hidden.dtype == torch.float16 and any(needs)
        if ctx.in_backward:  # the loss only, gradients in backward (module doc)
            loss_only = (inputs, triton_path, chunk_size, (False, False, False))
            rows, *_ = _fused_pass(hidden, weight, bias, *loss_only, grad_scale=None)
            ctx.save_for_backward(hidden, weight, bias)
        else:
            scale = None
            if any(needs):
                scale = _reduction_scale(inputs, hidden.shape[0], hidden.device)
            rows, *grads = _fused_pass(hidden, weight, bias, *ctx.args, grad_scale=scale)
            ctx.save_for_backward(*grads)
        return reduce_rows(rows, inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if ctx.in_backward:
            hidden, weight, bias = ctx.saved_tensors
            inputs = ctx.args[0]
            scale = grad_output * _reduction_scale(inputs, hidden.shape[0], hidden.device)
            _, *grads = _fused_pass(hidden, weight, bias, *ctx.args, grad_scale=scale)
        else:
            grads = [
                None if g is None else scale_grad_(g, grad_output, "sum") for g in ctx.saved_tensors
            ]
        return *grads, None, None, None, None


def fused_linear_soft_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    tail_logmass: torch.Tensor | None = None,
    tail: str = "renorm",
    temperature: float = 1.0,
    scale_t2: bool = False,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
    impl: str = "auto",
    check_ids: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``soft_cross_entropy(hidden @ weight.T + bias, ...)`` without the N×V logits.

    Args:
        hidden: (..., H) student hidden states at the mask positions (after the LM
            head's transform, i.e. the input of its decoder projection).
        weight: (V, H) decoder weight, same dtype as ``hidden``.
        bias: (V,) decoder bias or None.
        teacher_ids, teacher_logprobs, tail_logmass, tail, temperature, scale_t2,
        weights, impl, check_ids: as in :func:`smash.kernels.soft_cross_entropy`.
        reduction: ``mean`` | ``sum`` (``none`` is not supported, see module doc).
        chunk_size: rows per chunk; default: as many as fit :data:`CHUNK_BYTES`.

    Returns:
        0-d fp32 loss; gradients flow to ``hidden``, ``weight`` and ``bias``.
    """
    if reduction == "none":
        raise ValueError(
            "fused_linear_soft_cross_entropy supports reduction 'mean' or 'sum', not 'none': "
            "it sums the weight gradient over rows in the forward pass"
        )
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden (..., {hidden.shape[-1]}) and weight {tuple(weight.shape)} do not match: "
            "weight must be (V, H)"
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden is {hidden.dtype} but weight is {weight.dtype}")
    vocab = weight.shape[0]
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias {tuple(bias.shape)} must be ({vocab},)")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    inputs = check_inputs(
        hidden.shape[:-1],
        vocab,
        hidden.device,
        teacher_ids,
        teacher_logprobs,
        tail_logmass=tail_logmass,
        tail=tail,
        temperature=temperature,
        scale_t2=scale_t2,
        weights=weights,
        reduction=reduction,
        check_ids=check_ids,
    )
    flat = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    triton_path = use_triton(impl, hidden.device)
    chunk = chunk_size or chunk_rows(flat.shape[0], vocab, hidden.element_size())
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    return FusedLinearSoftCEFunction.apply(flat, weight, bias, inputs, triton_path, chunk, needs)
