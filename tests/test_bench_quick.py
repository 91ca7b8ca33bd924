"""The benchmarks' ``--quick`` sizes run to the end (their figures are not checked here: speed
and size targets live in ``benchmarks/``, never in a test)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_target_fidelity_quick_runs_even_shorter_than_a_logging_window(tmp_path):
    """``--steps 10`` used to end in ``StatisticsError`` (no timing window after the first)."""
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_target_fidelity.py"), "--quick", "--steps", "10",
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "target_fidelity.json").read_text())
    assert result["setup"]["steps"] == 10 and result["setup"]["seeds"] == 1
    assert [r["config"] for r in result["rows"]] == [
        "online", "top-4 bucket", "top-64 bucket", "sampled N=12"
    ]  # fmt: skip
