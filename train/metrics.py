"""Run metrics: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard.

Only rank 0 writes. Lines are appended, so a resumed run continues the same file (its lines
carry the step, so repeated steps after a crash are visible as such). TensorBoard is used
when ``torch.utils.tensorboard`` can be imported (the ``logging`` extra); otherwise the logger
says once that it writes JSONL only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_metrics"]


class MetricsLogger:
    """``log(step, **values)`` appends a JSONL record and TensorBoard scalars (rank 0)."""

    def __init__(self, directory: str | Path, *, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(directory) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print(
                "metrics: TensorBoard is not installed (pip install 'smash-distill[logging]');"
                f" writing {self.path} only"
            )
        else:
            self._tb = SummaryWriter(str(Path(directory) / "tensorboard"))

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(directory: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``, in order."""
    path = Path(directory) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
