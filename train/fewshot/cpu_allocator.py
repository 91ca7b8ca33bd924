"""Keep freed host memory in the process, so that a CPU training step does not page-fault.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it at ``free``. A training step on the CPU allocates the dense gradient of
the vocabulary table (50,265 x width floats: 38.6 MB at DistilRoBERTa's width scaled down 4x,
154 MB at its own) more than once, and each allocation then faults in every page afresh: at the
scaled shape that was 20 ms for a ``torch.zeros`` of the table against 2 ms from reused memory,
about a third of a step. PyTorch has no caching allocator on the CPU (on CUDA its own caching
allocator already keeps freed blocks), and its CPU tuning guide recommends replacing the
allocator (jemalloc, tcmalloc); :func:`keep_freed_memory` instead asks glibc, through
``mallopt``, to serve large blocks from the heap and not to trim it, which makes freed blocks
reusable. A process-wide setting, so only ``evaluate-fewshot`` on a CPU device calls it; where
the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_NEVER_TRIM = 2**31 - 1  # the largest int: keep up to 2 GiB of freed memory at the heap's top


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones (glibc); whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # glibc alone has gnu_get_libc_version (musl's mallopt does nothing)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
