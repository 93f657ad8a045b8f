"""The one Ray actor pool of the pipeline: prep (:mod:`pipeline.run`) and the shard jobs
(:mod:`pipeline.rewrite_run`: ``cals-prep units``, ``cals-prep sync``) feed their units of work
(one shard each) through :func:`run_pool`. With :mod:`pipeline.ray_session` (the one
``ray.init``), the only module that imports Ray; the only one that defines Ray actors.

- **Workers.** Each ``ShardWorker`` actor calls the caller's :class:`WorkerFactory` once in
  ``__init__`` (it loads the detector or the model) and then the function it returned on unit
  after unit (``__call__``): the "model as a callable class on an actor pool" shape of Ray Data.
  Each reserves 1 CPU and :data:`TASK_MEMORY_BYTES`, plus 1 GPU when ``gpus`` (the pool then
  has one actor per GPU).
- **Dead workers.** An actor whose process died is replaced, and the caller's :data:`Blame` hook
  decides what happens to its unit: prep pins the death on the clip named in the shard's marker
  file and skips that clip once it killed :data:`pipeline.run.CLIP_CRASH_LIMIT` workers;
  :func:`retries` (the shard jobs) tries the unit again up to :data:`TASK_MAX_RETRIES` times.
- **Failures.** A unit Ray gave up on is returned as ``(reason, last line of the error)``,
  reason ``worker_crash`` or ``internal_error`` (:func:`failure`); ``fail_fast`` re-raises.
- **Progress.** Workers report ``(done, failed, frames)`` to a progress actor; the driver shows
  them on a rich progress bar (:class:`Bar`).
- **A second pool fed by the first** (:class:`FollowUp`, ``run_pool(..., then=...)``): as each
  unit of the first pool succeeds, the driver turns it into a unit for a second pool of
  ``ShardWorker`` actors (one model each: one per GPU with ``gpus``, else one on the CPU), so the
  second stage (prep's lip units) works while the first (decoding) goes on. Follow-up actors
  reserve **no CPU**: every CPU is the first pool's, and a reservation would keep them waiting
  until it ends (a deadlock while the driver holds the first pool's actors); the first pool's
  actors are let go as soon as its queue is drained, which frees their memory reservation too.
  A follow-up unit whose worker died is retried (:func:`retries`); one Ray gave up on is recorded
  in ``PoolResult.follow_failures`` and never fails the first pool's units.

Why not Ray Data ``map_batches(Cls, compute=ActorPoolStrategy(size=n))``: a batch that kills its
actor is retried by Ray Data as a whole and, past its retries, fails the dataset; it cannot tell
which clip of the batch killed the process, so one bad clip would sink its whole shard (or the
run). Blaming the clip needs the marker file read between a death and the retry, i.e. a driver
of our own. This one is small: a queue, ``ray.wait``, and one actor per slot.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, TypeVar

from cals.atomic import PUBLISH_LOCK
from cals.errors import is_no_space
from pipeline.ray_session import ray_session

log = logging.getLogger(__name__)

#: Memory Ray reserves per worker, so a node never runs more workers than it can hold
#: (measured peak on a 10-minute 720p clip: see BENCHMARKS.md).
TASK_MEMORY_BYTES = 1_500 * 1024**2
#: Times a unit is tried again after its worker process died (when the death is not pinned on a clip).
TASK_MAX_RETRIES = 2
#: Seconds between a worker's checks that its driver process still lives (same machine only):
#: a worker whose driver was killed exits within this, instead of finishing its shard and more
#: while Ray notices (measured: 1-2 min), so a re-run never overlaps the old job's workers.
DRIVER_POLL_S = 0.5

Unit = TypeVar("Unit")
#: ``report(done, failed, frames)``: a worker's progress (units of the bar, failures, video frames).
Report = Callable[[int, int, int], None]
#: After a worker died on a unit: the unit to try again (possibly changed), or None to give up.
Blame = Callable[[Any], Optional[Any]]


class WorkerFactory(Protocol):
    """Picklable and light (sent to every actor): :meth:`start` loads what the work needs."""

    def start(self, report: Report) -> Callable[[Any], Any]:
        """Load the model/detector once; return the function that does one unit of work."""


@dataclass(frozen=True)
class Bar:
    """The progress bar: ``label`` before it, ``total`` units (``completed`` already done before
    the run), and a frames/s column when ``rate``."""

    label: str
    total: Optional[int]  # None: not known in advance (a follow-up pool's)
    completed: int = 0
    rate: bool = False


@dataclass(frozen=True)
class FollowUp:
    """A second pool fed by the first (module docstring).

    Attributes:
        factory: what each follow-up actor runs (loads its model once, as a :class:`WorkerFactory`).
        bar: its progress bar (a second line under the first pool's).
        next_unit: on the driver, ``(unit, result)`` of a first-pool unit that succeeded → the
            follow-up unit, or None for none.
        gpus: one actor per GPU of the cluster, each reserving 1 GPU; else one actor on the CPU.
        name: a follow-up unit's name (keys of ``PoolResult.followed``).
    """

    factory: WorkerFactory
    bar: Bar
    next_unit: Callable[[Any, Any], Optional[Any]]
    gpus: bool = False
    name: Callable[[Any], str] = str


@dataclass
class PoolResult:
    """What :func:`run_pool` did: unit name → the worker's return value, or → ``(reason, detail)``;
    the same for the follow-up pool's units in ``followed`` / ``follow_failures``."""

    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    followed: dict[str, Any] = field(default_factory=dict)
    follow_failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    ray_start_s: float = 0.0  # ray.init (0 when Ray was already up)
    process_s: float = 0.0  # the pool working through the units, worker start-up included
    #: of process_s: until the first worker was ready (its process started, imports done, the
    #: factory's model loaded) and took its first unit; the rest is the steady state
    worker_start_s: float = 0.0
    first_ready_at: Optional[float] = None  # time.time() when the first worker was ready


def retries(name: Callable[[Any], str] = str, limit: int = TASK_MAX_RETRIES) -> Blame:
    """A :data:`Blame` hook that tries a unit again after each of its first ``limit`` worker deaths."""
    deaths: Counter = Counter()

    def blame(unit: Any) -> Optional[Any]:
        deaths[name(unit)] += 1
        return unit if deaths[name(unit)] <= limit else None

    return blame


def failure(error: Exception) -> tuple[str, str]:
    """``(reason, last non-empty line of the error)`` for a unit Ray gave up on: ``no_space``
    when the worker ran out of disk, ``worker_crash`` when its process died, else ``internal_error``."""
    import ray

    cause = getattr(error, "cause", None)  # a RayTaskError carries the worker's exception
    if is_no_space(error) or (cause is not None and is_no_space(cause)):
        return "no_space", str(cause if cause is not None else error).strip().splitlines()[-1]
    crashed = isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
    lines = [line for line in str(error).splitlines() if line.strip()]
    return ("worker_crash" if crashed else "internal_error", lines[-1] if lines else type(error).__name__)


def run_pool(
    units: Sequence[Unit],
    factory: WorkerFactory,
    bar: Bar,
    *,
    name: Callable[[Unit], str] = str,
    blame: Optional[Blame] = None,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    gpus: bool = False,
    fail_fast: bool = False,
    show_progress: bool = True,
    then: Optional[FollowUp] = None,
) -> PoolResult:
    """Start (or join) Ray and work through ``units`` on a pool of ``workers`` actors (default:
    one per CPU, or per GPU with ``gpus``, of the cluster; never more than units). ``blame``
    defaults to :func:`retries`; ``then`` feeds a second pool as units succeed (module docstring)."""
    result = PoolResult()
    ray_started = time.time()
    with ray_session(workers, address) as ray:
        result.ray_start_s = time.time() - ray_started
        process_started = time.time()
        _feed(ray, units, factory, bar, name, blame or retries(name), workers, gpus, fail_fast, show_progress, result, then)
        result.process_s = time.time() - process_started
        if result.first_ready_at is not None:  # the workers' clock: the same machine's, or a cluster node's (NTP-close)
            result.worker_start_s = min(max(result.first_ready_at - process_started, 0.0), result.process_s)
    return result


@dataclass(frozen=True)
class Driver:
    """The driver process of a pool, as its workers see it: host name, pid and start time (so a
    recycled pid is not taken for it)."""

    host: str
    pid: int
    started: Optional[str]

    @classmethod
    def this(cls) -> "Driver":
        return cls(socket.gethostname(), os.getpid(), _start_time(os.getpid()))

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's (a recycled pid)
            return False
        return _start_time(self.pid) == self.started

    def watch(self) -> None:
        """In a worker on the driver's machine: a daemon thread that ends this process as soon
        as the driver is gone (every :data:`DRIVER_POLL_S`). Workers on other nodes rely on Ray."""
        if socket.gethostname() != self.host:
            return

        def poll() -> None:
            while self.alive():
                time.sleep(DRIVER_POLL_S)
            with PUBLISH_LOCK:  # never in the middle of publishing a shard's files
                os._exit(1)

        threading.Thread(target=poll, name="driver-watchdog", daemon=True).start()


def _start_time(pid: int) -> Optional[str]:
    """A process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None
    where there is no ``/proc`` (then a live pid is taken for the driver)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _actor_classes(ray: Any) -> tuple[Any, Any]:
    """The worker and progress actor classes (built on use, so importing this module does not import Ray)."""

    @ray.remote
    class ShardWorker:
        def __init__(self, factory: WorkerFactory, progress: Any, driver: Driver) -> None:
            driver.watch()
            self.work = factory.start(lambda done, failed, frames: progress.add.remote(done, failed, frames))
            ray.get(progress.ready.remote(time.time()))  # the pool's start-up ends when the first worker is here

        def __call__(self, unit: Any) -> Any:
            return self.work(unit)

    @ray.remote(num_cpus=0)
    class Progress:
        def __init__(self) -> None:
            self.done = self.failed = self.frames = 0
            self.first_ready: Optional[float] = None

        def ready(self, at: float) -> None:
            self.first_ready = at if self.first_ready is None else min(self.first_ready, at)

        def first_ready_at(self) -> Optional[float]:
            return self.first_ready

        def add(self, done: int, failed: int, frames: int) -> None:
            self.done += done
            self.failed += failed
            self.frames += frames

        def snapshot(self) -> tuple[int, int, int]:
            return self.done, self.failed, self.frames

    return ShardWorker, Progress


class _Slots:
    """One pool's actors, its queue and its units in flight (the driver's side of a pool)."""

    def __init__(self, make_actor: Callable[[], Any], size: int, name: Callable[[Any], str], blame: Blame,
                 results: dict[str, Any], failures: dict[str, tuple[str, str]]) -> None:
        self.make_actor, self.name, self.blame = make_actor, name, blame
        self.results, self.failures = results, failures
        self.actors: list[Any] = [None] * size  # started on first use
        self.idle = list(range(size))
        self.queue: deque = deque()

    def fill(self, in_flight: dict[Any, tuple["_Slots", int, Any]]) -> None:
        """Give every idle actor a unit while there are any (starting actors on first use)."""
        while self.idle and self.queue:
            slot = self.idle.pop(0)
            if self.actors[slot] is None:
                self.actors[slot] = self.make_actor()
            unit = self.queue.popleft()
            in_flight[self.actors[slot].__call__.remote(unit)] = (self, slot, unit)

    def drained(self) -> bool:
        return not self.queue and len(self.idle) == len(self.actors)

    def release(self) -> None:
        """Let go of the actors (Ray ends them, freeing their reservations); a later unit starts new ones."""
        self.actors = [None] * len(self.actors)


def _feed(ray: Any, units: Sequence[Any], factory: WorkerFactory, bar: Bar, name: Callable[[Any], str], blame: Blame,
          workers: Optional[int], gpus: bool, fail_fast: bool, show_progress: bool, result: PoolResult,
          then: Optional[FollowUp] = None) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    worker_class, progress_class = _actor_classes(ray)
    driver = Driver.this()
    first_class = worker_class.options(num_cpus=1, num_gpus=1 if gpus else 0, memory=TASK_MEMORY_BYTES)
    first_progress = progress_class.remote()
    size = max(1, min(len(units), workers or int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1))))
    first = _Slots(lambda: first_class.remote(factory, first_progress, driver), size, name, blame, result.results, result.failures)
    first.queue.extend(units)
    pools = [(first, bar, first_progress)]
    follow = None
    if then is not None:
        follow_class = worker_class.options(num_cpus=0, num_gpus=1 if then.gpus else 0, memory=TASK_MEMORY_BYTES)
        follow_progress = progress_class.remote()
        follow_size = max(1, int(ray.cluster_resources().get("GPU", 1))) if then.gpus else 1
        follow = _Slots(lambda: follow_class.remote(then.factory, follow_progress, driver), follow_size, then.name,
                        retries(then.name), result.followed, result.follow_failures)
        pools.append((follow, then.bar, follow_progress))
    in_flight: dict[Any, tuple[_Slots, int, Any]] = {}
    first.fill(in_flight)
    rate = "{task.fields[fps]:>7.1f} frames/s  " if bar.rate or (then is not None and then.bar.rate) else ""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(rate + "failed {task.fields[failed]}"), TimeElapsedColumn()]
    started = time.time()
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress, transient=False) as shown:
        bar_ids = [shown.add_task(shown_bar.label, total=shown_bar.total, completed=shown_bar.completed, fps=0.0, failed=0)
                   for _, shown_bar, _ in pools]
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0.5)
            for ref in done:
                pool, slot, unit = in_flight.pop(ref)
                pool.idle.append(slot)
                try:
                    value = pool.results[pool.name(unit)] = ray.get(ref)
                except ray.exceptions.RayError as error:
                    if fail_fast:
                        raise
                    if isinstance(error, ray.exceptions.RayActorError):
                        pool.actors[slot] = None  # the process died: a fresh worker takes the slot
                        again = pool.blame(unit)
                        if again is not None:
                            pool.queue.appendleft(again)
                            pool.fill(in_flight)
                            continue
                    pool.failures[pool.name(unit)] = failure(error)
                    log.error("%s %s failed: %s: %s", "shard" if pool is first else "follow-up", pool.name(unit), *pool.failures[pool.name(unit)])
                else:
                    if pool is first and follow is not None:
                        next_unit = then.next_unit(unit, value)
                        if next_unit is not None:
                            follow.queue.append(next_unit)
                pool.fill(in_flight)
            first.fill(in_flight)
            if follow is not None:
                follow.fill(in_flight)
                if first.drained() and any(actor is not None for actor in first.actors):
                    first.release()  # prep is done: its CPUs and memory go to the follow-up pool
            for bar_id, (_, shown_bar, progress_actor) in zip(bar_ids, pools):
                units_done, failed, frames = ray.get(progress_actor.snapshot.remote())
                shown.update(bar_id, completed=shown_bar.completed + units_done, fps=frames / max(time.time() - started, 1e-9), failed=failed)
    result.first_ready_at = ray.get(first_progress.first_ready_at.remote())
