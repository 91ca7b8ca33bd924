"""Bounded queues between threads: ``offer`` an item without blocking forever, and run an
iterator in a background thread a bounded number of items ahead of its consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["background", "offer"]

T = TypeVar("T")
_DONE = object()


def offer(q: queue.Queue, item: object, give_up: Callable[[], bool], poll: float = 0.2) -> bool:
    """Put ``item`` into the bounded ``q``, waiting while it is full; False (not put) as soon as
    ``give_up()`` says the other side is gone, so that a dead consumer never blocks us."""
    while not give_up():
        try:
            q.put(item, timeout=poll)
            return True
        except queue.Full:
            continue
    return False


def background(items: Iterable[T], ahead: int = 2) -> Iterator[T]:
    """Yield ``items`` as produced by a daemon thread; its exceptions re-raise here.

    Used to tokenize and batch the next shard while the teacher runs on the current one.
    Closing the generator early stops the thread at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not offer(q, item, stop.is_set):
                    return
            offer(q, _DONE, stop.is_set)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            offer(q, err, stop.is_set)

    thread = threading.Thread(target=produce, daemon=True, name="smash-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
