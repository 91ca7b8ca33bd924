"""Correctness of the Triton soft cross-entropy kernels on a GPU, at real shapes.

    python benchmarks/check_kernels_cuda.py [--device cuda|cpu] [--n 512] [--student t5-small]
                                            [--out benchmarks/out]

Runs :func:`smash.kernels.soft_cross_entropy` and :func:`fused_linear_soft_cross_entropy`
with ``impl="triton"`` against the PyTorch reference on the same inputs: every tail mode,
T in {1, 2}, fp32/fp16/bf16 logits, k in {1, 64, 256}, ignored rows, a random upstream
gradient. The cases, the reference calls and the tolerances are the tests' own
(``tests/soft_ce_cases.py``), with Cut Cross-Entropy's rule: against float64 the kernel may err
as much as the same-dtype PyTorch reference does, plus a small noise floor. The vocabulary and
hidden size come from the student's config (``shapes.py``: 50,265 and 768; ``--student
t5-small``: 32,128 and 512). Writes ``check_kernels[_<student>]_<device>.json`` and exits 1 on
any mismatch.

On CPU the same checks run in the Triton interpreter at a small vocabulary (slow).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]


def check_soft_ce(cases, n, vocab, k, tail, temperature, dtype, device, gen) -> dict:
    """Ratios of the worst error to the allowed one (<= 1 passes) for loss and gradient."""
    from smash.kernels.soft_ce import soft_cross_entropy

    ids, lp, tail_logmass = cases.make_teacher(n, vocab, k, gen, full_mass_rows=[0])
    logits = cases.make_logits(n, vocab, dtype, gen)
    logits[1, ::5] = float("nan")  # ignored row: never read
    weights = torch.rand(n, generator=gen) + 0.5
    weights[1] = 0
    upstream = torch.randn(n, generator=gen, dtype=torch.float64)
    ids, lp, tail_logmass, logits, weights, upstream = (
        t.to(device) for t in (ids, lp, tail_logmass, logits, weights, upstream)
    )
    kw = {"tail": tail, "temperature": temperature, "scale_t2": True, "weights": weights,
          "reduction": "none"}  # fmt: skip
    x = logits.clone().requires_grad_()
    rows = soft_cross_entropy(x, ids, lp, tail_logmass=tail_logmass, impl="triton", **kw)
    rows.backward(upstream.float())
    ref_rows, ref_grad = cases.reference_f64(logits, ids, lp, tail_logmass, upstream=upstream, **kw)
    same = cases.reference_in(dtype, logits, ids, lp, tail_logmass, upstream=upstream, **kw)
    grad_tol = cases.GRAD_TOL[dtype]
    if dtype != torch.float16:  # computed in the forward pass, then scaled by the upstream
        grad_tol = cases.rounded_twice(grad_tol)
    return {
        "loss": cases.error_ratio(rows, ref_rows, cases.LOSS_TOL[dtype], same_dtype=same[0]),
        "grad": cases.error_ratio(x.grad, ref_grad, grad_tol, True, same[1]),
    }


def check_fused(cases, n, vocab, hidden, tail, dtype, device, gen) -> dict:
    from smash.kernels.fused_linear_soft_ce import fused_linear_soft_cross_entropy
    from smash.kernels.soft_ce_reference import soft_cross_entropy_reference

    ids, lp, tail_logmass = cases.make_teacher(n, vocab, 64, gen)
    h = torch.randn(n, hidden, generator=gen).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(dtype)
    b = (torch.randn(vocab, generator=gen) * 0.1).to(dtype)
    weights = (torch.rand(n, generator=gen) > 0.1).float()
    ids, lp, tail_logmass, h, w, b, weights = (
        t.to(device) for t in (ids, lp, tail_logmass, h, w, b, weights)
    )
    kw = {"tail_logmass": tail_logmass, "tail": tail, "temperature": 2.0, "weights": weights}
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    loss = fused_linear_soft_cross_entropy(
        *leaves, ids, lp, impl="triton", chunk_size=max(1, n // 3), **kw
    )
    (loss * 2).backward()

    def reference(precision):
        params = [t.detach().to(precision).requires_grad_() for t in (h, w, b)]
        value = soft_cross_entropy_reference(params[0] @ params[1].T + params[2], ids, lp, **kw)
        (value * 2).backward()
        return value.detach(), [p.grad for p in params]

    (ref, ref_grads), (same, same_grads) = reference(torch.float64), reference(dtype)
    tol = cases.FUSED_TOL[dtype]
    out = {"loss": cases.error_ratio(loss, ref, tol, True, same)}
    for name, got, expected, own in zip("hwb", leaves, ref_grads, same_grads, strict=True):
        out[f"grad_{name}"] = cases.error_ratio(got.grad, expected, tol, True, own)
    return out


def main() -> int:
    from shapes import MODELS, STUDENT, T5_MODELS, lm_head_shape

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--n", type=int, help="rows (default 512 on CUDA, 6 on CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--student", default=STUDENT, choices=[*MODELS, *T5_MODELS],
                        help="LM head shape")  # fmt: skip
    args = parser.parse_args()
    device = args.device
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first imported
    import soft_ce_cases as cases
    from harness import write_result
    from smash.kernels.soft_ce_inputs import TAIL_MODES

    student = args.student
    vocab, hidden = lm_head_shape(student) if device == "cuda" else (1003, 48)
    n = args.n or (512 if device == "cuda" else 6)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for tail in TAIL_MODES:
            for temperature in (1.0, 2.0):
                for k in (1, 64, 256) if (dtype, temperature) == (torch.bfloat16, 2.0) else (64,):
                    ratios = check_soft_ce(
                        cases, n, vocab, k, tail, temperature, dtype, device, gen
                    )
                    rows.append({"op": "soft_ce", "dtype": str(dtype), "tail": tail,
                                 "T": temperature, "k": k, **ratios})  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        for tail in TAIL_MODES:
            ratios = check_fused(cases, n, vocab, hidden, tail, dtype, device, gen)
            rows.append({"op": "fused_linear", "dtype": str(dtype), "tail": tail, **ratios})

    failed = []
    for row in rows:
        ratios = [v for key, v in row.items() if key == "loss" or key.startswith("grad")]
        row["worst_ratio"], row["ok"] = max(ratios), max(ratios) <= 1.0
        label = " ".join(str(row[key]) for key in ("op", "dtype", "tail", "T", "k") if key in row)
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {label:45s} worst err/allowed {max(ratios):.3f}")
        if not row["ok"]:
            failed.append(label)
    result = {"n": n, "vocab": vocab, "hidden": hidden, "rows": rows, "failed": failed}
    name = "check_kernels" if student == STUDENT else f"check_kernels_{student}"
    write_result(f"{name}_{device}", result, args.out, device)
    print(f"{len(rows) - len(failed)}/{len(rows)} cases ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
