r"""Soft cross-entropy between a student's logits and a sparse (top-k + tail) teacher.

This is the distillation loss of SMASH (the paper's Eq. 1, ``-sum_i t_i log s_i``) when
the teacher distribution ``t`` is only known through what the store keeps per row: the
top-k ids, their log-probabilities ``l_i = log p_i`` at T=1 (float16, any order), and the
exact tail mass ``r = 1 - sum_i p_i`` as ``tail_logmass = log r`` (float32).

Notation for one row
--------------------
``z`` (V,) student logits; ``K`` the set of the k teacher ids; ``T`` the temperature;
``s = softmax(z / T)`` the student; ``P_tail = sum_{v not in K} s_v``.

Teacher target (temperature applies to both sides)
--------------------------------------------------
The tempered teacher is ``p^(1/T)`` renormalised. Its top-k part is exact; for the tail
only the total ``r`` is known, so the ``V-k`` tail tokens are taken to share it equally,
each ``r/(V-k)``. Then, with ``Z = sum_i p_i^(1/T) + (V-k) (r/(V-k))^(1/T)``::

    q_i    = p_i^(1/T) / Z                      (i in K)
    q_tail = (V-k) (r/(V-k))^(1/T) / Z          (total target mass of the tail)

``renorm`` drops the tail (``q_tail = 0``, ``q = softmax(l / T)`` over the k entries).
At T=1 the tail modes use ``q_i = p_i`` and ``q_tail = r`` exactly (up to renormalising
away the float16 rounding of the stored values).

Tail modes and their bias
-------------------------
``renorm``   ``L = -sum_i q_i log s_i``. The teacher's top-k renormalised. Biased whenever
             ``r > 0``: every top-k target is inflated by ``1/(1-r)`` and the student is
             pushed to put *zero* mass outside the top-k, so it becomes overconfident;
             the sparse-logit-sampling literature shows this top-k estimator of the full
             cross-entropy is biased. Exact only when the top-k holds all the mass.
``bucket``   ``L = -sum_i q_i log s_i - q_tail log P_tail``. The tail is one extra
             ("ghost") outcome compared with the student's total mass outside the top-k:
             the exact cross-entropy between the two (k+1)-outcome coarsenings. At T=1
             it matches the top-k probabilities and the tail mass without bias, but it
             is blind to how the student spreads mass *inside* the tail (by the chain
             rule of KL it drops the term ``r * KL(t_tail || s_tail)``), so that shape
             is left unconstrained.
``uniform``  ``L = -sum_i q_i log s_i - q_tail/(V-k) sum_{v not in K} log s_v``. The tail
             mass spread uniformly over the other ``V-k`` tokens. Top-k and tail mass are
             right at T=1, but the tail shape is pulled towards flat, while real tails are
             Zipf-like: the student's tail is pushed up on very unlikely tokens (higher
             entropy), and every one of the V logits receives a gradient.

Sampled targets (``precompute-teacher --targets sampled``) need no mode of their own: a row
of distinct sampled ids with ``teacher_logprobs = log(counts)`` and ``tail_logmass = -inf``
gives ``q_i = c_i / N`` and ``q_tail = 0`` in every mode, i.e. ``L = -sum_i (c_i/N) log s_i``,
an unbiased estimate of the loss against the full teacher (``smash.train.targets``); padding
entries with count 0 (``log 0 = -inf``) get ``q = 0``.

For ``T != 1`` both tail modes inherit the uniform-tail assumption in ``q_tail``: by
Jensen's inequality it over-states the tempered tail mass for ``T > 1`` (``x^(1/T)`` is
concave) and under-states it for ``T < 1``.

Options
-------
``scale_t2`` multiplies the loss by ``T**2`` (Hinton et al.), keeping gradient magnitudes
comparable across temperatures. ``weights`` (N,) (float or bool, finite and >= 0; others
are refused) multiply each row's loss; a weight of 0 ignores the row: its logits are
never read (they may be padding, even NaN).
``reduction``: ``sum`` of weighted row losses, ``mean`` = that sum over ``sum(weights)``
(the number of rows that count; 0 when none count, never NaN), or ``none`` (weighted
per-row losses in the logits' batch shape).

Gradient (only the logits get one)
----------------------------------
With ``c = w * (T**2 if scale_t2 else 1) / T`` times the reduction's factor and ``s``
the tempered student, ``dL/dz_v = c * g_v`` where::

    g_v = s_v - q_v                                  v in K (every mode; uses sum q = 1)
    g_v = s_v                                        v not in K, renorm
    g_v = s_v - q_tail * s_v / P_tail                v not in K, bucket
    g_v = s_v - q_tail / (V-k)                       v not in K, uniform

Numerical note (bucket): ``1 - sum_i s_i`` would cancel to rounding error once the
student is confident (``P_tail`` below ~1e-6 in fp32), exactly when the tail term
matters. Both implementations therefore compute ``log P_tail`` directly, as a
log-sum-exp over the tokens outside the top-k, and ``s_v / P_tail`` as
``exp(z_v / T - that log-sum-exp)``. The Triton kernel stays exact to fp32 rounding until
``exp`` underflows (a tail ~1e-38 below the row's largest probability).
"""

from __future__ import annotations

import torch

from .dispatch import use_triton
from .soft_ce_inputs import SoftCEInputs, check_inputs
from .soft_ce_reference import mean_scale, reduce_rows, soft_ce_rows_reference

__all__ = ["SoftCrossEntropyFunction", "scale_grad_", "soft_cross_entropy"]


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply the upstream gradient in place to a gradient computed for upstream 1.

    ``grad`` (N, ...) was produced in the forward pass; for ``none`` each row gets its
    own factor, otherwise one scalar, skipped when it is exactly 1 (the common case;
    costs a host sync, saves a read and a write of ``grad``).
    """
    if reduction == "none":
        return grad.mul_(grad_output.reshape(-1, *([1] * (grad.dim() - 1))))
    if bool(grad_output.ne(1.0)):
        grad.mul_(grad_output)
    return grad


def _resolve_grad_in_forward(choice: bool | None, dtype: torch.dtype) -> bool:
    """``grad_in_forward`` for logits of ``dtype``: None means "unless fp16"; True with fp16
    is refused (see :func:`soft_cross_entropy`)."""
    if choice is None:
        return dtype != torch.float16
    if choice and dtype == torch.float16:
        raise ValueError(
            "grad_in_forward=True with float16 logits: the gradient would be rounded to "
            "float16 before the loss scale is applied, flushing its small entries to zero; "
            "use grad_in_forward=False (the default for float16)"
        )
    return choice


class SoftCrossEntropyFunction(torch.autograd.Function):
    """Triton soft cross-entropy, with two gradient strategies (see ``soft_ce_triton``).

    ``grad_in_forward=True``: the gradient is computed in the forward pass, saved, and
    scaled in place in backward, so a second backward through the same graph
    (``retain_graph=True``) raises autograd's in-place modification error instead of
    returning a twice-scaled gradient. ``False``: the forward saves the logits and the
    rows' log-sum-exps (over the row, and outside the top-k), and backward recomputes
    the gradient with the upstream factor folded in (no host sync, no extra pass).
    """

    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, inputs: SoftCEInputs, compute_grad: bool, grad_in_forward: bool
    ) -> torch.Tensor:
        from .soft_ce_triton import soft_ce_fwd_triton

        flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
        n = flat.shape[0]
        ctx.inputs = inputs
        ctx.logits_shape = logits.shape
        ctx.grad_in_forward = grad_in_forward
        if compute_grad and grad_in_forward:
            scale = (
                mean_scale(inputs, n, logits.device)
                if inputs.reduction == "mean"
                else torch.ones((), device=logits.device)
            )
            rows, grad = soft_ce_fwd_triton(flat, inputs, grad_scale=scale)
            ctx.save_for_backward(grad)
        elif compute_grad:
            lse = torch.empty(n, 2, device=logits.device, dtype=torch.float32)
            rows, _ = soft_ce_fwd_triton(flat, inputs, grad_scale=None, lse_out=lse)
            ctx.save_for_backward(flat, lse)
        else:
            rows, _ = soft_ce_fwd_triton(flat, inputs, grad_scale=None)
        return reduce_rows(rows, inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        inputs = ctx.inputs
        if ctx.grad_in_forward:
            (grad,) = ctx.saved_tensors
            grad = scale_grad_(grad, grad_output, inputs.reduction)
        else:
            from .soft_ce_triton import soft_ce_bwd_triton

            flat, lse = ctx.saved_tensors
            scale = grad_output.reshape(-1) if inputs.reduction == "none" else grad_output
            if inputs.reduction == "mean":
                scale = scale * mean_scale(inputs, flat.shape[0], flat.device)
            grad = soft_ce_bwd_triton(flat, inputs, lse, scale)
        return grad.view(ctx.logits_shape), None, None, None


def soft_cross_entropy(
    logits: torch.Tensor,
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
    grad_in_forward: bool | None = None,
) -> torch.Tensor:
    """Soft cross-entropy of student ``logits`` against a stored sparse teacher (see module doc).

    Args:
        logits: (..., V) fp32/fp16/bf16 student logits at the mask positions.
        teacher_ids: (..., k) int32/int64 top-k token ids, duplicate-free, any order.
        teacher_logprobs: (..., k) teacher log-probabilities at T=1 (fp16 as stored, or fp32).
        tail_logmass: (...) float32 ``log(1 - sum exp(teacher_logprobs))``; needed by the
            ``bucket`` and ``uniform`` tails, ``-inf`` when the top-k holds all the mass.
        tail: ``renorm`` | ``bucket`` | ``uniform``.
        temperature: T > 0, applied to student and teacher.
        scale_t2: multiply the loss by T**2.
        weights: (...) per-row weights (float or bool), finite and >= 0 (else a
            ValueError); 0 ignores a row.
        reduction: ``mean`` (over the rows that count) | ``sum`` | ``none``.
        impl: ``auto`` (Triton on CUDA, reference elsewhere) | ``triton`` | ``torch``.
        check_ids: check ids are in range and duplicate-free (one host sync).
        grad_in_forward: Triton path only. True: compute the gradient in the forward
            pass (fewest bytes when the upstream gradient is exactly 1). False: recompute
            it in backward (fewer bytes and no host sync when the upstream gradient is
            not 1, e.g. under gradient accumulation or fp16 loss scaling). None (the
            default): False for fp16 logits, True otherwise. True is refused for fp16:
            a gradient written in fp16 before the loss scale is applied flushes its
            small entries (the tail's, ~1e-8 / N) to zero; recomputed in backward, it is
            written once, with the loss scale folded in.

    Returns:
        A 0-d fp32 tensor, or (...) per-row losses for ``reduction="none"``. Only
        ``logits`` receives a gradient.
    """
    if not logits.is_floating_point() or logits.dim() < 1:
        raise TypeError(f"logits must be a floating (..., V) tensor, got {logits.dtype}")
    inputs = check_inputs(
        logits.shape[:-1],
        logits.shape[-1],
        logits.device,
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
    in_forward = _resolve_grad_in_forward(grad_in_forward, logits.dtype)
    if use_triton(impl, logits.device):
        compute_grad = logits.requires_grad and torch.is_grad_enabled()
        return SoftCrossEntropyFunction.apply(logits, inputs, compute_grad, in_forward)
    rows = soft_ce_rows_reference(logits.reshape(-1, logits.shape[-1]), inputs)
    return reduce_rows(rows, inputs)
