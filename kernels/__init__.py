"""Soft cross-entropy against sparse (top-k + tail) teacher targets: Triton kernels and reference.

``import smash.kernels`` works without a GPU or Triton: the Triton modules are imported
only when a CUDA (or interpreted) call needs them.
"""

from .dispatch import IMPLS
from .fused_linear_soft_ce import fused_linear_soft_cross_entropy
from .soft_ce import soft_cross_entropy
from .soft_ce_inputs import REDUCTIONS, TAIL_MODES
from .soft_ce_reference import soft_cross_entropy_reference

__all__ = [
    "IMPLS",
    "REDUCTIONS",
    "TAIL_MODES",
    "fused_linear_soft_cross_entropy",
    "soft_cross_entropy",
    "soft_cross_entropy_reference",
]
