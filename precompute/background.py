"""Run an iterator in a background thread, a bounded number of items ahead of its consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["background"]

T = TypeVar("T")
_DONE = object()


def background(items: Iterable[T], ahead: int = 2) -> Iterator[T]:
    """Yield ``items`` as produced by a daemon thread; its exceptions re-raise here.

    Used to tokenize and batch the next shard while the teacher runs on the current one.
    Closing the generator early stops the thread at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put ``item`` unless the consumer has gone; False once it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            offer(err)

    thread = threading.Thread(target=produce, daemon=True, name="smash-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
