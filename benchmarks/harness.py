"""The benchmarks' shared harness (one place, as Liger-Kernel's ``benchmark/scripts/utils.py``).

Operations are timed with ``time_ms`` (median and 20/80% quantiles: Triton's ``do_bench`` on
CUDA, repeated wall-clock runs on a CPU), a loss is split into forward / backward / full with
``measure_modes`` and ``peak_extra_bytes`` is measured on CUDA (the kernel benchmark; the
pipeline benchmarks time whole runs). Every benchmark tags its result with ``device_name`` and
writes it with ``write_result``: JSON under ``--out`` plus a printed Markdown table.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MODES",
    "device_name",
    "markdown_table",
    "measure_modes",
    "peak_extra_bytes",
    "time_ms",
    "write_result",
]

QUANTILES = (0.5, 0.2, 0.8)  # the median first, as do_bench returns them
MODES = ("forward", "backward", "full")


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's with its core count: every result row carries it."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def time_ms(
    fn: Callable[[], Any],
    device: str,
    reset: Sequence[torch.Tensor] = (),
    repeats: int = 5,
    setup: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Milliseconds per call of ``fn``: ``ms`` (median), ``ms_p20``, ``ms_p80``.

    ``reset`` tensors get ``.grad = None`` before each call; ``setup`` (untimed) runs before
    each call too. CUDA uses ``triton.testing.do_bench``; a CPU runs ``fn`` once to warm up,
    then ``repeats`` timed calls.
    """
    if device.startswith("cuda") and setup is None:
        from triton.testing import do_bench

        median, p20, p80 = do_bench(fn, grad_to_none=list(reset), quantiles=list(QUANTILES))
        return {"ms": float(median), "ms_p20": float(p20), "ms_p80": float(p80)}
    times = []
    for i in range(repeats + 1):
        for t in reset:
            t.grad = None
        if setup is not None:
            setup()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append((time.perf_counter() - start) * 1e3)
    cuts = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {"ms": statistics.median(times), "ms_p20": cuts[1], "ms_p80": cuts[7]}


def peak_extra_bytes(
    fn: Callable[[], Any], device: str, reset: Sequence[torch.Tensor] = ()
) -> int | None:
    """Peak memory allocated during one call above what was allocated before it (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    for t in reset:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure_modes(
    loss_fn: Callable[[], torch.Tensor],
    device: str,
    reset: Sequence[torch.Tensor],
    modes: Sequence[str] = MODES,
) -> dict[str, dict[str, Any]]:
    """Time ``loss_fn`` (which returns a loss) forward only, its backward alone, and both.

    Returns {mode: {"ms", "ms_p20", "ms_p80", "peak_extra_bytes"}}.
    """
    out: dict[str, dict[str, Any]] = {}
    pending: list[torch.Tensor] = []  # the loss whose backward is timed next

    def forward() -> None:
        with torch.no_grad():
            loss_fn()

    def full() -> None:
        loss_fn().backward()

    for mode in modes:
        if mode == "forward":
            out[mode] = time_ms(forward, device, reset)
            out[mode]["peak_extra_bytes"] = peak_extra_bytes(forward, device, reset)
        elif mode == "backward":
            out[mode] = time_ms(
                lambda: pending.pop().backward(),
                device,
                reset,
                setup=lambda: pending.append(loss_fn()),
            )
            out[mode]["peak_extra_bytes"] = None
        else:
            out[mode] = time_ms(full, device, reset)
            out[mode]["peak_extra_bytes"] = peak_extra_bytes(full, device, reset)
    return out


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``columns``: (key, format spec) pairs; a missing value prints as "-"."""
    head = "| " + " | ".join(key for key, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_result(
    name: str,
    result: dict[str, Any],
    out: Path,
    device: str,
    columns: Sequence[tuple[str, str]] = (),
) -> Path:
    """Tag ``result`` (and each of its ``rows``) with the device, date and torch version,
    write ``out/<name>.json``, and print its rows as a Markdown table with ``columns``."""
    tag = device_name(device)
    result = {
        "benchmark": name,
        "device": tag,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        **result,
    }
    for row in result.get("rows", []):
        row.setdefault("device", tag)
    if columns and result.get("rows"):
        print()
        print(markdown_table(result["rows"], columns))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    return path
