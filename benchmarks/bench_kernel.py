"""Soft cross-entropy kernel benchmark: time and memory of loss + gradient.

    python benchmarks/bench_kernel.py [--device cuda|cpu] [--n 128 2048 16384] [--k 64]
                                      [--tail bucket] [--student t5-small] [--out benchmarks/out]

Shapes come from the student's published config (``shapes.py``: DistilRoBERTa-base, vocab
50,265, hidden 768; ``--student t5-small``: 32,128 and 512): N mask rows × V logits, k = 64
teacher entries, bf16 on GPU.

Every row is timed on the shared harness (``harness.py``: median and 20/80% quantiles,
``triton.testing.do_bench`` on CUDA) and, on CUDA, its peak extra memory measured
(``max_memory_allocated`` above what was allocated before the call). The reference and the
Triton kernel are also split into forward, backward and full (loss + gradient) rows:

* soft-CE on given logits: the PyTorch reference (eager and ``torch.compile``), the Triton
  kernel (loss + gradient computed in the forward or recomputed in backward, each with an
  upstream gradient of 1 and of 0.5; forward only), Liger-Kernel's hard-label
  cross-entropy as a speed anchor where installed;
* LM head + soft-CE: ``linear`` then the Triton kernel, the fused-linear variant, the
  three bare matmuls, and Liger's fused-linear / Cut Cross-Entropy (hard labels) where
  installed;
* a small sweep of the kernel's block size and warps at the largest N.

It prints the issue's targets at the largest N: Triton time over the bandwidth floor
(read the logits once, write the gradient once: ``2·N·V·bytes``, at the card's nominal
bandwidth and at its measured copy bandwidth), speed-up over eager, memory beyond the
gradient in units of N·k·4 bytes, fused-linear time over matmul + kernel, and the
fused-linear peak-memory reduction.

On CPU only the reference paths run (fp32, smaller N), timed with a wall clock.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from smash.kernels.fused_linear_soft_ce import fused_linear_soft_cross_entropy
from smash.kernels.soft_ce import soft_cross_entropy
from smash.kernels.soft_ce_inputs import TAIL_MODES
from smash.kernels.soft_ce_reference import soft_cross_entropy_reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import device_name, measure_modes, peak_extra_bytes, time_ms, write_result
from shapes import MODELS, STUDENT, T5_MODELS, lm_head_shape

# Nominal DRAM bandwidth (GB/s) by device-name fragment, when the properties lack it.
NOMINAL_GBPS = {
    "H200": 4800,
    "H100 SXM": 3350,
    "H100 80GB HBM3": 3350,
    "H100 PCIe": 2000,
    "H100": 3350,
    "A100-SXM4-80GB": 2039,
    "A100": 1555,
    "L40S": 864,
    "L4": 300,
}
SWEEP = [(2048, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16)]


def make_inputs(n: int, vocab: int, hidden: int, k: int, dtype, device, seed: int = 0) -> dict:
    """Student logits / hidden / LM head, and a teacher top-k built 2048 rows at a time."""
    gen = torch.Generator(device=device).manual_seed(seed)
    ids, lps, tail_logmass = [], [], []
    for start in range(0, n, 2048):
        rows = min(2048, n - start)
        full = torch.randn(rows, vocab, generator=gen, device=device) * 2.5
        full = torch.log_softmax(full, dim=-1)
        lp, idx = full.topk(k, dim=-1)
        ids.append(idx)
        lps.append(lp.half())
        tail_logmass.append(torch.log1p(-lp.exp().sum(-1).clamp_max(1 - 1e-7)))
        del full
    return {
        "logits": (torch.randn(n, vocab, generator=gen, device=device) * 3).to(dtype),
        "ids": torch.cat(ids),
        "lp": torch.cat(lps),
        "tail_logmass": torch.cat(tail_logmass),
        "hidden": torch.randn(n, hidden, generator=gen, device=device).to(dtype),
        "weight": (torch.randn(vocab, hidden, generator=gen, device=device) / hidden**0.5).to(
            dtype
        ),
        "bias": torch.zeros(vocab, device=device, dtype=dtype),
    }


def bandwidth_gbps(device: str) -> dict:
    """Nominal bandwidth (device properties, else a name table) and measured copy bandwidth."""
    if device != "cuda":
        return {"nominal": None, "copy": None}
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    nominal = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None
    if nominal is None:
        nominal = next((v for key, v in NOMINAL_GBPS.items() if key in props.name), None)
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)["ms"]
    return {"nominal": nominal, "copy": 2 * src.numel() / (ms * 1e-3) / 1e9}


def soft_ce_cases(x: dict, tail: str, device: str, compile_ref: bool) -> dict[str, Callable]:
    """Per implementation, a function that returns the loss on the given logits."""
    logits = x["logits"].requires_grad_()
    kw = {"tail_logmass": x["tail_logmass"], "tail": tail, "check_ids": False}

    def ours(impl: str, upstream: float = 1.0, grad_in_forward: bool = True) -> Callable:
        def loss() -> torch.Tensor:
            value = soft_cross_entropy(
                logits, x["ids"], x["lp"], impl=impl, grad_in_forward=grad_in_forward, **kw
            )
            return value * upstream if upstream != 1.0 else value

        return loss

    cases = {"torch": ours("torch")}
    if compile_ref:
        compiled = torch.compile(soft_cross_entropy_reference)
        cases["torch.compile"] = lambda: compiled(logits, x["ids"], x["lp"], **kw)
    if device == "cuda":
        cases["triton"] = ours("triton")
        # the two gradient strategies (soft_ce_triton's docstring), upstream 1 and not 1
        cases["triton, upstream 0.5"] = ours("triton", upstream=0.5)
        cases["triton recompute-in-bwd"] = ours("triton", grad_in_forward=False)
        cases["triton recompute-in-bwd, upstream 0.5"] = ours(
            "triton", upstream=0.5, grad_in_forward=False
        )
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss

            liger, labels = LigerCrossEntropyLoss(), x["ids"][:, 0]
            own = x["logits"].detach().clone().requires_grad_()  # Liger writes its grad in place
            cases["liger hard CE (anchor)"] = lambda: liger(own, labels)
        except ImportError:
            pass
    return cases


def linear_cases(x: dict, tail: str, device: str) -> dict[str, Callable]:
    """LM head + loss with gradients for hidden, weight and bias: functions returning the loss
    (the bare matmuls return None: they are timed whole)."""
    h, w, b = (x[key].requires_grad_() for key in ("hidden", "weight", "bias"))
    impl = "triton" if device == "cuda" else "torch"
    kw = {"tail_logmass": x["tail_logmass"], "tail": tail, "check_ids": False, "impl": impl}

    def unfused() -> torch.Tensor:
        logits = torch.nn.functional.linear(h, w, b)
        return soft_cross_entropy(logits, x["ids"], x["lp"], **kw)

    cases = {
        f"linear + {impl}": unfused,
        f"fused linear ({impl})": lambda: fused_linear_soft_cross_entropy(
            h, w, b, x["ids"], x["lp"], **kw
        ),
    }
    if device == "cuda":
        labels = x["ids"][:, 0]
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
            cases["liger fused linear hard CE (anchor)"] = lambda: liger(w, h, labels, b)
        except ImportError:
            pass
        try:
            from cut_cross_entropy import linear_cross_entropy

            cases["cut cross-entropy hard (anchor)"] = lambda: linear_cross_entropy(
                h, w, labels, bias=b
            )
        except ImportError:
            pass
    return cases


SPLIT = ("torch", "triton")  # implementations also timed forward and backward alone


def run_group(group: str, cases: dict, n: int, x: dict, device: str) -> list[dict]:
    """One row per implementation and mode (``full`` = loss + gradient, for every one)."""
    reset = [x[key] for key in ("logits", "hidden", "weight", "bias")]
    rows = []
    for name, loss_fn in cases.items():
        modes = ("forward", "backward", "full") if name in SPLIT else ("full",)
        try:
            measured = measure_modes(loss_fn, device, reset, modes)
        except Exception as exc:  # noqa: BLE001 (a failing baseline, e.g. OOM, is reported)
            measured = {"full": {"error": f"{type(exc).__name__}: {exc}"[:300]}}
        for mode, values in measured.items():
            row = {"group": group, "n": n, "impl": name, "mode": mode, **values}
            rows.append(row)
            timing = f"{row['ms']:9.3f} ms" if "ms" in row else row["error"]
            print(f"  {group:8s} N={n:6d} {name:38s} {mode:8s} {timing}", flush=True)
    if device == "cuda" and group == "linear":  # the three matmuls alone, the fused floor
        g, hd, wd = x["logits"].detach(), x["hidden"].detach(), x["weight"].detach()
        row = {"group": group, "n": n, "impl": "3 matmuls only", "mode": "full"}
        row.update(time_ms(lambda: (hd @ wd.T, g @ wd, g.T @ hd), device))
        row["peak_extra_bytes"] = peak_extra_bytes(lambda: (hd @ wd.T, g @ wd, g.T @ hd), device)
        rows.append(row)
    return rows


def sweep(x: dict, tail: str) -> list[dict]:
    """Block size / warps of the Triton kernel at one shape (loss + gradient, launcher only)."""
    from smash.kernels.soft_ce_inputs import check_inputs
    from smash.kernels.soft_ce_triton import soft_ce_fwd_triton

    logits = x["logits"].detach()
    inputs = check_inputs(
        logits.shape[:-1],
        logits.shape[-1],
        logits.device,
        x["ids"],
        x["lp"],
        tail_logmass=x["tail"],
        tail=tail,
        temperature=1.0,
        scale_t2=False,
        weights=None,
        reduction="sum",
        check_ids=False,
    )
    scale, grad = torch.ones((), device="cuda"), torch.empty_like(logits)
    rows = []
    for block_v, warps in SWEEP:
        ms = time_ms(
            lambda b=block_v, w=warps: soft_ce_fwd_triton(
                logits, inputs, grad_scale=scale, grad_out=grad, block_v=b, num_warps=w
            ),
            "cuda",
        )["ms"]
        rows.append({"block_v": block_v, "num_warps": warps, "ms": ms})
        print(f"  sweep BLOCK_V={block_v:5d} warps={warps:2d} {ms:9.3f} ms", flush=True)
    return rows


def targets(rows: list[dict], n: int, vocab: int, k: int, elem: int, bw: dict) -> dict:
    """The issue's targets at N = n, from the measured rows."""

    def get(impl: str, key: str = "ms"):
        return next(
            (r.get(key) for r in rows if r["n"] == n and r["impl"] == impl and r["mode"] == "full"),
            None,
        )

    out: dict = {"n": n}
    t_triton, t_eager = get("triton"), get("torch")
    floor_bytes = 2 * n * vocab * elem
    for kind in ("nominal", "copy"):
        if bw[kind] and t_triton:
            floor_ms = floor_bytes / (bw[kind] * 1e9) * 1e3
            out[f"floor_ms_{kind}_bw"] = floor_ms
            out[f"triton_over_floor_{kind}_bw (target <= 1.25)"] = t_triton / floor_ms
    t_recompute = get("triton recompute-in-bwd")
    if t_triton and t_recompute:
        out["recompute_over_grad_in_fwd, upstream 1"] = t_recompute / t_triton
    t_fwd_half, t_rec_half = (
        get("triton, upstream 0.5"),
        get("triton recompute-in-bwd, upstream 0.5"),
    )
    if t_fwd_half and t_rec_half:
        out["recompute_over_grad_in_fwd, upstream 0.5"] = t_rec_half / t_fwd_half
    if t_triton and t_eager:
        out["eager_over_triton (target >= 3)"] = t_eager / t_triton
    peak = get("triton", "peak_extra_bytes")
    if peak is not None:
        out["triton_bytes_beyond_grad_per_N_k_4B (O(N*k))"] = (peak - n * vocab * elem) / (
            n * k * 4
        )
    t_fused, t_mm = get("fused linear (triton)"), get("3 matmuls only")
    if t_fused and t_mm and t_triton:
        out["fused_over_matmul_plus_kernel (target <= 1.15)"] = t_fused / (t_mm + t_triton)
    p_unfused, p_fused = (
        get("linear + triton", "peak_extra_bytes"),
        get("fused linear (triton)", "peak_extra_bytes"),
    )
    if p_unfused and p_fused:
        out["unfused_over_fused_peak_memory (target >= 10)"] = p_unfused / p_fused
    return out


COLUMNS = [("group", "s"), ("n", "d"), ("impl", "s"), ("mode", "s"), ("ms", ".3f"),
           ("ms_p20", ".3f"), ("ms_p80", ".3f"), ("peak_extra_bytes", ",d")]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--n", type=int, nargs="+", help="rows (default GPU 128 2048 16384, CPU 128 1024)"
    )
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--tail", default="bucket", choices=TAIL_MODES)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (GPU)")
    parser.add_argument(
        "--student", default=STUDENT, choices=[*MODELS, *T5_MODELS], help="LM head shape"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()

    device = args.device
    vocab, hidden = lm_head_shape(args.student)  # DistilRoBERTa-base: vocab 50,265, hidden 768
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    ns = args.n or ([128, 2048, 16384] if device == "cuda" else [128, 1024])
    bw = bandwidth_gbps(device)
    print(f"{device_name(device)}: nominal {bw['nominal']} GB/s, copy {bw['copy']} GB/s")

    rows: list[dict] = []
    swept: list[dict] = []
    for n in ns:
        x = make_inputs(n, vocab, hidden, args.k, dtype, device)
        compile_ref = device == "cuda" and not args.no_compile
        rows += run_group("soft-CE", soft_ce_cases(x, args.tail, device, compile_ref), n, x, device)
        rows += run_group("linear", linear_cases(x, args.tail, device), n, x, device)
        if device == "cuda" and n == max(ns):
            swept = sweep(x, args.tail)
        del x
        if device == "cuda":
            torch.cuda.empty_cache()

    elem = torch.finfo(dtype).bits // 8
    result = {
        "model": args.student,
        "vocab": vocab,
        "hidden": hidden,
        "k": args.k,
        "dtype": str(dtype),
        "tail": args.tail,
        "bandwidth_gbps": bw,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "rows": rows,
        "sweep": swept,
        "targets": targets(rows, max(ns), vocab, args.k, elem, bw),
    }
    print(f"\nV={vocab}, H={hidden} ({args.student}), k={args.k}, {dtype}, tail={args.tail}")
    name = "bench_kernel" if args.student == STUDENT else f"bench_kernel_{args.student}"
    write_result(f"{name}_{device}", result, args.out, device, COLUMNS)
    for key, value in result["targets"].items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")


if __name__ == "__main__":
    main()
