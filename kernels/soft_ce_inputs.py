"""Input checking and normalisation shared by every soft cross-entropy implementation.

Both the PyTorch reference and the Triton path take the same arguments; this module
turns them into one validated :class:`SoftCEInputs` so the two can never disagree on
what a shape error, an unknown tail mode or a bad id is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = ["REDUCTIONS", "TAIL_MODES", "SoftCEInputs", "check_inputs"]

# Order matters: the index is the compile-time TAIL code of the Triton kernel.
TAIL_MODES: tuple[str, ...] = ("renorm", "bucket", "uniform")
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


@dataclass(frozen=True)
class SoftCEInputs:
    """Validated, flattened inputs: ``N`` rows, vocabulary ``V``, ``k`` teacher entries."""

    teacher_ids: torch.Tensor  # (N, k) int
    teacher_logprobs: torch.Tensor  # (N, k) fp16/bf16/fp32, as stored (upcast where used)
    tail_logmass: torch.Tensor | None  # (N,) float, log(1 - sum top-k p); None for renorm
    weights: torch.Tensor | None  # (N,) float32, 0 = row ignored; None = all rows count
    tail: str
    temperature: float
    scale_t2: bool
    reduction: str
    batch_shape: torch.Size  # leading dims of the caller's logits, for reduction="none"
    vocab_size: int

    @property
    def loss_scale(self) -> float:
        """Factor on every row's loss: T**2 when asked (keeps gradient size T-independent)."""
        return self.temperature**2 if self.scale_t2 else 1.0

    def rows(self, start: int, stop: int) -> SoftCEInputs:
        """The same inputs restricted to rows ``[start, stop)`` (views, no copies)."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return replace(
            self,
            teacher_ids=self.teacher_ids[start:stop],
            teacher_logprobs=self.teacher_logprobs[start:stop],
            tail_logmass=cut(self.tail_logmass),
            weights=cut(self.weights),
            batch_shape=torch.Size([stop - start]),
        )


def _check_weight_values(weights: torch.Tensor) -> None:
    """Refuse negative and non-finite weights (one host sync).

    The implementations would disagree on them: the reference ignores every row whose
    weight is not > 0, the Triton kernel only rows whose weight is exactly 0.
    """
    bad = ~torch.isfinite(weights) | (weights < 0)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"weights must be finite and >= 0 (0 ignores a row); row {row} has "
            f"{weights[row].item()}"
        )


def check_inputs(
    batch_shape: torch.Size,
    vocab_size: int,
    device: torch.device,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    tail_logmass: torch.Tensor | None,
    tail: str,
    temperature: float,
    scale_t2: bool,
    weights: torch.Tensor | None,
    reduction: str,
    check_ids: bool,
) -> SoftCEInputs:
    """Validate the teacher side against a student of ``batch_shape + (vocab_size,)``.

    ``check_ids`` also checks that ids are in ``[0, V)`` and duplicate-free within a row;
    that costs one small reduction and a host sync, so a trainer that trusts its store
    may turn it off. Float ``weights`` are always checked to be finite and >= 0 (another
    sync, only when weights are given; bool weights need no check).
    """
    if tail not in TAIL_MODES:
        raise ValueError(f"unknown tail mode {tail!r}; expected one of {TAIL_MODES}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(
            f"teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs "
            f"{tuple(teacher_logprobs.shape)} must have the same shape"
        )
    if teacher_ids.shape[:-1] != batch_shape or teacher_ids.dim() == 0:
        raise ValueError(
            f"teacher_ids {tuple(teacher_ids.shape)} must be batch shape {tuple(batch_shape)} "
            "of the logits plus a trailing k"
        )
    k = teacher_ids.shape[-1]
    if not 1 <= k <= vocab_size:
        raise ValueError(f"need 1 <= k <= V, got k={k}, V={vocab_size}")
    if teacher_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"teacher_ids must be int32 or int64, got {teacher_ids.dtype}")
    if not teacher_logprobs.is_floating_point():
        raise TypeError(f"teacher_logprobs must be floating point, got {teacher_logprobs.dtype}")
    for name, t in (("teacher_ids", teacher_ids), ("teacher_logprobs", teacher_logprobs)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, logits on {device}")

    n = batch_shape.numel()
    ids = teacher_ids.reshape(n, k)
    if check_ids and n:
        ordered = ids.sort(dim=-1).values
        bad = (ordered[:, 0] < 0) | (ordered[:, -1] >= vocab_size)
        if k > 1:
            bad |= (ordered[:, 1:] == ordered[:, :-1]).any(dim=-1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"teacher_ids row {row} has an id outside [0, {vocab_size}) or a duplicate: "
                f"{ids[row].tolist()[:16]}..."
            )

    tail_flat = None
    if tail != "renorm":
        if tail_logmass is None:
            raise ValueError(f"tail={tail!r} needs tail_logmass (log of 1 - sum of top-k probs)")
        if tail_logmass.shape != batch_shape:
            raise ValueError(
                f"tail_logmass {tuple(tail_logmass.shape)} must have the batch shape "
                f"{tuple(batch_shape)}"
            )
        tail_flat = tail_logmass.reshape(n).to(device=device, dtype=torch.float32)

    weights_flat = None
    if weights is not None:
        if weights.shape != batch_shape:
            raise ValueError(
                f"weights {tuple(weights.shape)} must have the batch shape {tuple(batch_shape)}"
            )
        weights_flat = weights.reshape(n).to(device=device, dtype=torch.float32)
        if weights.is_floating_point():
            _check_weight_values(weights_flat)

    return SoftCEInputs(
        teacher_ids=ids,
        teacher_logprobs=teacher_logprobs.reshape(n, k),
        tail_logmass=tail_flat,
        weights=weights_flat,
        tail=tail,
        temperature=float(temperature),
        scale_t2=bool(scale_t2),
        reduction=reduction,
        batch_shape=batch_shape,
        vocab_size=vocab_size,
    )
