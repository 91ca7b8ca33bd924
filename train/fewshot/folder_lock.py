"""One evaluation at a time per output folder.

Two evaluations writing into one ``OUT`` would each take the other's ``points.jsonl`` for
their own: the first unit of one rewrites the file under the other's finished units, and two
``--resume`` runs train the same units twice. So an evaluation holds an exclusive
``flock`` on the folder itself while it reads and writes there, and a second one is refused,
naming the folder. The operating system releases the lock when the holding process ends,
however it ends, so a killed evaluation never leaves the folder locked, and no lock file is
left behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["hold_folder"]


@contextmanager
def hold_folder(flag: str, folder: str | Path) -> Iterator[None]:
    """Hold ``folder`` (made if missing) for this process; ValueError names it when another
    process holds it. The folders this call made are removed again if they are still empty at
    the end (an evaluation refused on bad input leaves nothing behind)."""
    folder = Path(folder)
    made = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    fd = _lock(flag, folder)
    try:
        yield
    finally:
        for f in made:  # removed while still held, so no other evaluation is using it
            try:
                f.rmdir()
            except OSError:  # not empty: the evaluation wrote its files
                break
        os.close(fd)  # releases the lock


def _lock(flag: str, folder: Path) -> int:
    """An open descriptor of ``folder`` holding its lock."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"{flag} {folder}: another evaluation is writing to this folder (it holds its "
                "lock); wait for it to end, or pass another folder"
            ) from None
        if _same(folder, fd):
            return fd
        # the holder before us removed the (empty) folder it had made: take the new one
        os.close(fd)


def _same(folder: Path, fd: int) -> bool:
    try:
        now = folder.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
