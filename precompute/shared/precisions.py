"""The precisions a teacher pass or a training run can ask for, by the names the CLIs take."""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS"]

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
