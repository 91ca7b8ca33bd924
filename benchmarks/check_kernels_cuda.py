"""Correctness of the Triton soft cross-entropy kernels on a GPU, at real shapes.

    python benchmarks/check_kernels_cuda.py [--device cuda|cpu] [--n 1024] [--out benchmarks/out]

Runs :func:`smash.kernels.soft_cross_entropy` and :func:`fused_linear_soft_cross_entropy`
with ``impl="triton"`` against the PyTorch reference in float64 on the same inputs: every
tail mode, T in {1, 2}, fp32/fp16/bf16 logits, k in {1, 64, 256}, ignored rows, a random
upstream gradient. The vocabulary and hidden size come from the RoBERTa config (50,265 and
768). Writes ``check_kernels_<device>.json`` and exits 1 on any mismatch.

On CPU the same checks run in the Triton interpreter at a small vocabulary (slow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

# dtype -> (atol, rtol) against float64. Losses accumulate in fp32 on both sides; the
# gradient is rounded to the logits' dtype, so its atol is relative to max |gradient|.
LOSS_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-5, 1e-5), torch.bfloat16: (1e-5, 1e-5)}
GRAD_TOL = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}
# fused linear: the matmuls run in the input dtype, so tolerances are those of a matmul.
LINEAR_TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (3e-2, 5e-2)}


def teacher(n: int, vocab: int, k: int, gen: torch.Generator, device: str):
    full = torch.log_softmax(torch.randn(n, vocab, generator=gen, device=device) * 2.5, -1)
    lp, ids = full.topk(k, dim=-1)
    perm = torch.rand(n, k, generator=gen, device=device).argsort(-1)  # any order
    ids, lp = ids.gather(1, perm), lp.gather(1, perm)
    tail = torch.log1p(-lp.double().exp().sum(-1)).float()
    lp, tail = lp.clone(), tail.clone()
    lp[0] = torch.log_softmax(lp[0], -1)  # row 0: the top-k holds all the mass
    tail[0] = -float("inf")
    return ids, lp.half(), tail


def max_violation(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> dict:
    """Largest |error| and its ratio to the allowed ``atol + rtol |expected|`` (pass if <= 1)."""
    err = (got.double() - expected.double()).abs()
    allowed = atol + rtol * expected.double().abs()
    finite = bool(torch.isfinite(got).all())
    ratio = float((err / allowed).max()) if finite else float("inf")
    return {"max_abs_err": float(err.max()) if finite else None, "worst_ratio": ratio}


def check_soft_ce(n, vocab, k, tail, temperature, dtype, device, gen, soft_ce, reference):
    ids, lp, tail_mass = teacher(n, vocab, k, gen, device)
    logits = (torch.randn(n, vocab, generator=gen, device=device) * 3 + 2).to(dtype)
    logits[1, ::5] = float("nan")  # ignored row: never read
    weights = torch.rand(n, generator=gen, device=device) + 0.5
    weights[1] = 0
    upstream = torch.randn(n, generator=gen, device=device, dtype=torch.float64)
    kw = {"tail_logmass": tail_mass, "tail": tail, "temperature": temperature,
          "scale_t2": True, "weights": weights, "reduction": "none"}  # fmt: skip

    x = logits.clone().requires_grad_()
    rows = soft_ce(x, ids, lp, impl="triton", **kw)
    rows.backward(upstream.float())
    x64 = logits.double().requires_grad_()
    ref = reference(x64, ids, lp, **kw)
    ref.backward(upstream)
    grad_atol, grad_rtol = GRAD_TOL[dtype]
    return {
        "loss": max_violation(rows, ref, *LOSS_TOL[dtype]),
        "grad": max_violation(x.grad, x64.grad, grad_atol * float(x64.grad.abs().max()), grad_rtol),
    }


def check_fused(n, vocab, hidden, tail, dtype, device, gen, fused, reference):
    ids, lp, tail_mass = teacher(n, vocab, 64, gen, device)
    h = torch.randn(n, hidden, generator=gen, device=device).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen, device=device) / hidden**0.5).to(dtype)
    b = (torch.randn(vocab, generator=gen, device=device) * 0.1).to(dtype)
    weights = (torch.rand(n, generator=gen, device=device) > 0.1).float()
    kw = {"tail_logmass": tail_mass, "tail": tail, "temperature": 2.0, "weights": weights}
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    loss = fused(*leaves, ids, lp, impl="triton", chunk_size=max(1, n // 3), **kw)
    (loss * 2).backward()
    ref_leaves = [t.double().requires_grad_() for t in (h, w, b)]
    ref = reference(ref_leaves[0] @ ref_leaves[1].T + ref_leaves[2], ids, lp, **kw)
    (ref * 2).backward()
    atol, rtol = LINEAR_TOL[dtype]
    out = {"loss": max_violation(loss, ref, atol * float(ref.abs()), rtol)}
    for name, got, exp in zip(("hidden", "weight", "bias"), leaves, ref_leaves, strict=True):
        out[f"grad_{name}"] = max_violation(
            got.grad, exp.grad, atol * float(exp.grad.abs().max()), rtol
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--n", type=int, help="rows (default 1024 on CUDA, 6 on CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    device = args.device
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first imported
    from smash.kernels import (
        fused_linear_soft_cross_entropy,
        soft_cross_entropy,
        soft_cross_entropy_reference,
    )
    from transformers import RobertaConfig

    config = RobertaConfig()
    vocab, hidden = (config.vocab_size, config.hidden_size) if device == "cuda" else (1003, 48)
    n = args.n or (1024 if device == "cuda" else 6)
    gen = torch.Generator(device=device).manual_seed(0)
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for tail in ("renorm", "bucket", "uniform"):
            for temperature in (1.0, 2.0):
                for k in (1, 64, 256) if (dtype, temperature) == (torch.bfloat16, 2.0) else (64,):
                    result = check_soft_ce(n, vocab, k, tail, temperature, dtype, device, gen,
                                           soft_cross_entropy, soft_cross_entropy_reference)  # fmt: skip
                    cases.append({"op": "soft_ce", "dtype": str(dtype), "tail": tail,
                                  "T": temperature, "k": k, **result})  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        for tail in ("renorm", "bucket", "uniform"):
            result = check_fused(n, vocab, hidden, tail, dtype, device, gen,
                                 fused_linear_soft_cross_entropy, soft_cross_entropy_reference)  # fmt: skip
            cases.append({"op": "fused_linear", "dtype": str(dtype), "tail": tail, **result})

    failed = []
    for case in cases:
        checks = {key: v for key, v in case.items() if isinstance(v, dict)}
        case["ok"] = all(v["worst_ratio"] <= 1.0 for v in checks.values())
        worst = max(v["worst_ratio"] for v in checks.values())
        label = " ".join(str(case[key]) for key in ("op", "dtype", "tail", "T", "k") if key in case)
        print(f"{'ok  ' if case['ok'] else 'FAIL'} {label:45s} worst err/allowed {worst:.3f}")
        if not case["ok"]:
            failed.append(label)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (Triton interpreter)"
    report = {"device": name, "torch": torch.__version__, "n": n, "vocab": vocab,
              "hidden": hidden, "cases": cases, "failed": failed}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"check_kernels_{device}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"{len(cases) - len(failed)}/{len(cases)} cases ok; wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
