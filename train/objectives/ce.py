"""``ce``: prediction distillation, the paper's Eq. 1, against the stored teacher top-k + tail,
or its unbiased estimate from a sampled store's draws (``train/targets.py``).

The loss is ``smash.kernels``' soft cross-entropy, either on the (R, V) logits of the answer
rows (``loss="logits"``) or fused with the LM head's vocabulary projection
(``loss="fused_linear"``), which never makes the logits. Both take the run's ``tail``,
``temperature``, ``scale_t2`` and ``kernel_impl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from smash.kernels.fused_linear_soft_ce import fused_linear_soft_cross_entropy
from smash.kernels.soft_ce import soft_cross_entropy

from ..targets import importance_weighted, kernel_targets
from . import register_objective
from .base import Objective, StoreContext, StudentOutputs

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = ["DEFAULT_TAIL", "LOSS_IMPLS", "PredictionDistillation"]

LOSS_IMPLS = ("logits", "fused_linear")
DEFAULT_TAIL = "bucket"  # the tail mode of top-k stores (sampled stores have no tail)


@register_objective
class PredictionDistillation(Objective):
    name = "ce"
    needs = frozenset({"topk_ids", "topk_logprobs", "tail_logmass"})

    def __init__(
        self,
        loss: str = "logits",
        tail: str = DEFAULT_TAIL,
        temperature: float = 1.0,
        scale_t2: bool = False,
        kernel_impl: str = "auto",
    ):
        if loss not in LOSS_IMPLS:
            raise ValueError(f"loss must be one of {LOSS_IMPLS}, got {loss!r}")
        self.fused = loss == "fused_linear"
        self.kernel_args = {
            "tail": tail,
            "temperature": temperature,
            "scale_t2": scale_t2,
            "impl": kernel_impl,
        }

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> PredictionDistillation:
        return cls(cfg.loss, cfg.tail, cfg.temperature, cfg.scale_t2, cfg.kernel_impl)

    def for_store(self, store: StoreContext) -> bool:
        """Whether the store's rows need their weights (``train/targets.py``). Sampled and
        hybrid targets estimate the teacher at T=1 only: ``softmax(log c / T)`` is not an
        estimate of the tempered teacher, so another temperature is refused."""
        mode = store.manifest.targets["mode"]
        if mode != "topk" and self.kernel_args["temperature"] != 1.0:
            raise ValueError(
                f"{store.path}: a {mode} store estimates the teacher at temperature 1; "
                f"temperature={self.kernel_args['temperature']} would bias it (use 1.0, or a "
                f"top-k store)"
            )
        if mode != "topk" and self.kernel_args["tail"] != DEFAULT_TAIL:
            raise ValueError(
                f"{store.path}: tail={self.kernel_args['tail']!r} says how a top-k store's tail "
                f"mass enters the loss; a {mode} store's estimate needs no such rule: leave "
                f"tail at its default, {DEFAULT_TAIL!r}"
            )
        return importance_weighted(store.manifest)

    def loss(
        self, student: StudentOutputs, batch: Mapping[str, torch.Tensor], state: bool
    ) -> torch.Tensor:
        # check_ids=False: the ids come from a checksummed store written by the teacher pass
        # (or from a live teacher's top-k), and the check costs a host sync per step.
        *targets, tail_logmass, rows = kernel_targets(batch)
        if state and rows is not None:  # importance weights: sum_r W_r L_r / R, unbiased
            weighted = {**self.kernel_args, "reduction": "sum"}
            return self._loss(student, targets, tail_logmass, rows, weighted) / rows.numel()
        return self._loss(student, targets, tail_logmass, None, self.kernel_args)

    def _loss(
        self,
        student: StudentOutputs,
        targets: list[torch.Tensor],
        tail_logmass: torch.Tensor,
        weights: torch.Tensor | None,
        kernel_args: dict[str, Any],
    ) -> torch.Tensor:
        if self.fused:
            decoder = student.decoder
            return fused_linear_soft_cross_entropy(
                student.features, decoder.weight, decoder.bias, *targets,
                tail_logmass=tail_logmass, weights=weights, check_ids=False, **kernel_args,
            )  # fmt: skip
        # grad_in_forward=False: DeepSpeed divides the loss by the accumulation steps (and
        # fp16 scales it), so the upstream gradient is not 1; recomputing in backward avoids
        # the host sync and the extra pass over the saved gradient.
        return soft_cross_entropy(
            student.logits, *targets, tail_logmass=tail_logmass, weights=weights,
            check_ids=False, grad_in_forward=False, **kernel_args,
        )  # fmt: skip
