"""One teacher pass at a time per output folder: a lock held for the whole run.

Two runs into one ``--out`` would both pass the output check before either writes a manifest,
then overwrite each other's shards. So the run's first process takes an exclusive
``fcntl.flock`` on ``OUT/.precompute.lock`` before it looks at the folder and holds it until
the run ends; a second run is refused, naming the folder and the holder's pid and host (which
the holder writes into the file). The OS releases a flock when its process dies, however it
dies, so a killed run leaves no stale lock: the next run simply takes it.

Under ``torchrun`` only rank 0 takes the lock: the other ranks of the run write only after a
barrier that rank 0 reaches holding it (``cli.py``), so ranks of one run never refuse each
other, and a second run's rank 0 is refused before any of its ranks writes.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputInUse", "output_lock"]

LOCK_NAME = ".precompute.lock"


class OutputInUse(ValueError):
    """Another run holds the output folder."""


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (an existing folder) while the block runs; raises OutputInUse when
    another process holds it. The lock file is removed on the way out."""
    path = out / LOCK_NAME
    fd = _acquire(out, path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: see _acquire
        os.close(fd)


def _acquire(out: Path, path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid not yet known"
            os.close(fd)
            raise OutputInUse(
                f"{out} is in use by another precompute-teacher run ({holder}); wait for it "
                f"to end or choose another --out"
            ) from None
        # A run that ends removes the file, then releases its lock: a lock taken in between
        # is on a file that no longer has the name; try again with the one that has it.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd
