"""pipeline.overlap: prefetch keeps order, re-raises the producer's ClipError in the consumer, and
leaves no thread behind on early exit (a naive prefetch that does leak is rejected by the same
check); InThread keeps order and re-raises."""

from __future__ import annotations

import queue
import threading
import time
from contextlib import closing

import pytest

from pipeline.errors import ClipError
from pipeline.overlap import InThread, prefetch


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cals-prefetch") and t.is_alive()]


def naive_prefetch(iterable, depth=2):
    """The broken variant: a producer thread with no way to stop (blocks on the full queue)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    threading.Thread(target=lambda: [items.put(x) for x in iterable], name="cals-prefetch-naive", daemon=True).start()
    while True:
        yield items.get()


def leaves_threads_after_early_exit(make) -> bool:
    """Read 3 items of a 1000-item source through ``make(source)``, close it; any producer left?"""
    closed = threading.Event()

    def source():
        try:
            yield from range(1000)
        finally:
            closed.set()

    before = set(producer_threads())
    with closing(make(source())) as items:
        assert [next(items) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.2)
    return bool(set(producer_threads()) - before)


def test_order_and_all_items():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))
    assert list(prefetch([])) == []


def test_producer_error_reraised_in_consumer_at_its_place():
    def frames():
        yield 1
        yield 2
        raise ClipError("decode_error", "ffmpeg says no")

    got, before = [], set(producer_threads())
    with pytest.raises(ClipError) as raised:
        for item in prefetch(frames()):
            got.append(item)
    assert got == [1, 2] and raised.value.reason == "decode_error"
    assert not set(producer_threads()) - before


def test_no_thread_left_on_early_exit_and_the_source_is_closed():
    assert not leaves_threads_after_early_exit(prefetch)
    assert leaves_threads_after_early_exit(naive_prefetch)  # the check catches a leaking prefetch


def test_consumer_exception_stops_the_producer():
    before = set(producer_threads())
    with pytest.raises(RuntimeError):
        for item in prefetch(iter(range(10**6))):
            if item == 5:
                raise RuntimeError("detector failed")
    assert not set(producer_threads()) - before


def test_in_thread_keeps_order_bounds_pending_and_reraises():
    with InThread(lambda x: x * x, depth=2) as jobs:
        for x in range(50):
            jobs.submit(x)
            assert len(jobs._pending) <= 2
        assert jobs.results() == [x * x for x in range(50)]

    def encode(x):
        if x == 3:
            raise ValueError("bad crop")
        return x

    with pytest.raises(ValueError, match="bad crop"), InThread(encode, depth=2) as jobs:
        for x in range(10):
            jobs.submit(x)
        jobs.results()
    assert not [t for t in threading.enumerate() if t.name.startswith("cals-inthread")]
