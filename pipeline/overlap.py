"""Overlap within one worker: run a producer (decode, JPEG encode) in a background thread while
the caller consumes (detect, track), so native code that releases the GIL keeps a core busy.

:func:`prefetch` (a producer ahead of its consumer) and :class:`InThread` (a function applied
behind the caller, results in order) are the two primitives. ``prefetch(iterable, depth)`` yields what ``iterable``
yields, in order, computed up to ``depth`` items ahead in a thread. An exception raised in the
thread (a ClipError from the decoder) is raised again in the consumer, unchanged, at the point
in the sequence where it happened. Closing the generator early (``break``, an exception in the
consumer, ``contextlib.closing``) stops the thread and closes the source iterator: no thread
outlives the generator.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Items decoded ahead of the consumer (frames: a few of them, so memory stays a few frames).
PREFETCH_DEPTH = 4

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(iterable: Iterable[T], depth: int = PREFETCH_DEPTH) -> Iterator[T]:
    """Yield the items of ``iterable`` in order, produced up to ``depth`` ahead in a daemon thread.

    Re-raises the producer's exception in the consumer; on early close the producer stops (after
    at most the item it is computing) and ``iterable``'s own ``close()`` runs in its thread.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(iterable)
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_Failure(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="cals-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class InThread:
    """``fn`` applied to submitted items in one background thread, results kept in order, at
    most ``depth`` items pending (so a slow ``fn`` holds back the caller instead of memory).

    ``with InThread(encode) as jobs: jobs.submit(crop) ...; results = jobs.results()``; an
    exception raised by ``fn`` is raised again by :meth:`submit` or :meth:`results`. Leaving the
    ``with`` block waits for the thread (no thread outlives it).
    """

    def __init__(self, fn: Callable[[T], R], depth: int = PREFETCH_DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._fn, self._depth = fn, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cals-inthread")
        self._pending: deque[Future] = deque()
        self._done: list[R] = []

    def submit(self, item: T) -> None:
        """Queue ``fn(item)``; waits for the oldest pending result while ``depth`` are pending."""
        while len(self._pending) >= self._depth:
            self._done.append(self._pending.popleft().result())
        self._pending.append(self._pool.submit(self._fn, item))

    def results(self) -> list[R]:
        """Every result so far, in submission order (waits for the pending ones)."""
        while self._pending:
            self._done.append(self._pending.popleft().result())
        return self._done

    def __enter__(self) -> "InThread":
        return self

    def __exit__(self, *exc) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
