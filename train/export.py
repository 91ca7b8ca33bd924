"""Exporting the student as a plain Hugging Face folder for few-shot evaluation.

The folder holds ``save_pretrained``'s weights and config plus the tokenizer, and loads with
``AutoModelForMaskedLM.from_pretrained``. Weights are written in float32 whatever the
training precision (with fp16/bf16 they are the module's half-precision values, upcast).

Folder names: LM-BFF's trainer (the old ``transformers.Trainer``) reads a model path as a
checkpoint to resume when ``int(path.split("-")[-1].split("/")[0])`` succeeds, e.g.
``runs/student-200000`` or ``runs/exp-3/student``, and then restores a global step and an
optimizer that do not exist. ``check_export_path`` refuses such paths before training starts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["check_export_path", "export_student"]


def _looks_like_checkpoint(path: str) -> bool:
    tail = path.split("-")[-1].split("/")[0]
    try:
        int(tail)
    except ValueError:
        return False
    return "-" in path


def check_export_path(path: str | Path) -> None:
    """Raise ValueError if LM-BFF would take ``path`` (as given or absolute) for a checkpoint."""
    for form in {str(path), str(Path(path).absolute())}:
        if _looks_like_checkpoint(form):
            raise ValueError(
                f"export folder {form!r} ends a '-'-separated part in a number, which LM-BFF's "
                "trainer mistakes for a checkpoint to resume; rename it (e.g. 'student_step1000' "
                "instead of 'student-1000', and no '-<number>' folder above it)")


def export_student(model: torch.nn.Module, tokenizer: Any, out: str | Path,
                   info: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` the HF ``model`` (float32) and ``tokenizer`` into ``out``.

    ``info`` (JSON-able) is written beside them as ``smash_training.json``: which stores,
    objective and step produced this student.
    """
    check_export_path(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float() if v.is_floating_point() else v.detach()
             for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict={k: v.cpu() for k, v in state.items()})
    config = copy.deepcopy(model.config)
    config.dtype = torch.float32  # the weights written, not the training precision
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if info is not None:
        (out / "smash_training.json").write_text(json.dumps(info, indent=1) + "\n")
    return out
