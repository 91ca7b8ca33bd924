"""Checkpoints that resume exactly: DeepSpeed's state plus each rank's stream and RNG states.

Layout under ``<output_dir>/checkpoints``::

    step<N>/                    one DeepSpeed tag: weights, optimizer, scheduler (DeepSpeed's files)
    step<N>/rank<r>.pt          this rank's data-loader state (per worker) and RNG states
    latest                      DeepSpeed's pointer to the newest complete tag

DeepSpeed writes its client state from one rank only, but every rank reads its own share of
the stores, so the stream position is saved per rank, *before* DeepSpeed moves ``latest``:
a checkpoint that ``latest`` names is complete.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from deepspeed.runtime.engine import DeepSpeedEngine

__all__ = [
    "checkpoint_tags",
    "latest_tag",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_tags(directory: Path) -> list[str]:
    """Tags under ``directory``, oldest first."""
    tags = [p.name for p in directory.glob("step*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(tags, key=lambda t: int(t[4:]))


def latest_tag(directory: Path) -> str | None:
    pointer = directory / "latest"
    return pointer.read_text().strip() if pointer.exists() else None


def save_checkpoint(
    engine: DeepSpeedEngine,
    directory: Path,
    step: int,
    loader_state: dict[str, Any],
    extra: dict[str, Any],
    keep: int,
) -> Path:
    """Save step ``step`` on every rank (a collective call); keep the newest ``keep`` tags."""
    rank = torch.distributed.get_rank()
    tag = f"step{step}"
    (directory / tag).mkdir(parents=True, exist_ok=True)
    torch.save(
        {"loader": loader_state, "rng": rng_state(), **extra}, directory / tag / f"rank{rank}.pt"
    )
    torch.distributed.barrier()
    engine.save_checkpoint(str(directory), tag=tag, client_state={"step": step})
    if rank == 0:
        for old in checkpoint_tags(directory)[:-keep]:
            shutil.rmtree(directory / old, ignore_errors=True)
    torch.distributed.barrier()
    return directory / tag


def load_checkpoint(engine: DeepSpeedEngine, directory: Path) -> tuple[int, dict[str, Any]]:
    """Load the newest checkpoint into ``engine``; returns (step, this rank's saved state).

    The RNG states are *not* restored here: the caller restores them last, after everything
    else that might draw random numbers during set-up.
    """
    tag = latest_tag(directory)
    if tag is None:
        raise FileNotFoundError(f"{directory}: no checkpoint to resume from (no 'latest' file)")
    rank = torch.distributed.get_rank()
    mine = directory / tag / f"rank{rank}.pt"
    if not mine.exists():
        raise FileNotFoundError(
            f"{mine}: this rank's stream state is missing; resume with "
            "the number of ranks the checkpoint was written with"
        )
    path, client = engine.load_checkpoint(str(directory), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {directory / tag}")
    return int(client["step"]), torch.load(mine, weights_only=False)
