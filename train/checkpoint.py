"""Checkpoints that resume exactly: DeepSpeed's state plus each rank's stream and RNG states.

Layout under ``<output_dir>/checkpoints``::

    step<N>/                    one DeepSpeed tag: weights, optimizer, scheduler (DeepSpeed's files)
    step<N>/rank<r>.pt          this rank's data-loader state (per worker) and RNG states
    step<N>/complete            written once every rank's files of step N are on disk
    latest                      DeepSpeed's pointer to its newest tag (for DeepSpeed's tools)

A resumed run takes the newest ``step<N>/`` holding ``complete``, with as many ranks as wrote
it. DeepSpeed writes ``latest``
non-atomically (a kill can leave it empty or cut short) and before the other ranks are done, so
it is only read for checkpoints written before ``complete`` existed. A checkpoint that cannot be
written (a full disk) is removed and reported as a ``CheckpointError`` naming its path; the one
before it stays the newest.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from deepspeed.runtime.engine import DeepSpeedEngine

__all__ = [
    "CheckpointError",
    "checkpoint_tags",
    "load_engine_state",
    "load_rank_state",
    "resume_tag",
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


class CheckpointError(OSError):
    """A checkpoint could not be written; the message says why and what is still there."""


COMPLETE = "complete"


def checkpoint_tags(directory: Path) -> list[str]:
    """Tags under ``directory``, oldest first."""
    tags = [p.name for p in directory.glob("step*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(tags, key=lambda t: int(t[4:]))


def resume_tag(directory: Path) -> str | None:
    """The newest complete checkpoint's tag, or None (see the module doc)."""
    tags = checkpoint_tags(directory)
    complete = [t for t in tags if (directory / t / COMPLETE).exists()]
    if complete:
        return complete[-1]
    pointer = directory / "latest"  # checkpoints written before the ``complete`` marker
    named = pointer.read_text().strip() if pointer.exists() else ""
    return named if named in tags else None


def _no_space(directory: Path) -> bool:
    """Whether writing into ``directory`` fails for want of space (torch's writer drops the
    errno, so a small probe asks the file system)."""
    probe = directory / f".space-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        probe.unlink(missing_ok=True)
    return False


def save_checkpoint(
    engine: DeepSpeedEngine,
    directory: Path,
    step: int,
    loader_state: dict[str, Any],
    keep: int,
) -> Path:
    """Save step ``step`` on every rank (a collective call); keep the newest ``keep`` tags."""
    rank = torch.distributed.get_rank()
    tag = f"step{step}"
    path = directory / tag
    try:
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"loader": loader_state, "rng": rng_state()}, path / f"rank{rank}.pt")
        torch.distributed.barrier()
        engine.save_checkpoint(str(directory), tag=tag, client_state={"step": step})
    except (OSError, RuntimeError) as err:
        full = _no_space(directory)
        shutil.rmtree(path, ignore_errors=True)
        previous = resume_tag(directory)
        kept = (
            f"the newest complete checkpoint is {directory / previous}"
            if previous
            else ("no complete checkpoint is left")
        )
        why = "no space left on device" if full else f"{type(err).__name__}: {err}"
        raise CheckpointError(
            f"{path}: the checkpoint could not be written ({why}); {kept}"
        ) from err
    if rank == 0:
        (path / COMPLETE).touch()
        _prune(directory, step, keep)
    torch.distributed.barrier()
    return path


def _prune(directory: Path, step: int, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints up to ``step``; remove older ones, and any later
    folder (a save of a killed run that this resumed run has gone back behind)."""
    tags = checkpoint_tags(directory)
    stale = [t for t in tags if int(t[4:]) > step]
    older = [t for t in tags if int(t[4:]) <= step]
    for old in stale + older[:-keep]:
        shutil.rmtree(directory / old, ignore_errors=True)


def load_rank_state(directory: Path, tag: str) -> dict[str, Any]:
    """This rank's saved stream and RNG states of checkpoint ``tag``; refused, saying how
    many ranks to use, when the checkpoint was written by another number of ranks."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    saved = sorted(directory.glob(f"{tag}/rank*.pt"))
    if len(saved) != world:
        raise ValueError(
            f"--resume: checkpoint {directory / tag} was written by {len(saved)} ranks and this "
            f"run has {world}; every rank's stream position is saved on its own, so resume "
            f"with {len(saved)} processes"
        )
    return torch.load(directory / tag / f"rank{rank}.pt", weights_only=False)


def load_engine_state(engine: DeepSpeedEngine, directory: Path, tag: str) -> int:
    """Load checkpoint ``tag`` into ``engine``; returns its step. The RNG states are restored
    by the caller, last, after everything else that might draw random numbers."""
    path, client = engine.load_checkpoint(str(directory), tag=tag)
    if path is None:
        raise CheckpointError(f"{directory / tag}: DeepSpeed could not load this checkpoint")
    return int(client["step"])
