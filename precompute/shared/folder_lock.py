"""One run at a time per output folder: a lock the run holds while it writes there.

Two runs into one folder each take the folder for their own: two teacher passes both pass the
output check before either writes a manifest and then overwrite each other's shards; two
evaluations each rewrite the ledger (``points.jsonl``) under the other's finished units, or
train the same units twice. So a run takes an exclusive ``fcntl.flock`` on ``FOLDER/.smash.lock``
(making the folder if needed) before it reads the folder, writes its command, pid and host
into it, and holds it until it ends; a second run is refused, naming the folder and the
holder. The OS releases a flock when its process dies, however it dies, so a killed run leaves
no stale lock: the next run simply takes it. On the way out the lock file is removed, then the
folders this call made if they are still empty (a run refused on bad input leaves nothing
behind), and only then is the lock released.

Under ``torchrun`` only rank 0 of a teacher pass takes the lock (``precompute/cli.py``): the
other ranks write only after a barrier that rank 0 reaches holding it.

``shared=True`` takes the lock shared instead (``LOCK_SH``): runs that each write files of
their own into the folder (``evaluate-fewshot --shard I/N``, each with its own ledger, whose
exclusivity it takes as a second, exclusive lock of another ``name``) hold it together, and
an exclusive run is refused while any of them holds it, and they while it does. The last
shared holder to end removes the lock file as an exclusive one does.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderInUse", "hold_folder"]

LOCK_NAME = ".smash.lock"


class FolderInUse(ValueError):
    """Another run holds the folder."""


@contextmanager
def hold_folder(
    folder: str | Path,
    command: str,
    flag: str = "--out",
    shared: bool = False,
    name: str = LOCK_NAME,
) -> Iterator[None]:
    """Hold ``folder`` (made if missing) for this process while the block runs, as a run of
    ``command``; raises FolderInUse, naming the folder, ``flag`` and the holder, when another
    process holds it (exclusively, or at all when this one wants it exclusively). ``name`` is
    the lock file's."""
    folder = Path(folder)
    made = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    path = folder / name
    fd = _acquire(folder, path, command, flag, shared)
    try:
        yield
    finally:
        if not shared or _alone(fd):
            path.unlink(missing_ok=True)  # before the lock goes: see _acquire
        for f in made:
            try:
                f.rmdir()
            except OSError:  # not empty: the run wrote its files
                break
        os.close(fd)


def _alone(fd: int) -> bool:
    """Whether a shared holder is the only one left (its lock then becomes exclusive)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _acquire(folder: Path, path: Path, command: str, flag: str, shared: bool) -> int:
    """An open descriptor of the lock file, holding its lock."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a run starting"
            os.close(fd)
            raise FolderInUse(
                f"{folder} is in use by another run ({holder}); wait for it to end or choose "
                f"another {flag}"
            ) from None
        # A run that ends removes the file (and maybe the folder), then releases its lock: a
        # lock taken in between is on a file that no longer has the name; take the new one.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    holder = f"{command}, pid {os.getpid()} on {socket.gethostname()}"
    os.ftruncate(fd, 0)  # a shared holder names itself too: the message names the latest
    os.pwrite(fd, f"{holder}\n".encode(), 0)
    return fd
