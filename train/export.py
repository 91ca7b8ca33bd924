"""Exporting the student as a plain Hugging Face folder for few-shot evaluation.

The folder holds ``save_pretrained``'s weights and config plus the tokenizer, and loads with
``AutoModelForMaskedLM.from_pretrained`` (a T5 student: ``AutoModelForSeq2SeqLM``). Weights
are written in float32 whatever the training precision (with fp16/bf16 they are the module's
half-precision values, upcast).

Folder names: LM-BFF's trainer (the old ``transformers.Trainer``) takes a model path for a
checkpoint to resume when ``int(path.split("-")[-1].split("/")[0])`` succeeds, and then skips
that many training steps. An export folder named ``student-1000`` is refused before training
starts; a ``-<number>`` folder *above* it (``runs/exp-3/student``) trips the same parse when
passed as an absolute path, so the trainer warns about it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["check_export_path", "export_student"]


def _lm_bff_step(path: str) -> int | None:
    """The step LM-BFF would read from ``path``, or None."""
    if "-" not in path:
        return None
    tail = path.split("-")[-1].split("/")[0]
    return int(tail) if tail.isdigit() else None


def check_export_path(path: str | Path) -> str | None:
    """Refuse an export folder named ``...-<number>``; return a warning (or None) when a
    folder above it makes the absolute path look like a checkpoint to LM-BFF."""
    name = Path(path).name
    if _lm_bff_step(name) is not None:
        raise ValueError(
            f"export folder name {name!r} ends in '-<number>', which LM-BFF's trainer mistakes "
            "for a checkpoint to resume (it would skip that many steps); use e.g. "
            "'student_step1000'"
        )
    full = str(Path(path).absolute())
    step = _lm_bff_step(full)
    if step is None:
        return None
    return (
        f"note: LM-BFF would read the absolute export path {full} as checkpoint step "
        f"{step} (a '-<number>' folder above it); pass it a path without one"
    )


def export_student(
    model: torch.nn.Module, tokenizer: Any, out: str | Path, info: dict[str, Any] | None = None
) -> Path:
    """``save_pretrained`` the HF ``model`` (float32) and ``tokenizer`` into ``out``.

    ``info`` (JSON-able) is written beside them as ``smash_training.json``: which stores,
    objective and step produced this student.
    """
    check_export_path(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().float() if v.is_floating_point() else v.detach()
        for k, v in model.state_dict().items()
    }
    model.save_pretrained(out, state_dict={k: v.cpu() for k, v in state.items()})
    config = copy.deepcopy(model.config)
    config.dtype = torch.float32  # the weights written, not the training precision
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if info is not None:
        (out / "smash_training.json").write_text(json.dumps(info, indent=1) + "\n")
    return out
