"""Choosing between the Triton kernels and the PyTorch reference (``impl=``)."""

from __future__ import annotations

import os

import torch

__all__ = ["HAS_TRITON", "IMPLS", "use_triton"]

IMPLS: tuple[str, ...] = ("auto", "triton", "torch")

try:  # Triton is optional at import time: CPU-only installs use the reference.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


def use_triton(impl: str, device: torch.device) -> bool:
    """``auto``: Triton on CUDA, the reference elsewhere. Explicit choices are honoured or refused.

    ``impl="triton"`` on CPU tensors runs only under ``TRITON_INTERPRET=1`` (the tests).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if impl == "torch":
        return False
    if impl == "auto":
        return HAS_TRITON and device.type == "cuda"
    if not HAS_TRITON:
        raise RuntimeError("impl='triton' but triton is not installed")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"impl='triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
            "to run the kernels on CPU in the interpreter, or use impl='torch'"
        )
    return True
