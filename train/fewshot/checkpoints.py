"""The best checkpoint of each seed so far, kept until the seed's test pass.

Only the grid point a seed chooses (the best dev metric, the earliest on ties) is tested, and
only once every point of the seed is recorded. Until then the checkpoint of the best point
recorded so far is kept: in memory, and, beside a ledger, as a file
``OUT/checkpoints/<unit>.pt`` written (atomically) *before* the unit's ledger line, so that an
evaluation killed at any point, even between a seed's last grid point and its test pass, finds
on ``--resume`` the checkpoint of every recorded best. A checkpoint that is no longer its seed's
best, and every checkpoint of a seed once it is tested, is deleted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from smash.train.fewshot.ledger import UnitKey

__all__ = ["CHECKPOINTS_NAME", "BestCheckpoints"]

CHECKPOINTS_NAME = "checkpoints"


class BestCheckpoints:
    """Checkpoints (CPU state dicts) by unit; ``folder`` None keeps them in memory only."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)
        self._memory: dict[str, dict] = {}

    def keep(self, key: UnitKey, state: dict) -> None:
        """Keep ``key``'s checkpoint (on disk first, when there is a folder)."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(key)
            partial = path.with_suffix(".partial")
            torch.save(state, partial)
            os.replace(partial, path)
        self._memory[key.as_json()] = state

    def load(self, key: UnitKey) -> dict | None:
        """``key``'s checkpoint, from memory or its file; None when it is kept nowhere."""
        state = self._memory.get(key.as_json())
        if state is None and self.folder is not None and self._path(key).is_file():
            state = torch.load(self._path(key), map_location="cpu", weights_only=True)
        return state

    def drop(self, keys: Iterable[UnitKey]) -> None:
        """Forget the checkpoints of ``keys`` (those kept, and a file a kill cut short)."""
        for key in keys:
            self._memory.pop(key.as_json(), None)
            if self.folder is not None:
                self._path(key).unlink(missing_ok=True)
                self._path(key).with_suffix(".partial").unlink(missing_ok=True)

    def _path(self, key: UnitKey) -> Path:
        return self.folder / f"{hashlib.sha256(key.as_json().encode()).hexdigest()[:32]}.pt"
