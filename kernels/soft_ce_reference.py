"""Plain-PyTorch soft cross-entropy against sparse teacher targets: the oracle.

One definition used three ways: the CPU path of :func:`smash.kernels.soft_cross_entropy`,
the ground truth the Triton kernels are tested against (in float64), and the baseline
of ``benchmarks/bench_kernel.py``. The semantics (tail modes, temperature, gradient)
are written down in :mod:`smash.kernels.soft_ce`; this file is their literal transcription,
differentiated by autograd, with no attempt at saving memory.
"""

from __future__ import annotations

import math

import torch

from .soft_ce_inputs import SoftCEInputs, check_inputs

__all__ = [
    "mean_scale",
    "reduce_rows",
    "soft_ce_rows_reference",
    "soft_cross_entropy_reference",
    "teacher_targets",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def teacher_targets(
    teacher_logprobs: torch.Tensor,  # (N, k) log p at T=1
    tail_logmass: torch.Tensor | None,  # (N,) log(1 - sum p), or None for renorm
    vocab_size: int,
    temperature: float,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempered teacher target: ``q`` (N, k) on the top-k ids and ``q_tail`` (N,) on the rest.

    ``q_i ∝ p_i^(1/T)``; the tail's ``V-k`` tokens are assumed to share the stored tail
    mass ``r`` equally, so their total tempered weight is ``(V-k) (r/(V-k))^(1/T)``.
    Everything is normalised, so ``q.sum(-1) + q_tail == 1`` (the fp16 rounding of the
    stored values does not leak into the loss). Without a tail, ``q_tail`` is 0.
    """
    a = teacher_logprobs.to(dtype) / temperature  # (N, k)
    n_tail = vocab_size - a.shape[-1]
    if tail_logmass is None or n_tail == 0:
        return torch.softmax(a, dim=-1), a.new_zeros(a.shape[0])
    log_n = math.log(n_tail)
    b = log_n + (tail_logmass.to(dtype) - log_n) / temperature  # (N,) log tempered tail weight
    q = torch.softmax(torch.cat([a, b[:, None]], dim=-1), dim=-1)  # (N, k+1)
    return q[:, :-1], q[:, -1]


def soft_ce_rows_reference(logits: torch.Tensor, inputs: SoftCEInputs) -> torch.Tensor:
    """Per-row loss (N,) for flattened ``logits`` (N, V), already weighted and T²-scaled."""
    acc = _acc_dtype(logits.dtype)
    vocab = logits.shape[-1]
    ids = inputs.teacher_ids.long()  # (N, k)
    k = ids.shape[-1]
    tail = inputs.tail if k < vocab else "renorm"  # an empty tail has nothing to model
    x = logits.to(acc) / inputs.temperature  # (N, V)
    keep = None
    if inputs.weights is not None:  # rows with weight 0 are not read (they may be padding)
        keep = inputs.weights > 0  # (N,)
        x = x.masked_fill(~keep[:, None], 0.0)
    logp = x - torch.logsumexp(x, dim=-1, keepdim=True)  # (N, V) student log-probs
    logp_k = logp.gather(1, ids)  # (N, k)
    q, q_tail = teacher_targets(
        inputs.teacher_logprobs,
        None if tail == "renorm" else inputs.tail_logmass,
        vocab,
        inputs.temperature,
        acc,
    )
    loss = -(q * logp_k).sum(-1)  # (N,)
    if tail == "bucket":
        # log of the student's mass outside the top-k, computed without cancellation.
        outside = x.scatter(1, ids, float("-inf"))
        log_tail = torch.logsumexp(outside, dim=-1) - torch.logsumexp(x, dim=-1)
        loss = loss - q_tail * log_tail
    elif tail == "uniform":
        tail_logp_sum = logp.sum(-1) - logp_k.sum(-1)  # sum of log p over the V-k others
        loss = loss - q_tail / (vocab - k) * tail_logp_sum
    loss = loss * inputs.loss_scale
    if keep is not None:
        loss = torch.where(keep, loss * inputs.weights.to(acc), 0.0)
    return loss


def reduce_rows(rows: torch.Tensor, inputs: SoftCEInputs) -> torch.Tensor:
    """Apply the reduction to weighted per-row losses (N,).

    ``mean`` divides by the total weight (the number of rows that count for a mask);
    a batch where nothing counts gives 0, not NaN.
    """
    if inputs.reduction == "none":
        return rows.reshape(inputs.batch_shape)
    total = rows.sum()
    if inputs.reduction == "sum":
        return total
    return total * mean_scale(inputs, rows.shape[0], rows.device).to(rows.dtype)


def mean_scale(inputs: SoftCEInputs, n: int, device: torch.device) -> torch.Tensor:
    """``1 / sum(weights)`` as a 0-d fp32 tensor (0 when nothing counts), with no host sync."""
    if inputs.weights is None:
        return torch.tensor(1.0 / n if n else 0.0, device=device)
    denom = inputs.weights.sum()
    return torch.where(denom > 0, 1.0 / denom.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def soft_cross_entropy_reference(
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
    check_ids: bool = True,
) -> torch.Tensor:
    """Reference soft cross-entropy; same arguments as :func:`smash.kernels.soft_cross_entropy`.

    Computes in float32 (float64 for float64 logits) and materialises several N×V
    temporaries; autograd supplies the gradient.
    """
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
    rows = soft_ce_rows_reference(logits.reshape(-1, logits.shape[-1]), inputs)
    return reduce_rows(rows, inputs)
