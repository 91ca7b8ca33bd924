"""The benchmarks' ``--quick`` sizes run to the end (their figures are not checked here: speed
and size targets live in ``benchmarks/``, never in a test)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_target_fidelity_quick_runs(tmp_path):
    """``--quick`` with even fewer steps than a logging window, one teacher, four configs (one
    of them M of N draws per epoch): the paired ratios and their intervals come out for every
    config and both controls."""
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_target_fidelity.py"), "--quick", "--steps", "10",
         "--teachers", "peaked", "--configs", "top4,hybrid2x4,fresh-sampled4,hybrid2x4@2",
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "target_fidelity.json").read_text())
    assert result["setup"]["steps"] == 10 and result["setup"]["seeds"] == 2
    assert [r["config"] for r in result["rows"]] == [
        "online", "online, nudged 1e-6", "online, another order", "top4", "hybrid2x4",
        "fresh-sampled4", "hybrid2x4@2"
    ]  # fmt: skip
    assert all(r["ci_low"] <= r["kl_ratio"] <= r["ci_high"] for r in result["rows"])
    assert result["rows"][0]["kl_ratio"] == 1.0  # the reference against itself, paired
    assert len(result["runs"]) == 2 * 7
    assert {"peaked_resolution", "peaked_order_spread", "peaked_heldout_paired_relative_se"} <= (
        result["setup"].keys()
    )
    assert all(r["paired_relative_se"] >= 0 for r in result["runs"])
