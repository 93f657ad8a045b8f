"""Run a prep job on Ray: plan shards, one Ray task per shard, then manifest + prep.json.

``ray.init()`` locally by default (``workers`` CPUs); ``address`` ("auto", "ray://host:port")
joins an existing cluster, whose nodes must see ``out_dir`` and have cals installed.
``out_dir`` may be an fsspec URL (s3://, gs://, ...): every read and write goes through
:class:`pipeline.storage.Storage`. Re-running the same command skips complete shards (resume:
:mod:`pipeline.resume`). The shards are prepared on :mod:`pipeline.ray_pool`'s actor pool; a
worker that dies is replaced and the clip it was on (its shard's marker) blamed.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import math
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from cals import __version__ as cals_version
from cals.constants import FPS
from cals.errors import NoSpaceError, no_space_raised_as_one_line
from cals.layout import MANIFEST_FILE, PREP_FILE, RESERVE_FILE, part_name
from cals.mel import MEL_PARAMS
from cals.shard_format import FORMAT_VERSION
from pipeline import PIPELINE_VERSION
from pipeline.errors import ClipError
from pipeline.io import ffmpeg_version, probe
from pipeline.manifest import ClipSource, manifest_row, read_rows, write_parquet
from pipeline.prepare_clip import PrepParams
from pipeline.prepare_shard import ShardPlan, prepare_shard
from pipeline.ray_pool import Bar, Blame, FollowUp, Report, retries, run_pool
from pipeline.ray_session import prepare_environment
from pipeline.recipes.folder import SPLITS, stable_fraction
from pipeline.resume import clips_digest, crashed_clip, forget_failures, has_output, remove_unplanned, shard_is_complete
from pipeline.storage import LocalStorage, Storage, open_storage, reserve_bytes, space_reserved

log = logging.getLogger(__name__)

#: Planning estimate of shard bytes per video frame (JPEG q95 crop ~7.8 kB + FLAC + mel + rest).
BYTES_PER_FRAME_ESTIMATE = 8_500
#: Shards planned per worker when the dataset allows, so every worker has work to the end of a
#: run (the last shards finish at different times; 4 keeps the idle tail under ~1/4 of a shard).
SHARDS_PER_WORKER = 4
#: Smallest shard (MB, at BYTES_PER_FRAME_ESTIMATE) the spreading makes: ~30 frames, one 1.2 s
#: LRW clip; below it a shard's fixed cost (a tar, a Parquet part, a Ray task: ~10-20 ms) nears
#: its work. Shards are never cut below one clip, nor above ``--shard-mb``.
MIN_SHARD_MB = 0.25
#: Dispatch-order cost of an annotated span (:func:`clip_cost`), bytes per second: ~ a 720p
#: H.264 talking head (the fixtures: 0.08-0.45 MB/s; HDTF's 720p-1080p sources ~0.3-1 MB/s).
SPAN_BYTES_PER_S = 500_000
#: Clips probed (a fixed, hash-chosen sample) to estimate the mean clip duration for planning.
PLAN_PROBE_CLIPS = 32
#: Deaths of a worker process on the same clip after which the clip is recorded as failed.
CLIP_CRASH_LIMIT = 2
#: Failure reasons that may pass on a second try (``--retry-failed`` redoes their shards).
TRANSIENT_REASONS = ("worker_crash", "internal_error")
#: Longest failure detail kept in the manifest.
DETAIL_CHARS = 500


class OutputMismatch(Exception):
    """The output folder holds a run prepared from other inputs or parameters."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def describe_mismatch(out_dir: "str | Path | Storage", previous: dict[str, Any], clips: list[ClipSource], params: PrepParams) -> str:
    """A one-line account of what differs between a finished/partial run and this one."""
    import pandas as pd

    storage = open_storage(out_dir)
    changes = []
    old, new = _flatten(previous.get("parameters", {})), _flatten(params.to_dict())
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differing:
        changes.append("parameters " + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:5]))
    if storage.exists(MANIFEST_FILE):
        before = set(pd.read_parquet(io.BytesIO(storage.read_bytes(MANIFEST_FILE)), columns=["key"])["key"])
        after = {c.key for c in clips}
        if after - before or before - after:
            changes.append(f"{len(after - before)} clips added, {len(before - after)} removed")
    if not changes:
        changes.append("source files changed (sizes)")
    return (
        f"{storage} was prepared from other inputs or parameters ({'; '.join(changes)}). "
        "Re-run the same command to resume, choose another --out/--name, or pass --force to redo what differs."
    )


def estimate_clip_duration(clips: list[ClipSource]) -> float:
    """Mean duration (s) of up to PLAN_PROBE_CLIPS clips chosen by key hash (deterministic)."""
    sample = sorted(clips, key=lambda c: stable_fraction(c.key))[:PLAN_PROBE_CLIPS]
    durations = []
    for clip in sample:
        if clip.end_s is not None:  # an annotated span: its own length, no probe needed
            durations.append(clip.end_s - (clip.start_s or 0.0))
            continue
        try:
            durations.append(probe(clip.path).duration_s - (clip.start_s or 0.0))
        except (ClipError, OSError):
            continue
    return max(sum(durations) / len(durations), 1.0 / FPS) if durations else 10.0


def clips_per_shard(total_clips: int, shard_mb: float, mean_duration_s: float, workers: Optional[int]) -> int:
    """Clips per shard: at most ``shard_mb`` MB of them, fewer so the run has at least
    SHARDS_PER_WORKER × ``workers`` shards where shards of MIN_SHARD_MB allow (never below one
    clip). One worker (nothing to balance) or ``workers`` None (the plan of runs recorded before
    the worker count was): ``shard_mb`` shards."""
    clip_mb = mean_duration_s * FPS * BYTES_PER_FRAME_ESTIMATE / 1e6
    most = max(1, int(shard_mb / clip_mb))
    if workers is None or workers <= 1:
        return most
    least = max(1, math.ceil(MIN_SHARD_MB / clip_mb))
    spread = max(1, total_clips // (SHARDS_PER_WORKER * max(1, workers)))
    return min(most, max(least, spread))


def plan_shards(
    clips_by_split: dict[str, list[ClipSource]], shard_mb: float, mean_duration_s: float, workers: Optional[int] = None
) -> list[ShardPlan]:
    """Group each split's clips, in key order, into shards of :func:`clips_per_shard` clips
    (the same size in every split). A pure function of its arguments: the plan of a run."""
    total = sum(len(clips_by_split.get(split, [])) for split in SPLITS)
    per_shard = clips_per_shard(total, shard_mb, mean_duration_s, workers)
    plans = []
    for split in SPLITS:
        clips = clips_by_split.get(split, [])
        for index, start in enumerate(range(0, len(clips), per_shard)):
            plans.append(ShardPlan(f"{split}-{index:06d}", split, tuple(clips[start : start + per_shard])))
    return plans


def clip_cost(clip: ClipSource) -> float:
    """Estimated work of one clip for dispatch ordering, in bytes: the size of its source file
    (decode, and so the rest, grows with frames × pixels, which the encoded size roughly
    follows); an annotated span (``end_s`` set), whose file may be much longer, counts its
    seconds at :data:`SPAN_BYTES_PER_S`. 0 for a file that cannot be read (it fails fast). No
    probe: one stat per clip."""
    if clip.end_s is not None:
        return (clip.end_s - (clip.start_s or 0.0)) * SPAN_BYTES_PER_S
    try:
        return float(os.stat(clip.path).st_size)
    except OSError:
        return 0.0


def dispatch_order(plans: list[ShardPlan], workers: Optional[int] = None) -> list[ShardPlan]:
    """The order the pool hands shards out: the costliest first (:func:`clip_cost` summed over
    the shard; ties keep the plan's order), the longest-processing-time-first rule, so a long
    clip planned last does not run alone at the end while the other workers idle (each next shard
    goes to the first worker free). Only the order changes: names, contents and resume are the
    plan's. One worker (``workers`` 1; None: unknown, a cluster) has nothing to balance, so it
    keeps the plan's order, as :func:`clips_per_shard` keeps one shard: on a disk that fills up,
    the small shards of key order stay written (biggest-first filled a 3 MB tmpfs with two large
    shards and left no room for the manifest)."""
    if workers is not None and workers <= 1:
        return list(plans)
    cost = {plan.name: sum(clip_cost(c) for c in plan.clips) for plan in plans}
    return sorted(plans, key=lambda plan: -cost[plan.name])


def plan_workers(workers: Optional[int], address: Optional[str], previous: Optional[dict[str, Any]]) -> Optional[int]:
    """The worker count the shards are planned for: the one ``previous`` (prep.json of the
    output being resumed) recorded under ``plan`` (None when it predates the record: the plan
    it was made with), else ``workers``, else the cluster's CPUs with ``address``, else this
    machine's CPUs."""
    if previous is not None:
        return previous.get("plan", {}).get("workers")
    if workers:
        return workers
    if address:
        from pipeline.ray_session import cluster_cpus

        return cluster_cpus(address)
    return os.cpu_count() or 1


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version(), "ffmpeg": ffmpeg_version(), "cals": cals_version}
    for package in ("numpy", "mediapipe", "opencv-contrib-python", "ray", "webdataset", "pyarrow", "soundfile"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return found


def _write_json(storage: Storage, data: dict[str, Any], name: str) -> None:
    storage.write_text(name, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@dataclass
class RunSummary:
    """What a run did; ``rows`` are the manifest rows of every source clip."""

    out_dir: "Path | str"  # a local folder, or the URL it was written to
    rows: list[dict[str, Any]]
    wall_s: float
    shards_done: int
    shards_skipped: int
    plan_s: float = 0.0  # listing, probing for the shard plan, resume checks
    ray_start_s: float = 0.0  # ray.init (0 when Ray was already up or nothing was to do)
    process_s: float = 0.0  # the actor pool working through the shards (worker start-up included)
    worker_start_s: float = 0.0  # of process_s: until the first worker was loaded and took its first shard
    failures: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def frames(self) -> int:
        return sum(r["num_frames"] or 0 for r in self.rows if r["status"] == "ok")

    def table(self) -> "Any":
        from rich.table import Table

        table = Table(title=f"cals-prep: {self.out_dir}")
        table.add_column("what")
        table.add_column("value", justify="right")
        hours_in = sum(r["source_duration_s"] or 0 for r in self.rows) / 3600
        hours_out = self.frames / FPS / 3600
        table.add_row("clips ok", str(self.ok))
        for reason, count in sorted(self.failures.items()):
            table.add_row(f"clips failed: {reason}", str(count))
        table.add_row("hours in (probed clips)", f"{hours_in:.3f}")
        table.add_row("hours out", f"{hours_out:.3f}")
        table.add_row("shards written / already complete", f"{self.shards_done} / {self.shards_skipped}")
        table.add_row("wall time", f"{self.wall_s:.1f} s")
        table.add_row("worker start-up (first worker ready)", f"{self.worker_start_s:.1f} s")
        table.add_row("frames/s (whole run / processing only)", f"{self.frames / max(self.wall_s, 1e-9):.1f} / {self.frames / max(self.process_s, 1e-9):.1f}")
        return table


@dataclass(frozen=True)
class ShardTask:
    """One unit of prep's pool: a shard's plan, and the clips to record as failed without
    processing them (key → (reason, detail)): those that killed CLIP_CRASH_LIMIT workers."""

    plan: ShardPlan
    skip: dict[str, tuple[str, str]] = field(default_factory=dict)

    def shard(self) -> str:
        return self.plan.name


@dataclass(frozen=True)
class PrepWorker:
    """Prep's :class:`~pipeline.ray_pool.WorkerFactory`: each actor loads the detector and the
    lip-top step's FaceMesh (:class:`cals.metrics.MouthLandmarker`, not thread-safe: one per
    actor) once, then prepares shard after shard into the dataset folder ``out_dir`` (a path or
    URL); both are closed when the actor's process exits."""

    out_dir: str
    params: PrepParams
    fail_fast: bool

    def start(self, report: Report) -> Callable[[ShardTask], list[dict[str, Any]]]:
        from cals.metrics import MouthLandmarker
        from pipeline.stages.detect import make_detector

        storage = open_storage(self.out_dir)
        detector = make_detector(self.params.detector, self.params.mediapipe_model)
        landmarker = MouthLandmarker()
        atexit.register(detector.close)
        atexit.register(landmarker.close)

        def progress(clips: int, frames: int, failed: int) -> None:
            report(clips, failed, frames)

        def work(task: ShardTask) -> list[dict[str, Any]]:
            return prepare_shard(task.plan, storage, self.params, progress, self.fail_fast, detector, task.skip, landmarker)

        return work


def clip_blame(storage: Storage) -> Blame:
    """Prep's :data:`~pipeline.ray_pool.Blame` hook: a worker death is charged to the clip its
    shard's marker names, and the shard tried again (that clip skipped once it caused
    CLIP_CRASH_LIMIT deaths); a death on no clip counts against the shard (at most
    TASK_MAX_RETRIES retries)."""
    crashes: Counter = Counter()  # worker deaths per clip key
    retry = retries(ShardTask.shard)

    def blame(task: ShardTask) -> Optional[ShardTask]:
        key = crashed_clip(storage, task.plan.name)
        if key is None:
            return retry(task)
        crashes[key] += 1
        if crashes[key] < CLIP_CRASH_LIMIT:
            return task
        return ShardTask(task.plan, {**task.skip, key: ("worker_crash", f"the worker process died {crashes[key]} times while preparing this clip")})

    return blame


def run_prep(
    clips_by_split: dict[str, list[ClipSource]],
    out_dir: str | Path,
    params: PrepParams = PrepParams(),
    *,
    shard_mb: float = 500.0,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    fail_fast: bool = False,
    show_progress: bool = True,
    command: Optional[list[str]] = None,
    force: bool = False,
    retry_failed: bool = False,
    then: "Optional[FollowUp]" = None,
) -> RunSummary:
    """Prepare every clip into ``out_dir`` (the dataset folder: a local path or an fsspec URL
    such as ``s3://bucket/shards/videos``), resuming complete shards.

    Writes ``<split>-NNNNNN.tar``, ``manifest.parquet`` (one row per source clip) and
    ``prep.json`` (command, parameters, versions, source digest).

    Raises OutputMismatch when ``out_dir`` holds a run of other inputs or parameters, unless
    ``force`` (then shards whose digest differs are redone and shards no longer planned are
    removed). ``retry_failed`` redoes the shards whose clips failed for a transient reason.
    Raises :class:`cals.errors.NoSpaceError` (one line) when the disk filled up: after the
    manifest (their clips ``no_space``) when shards could not be written; the shards that were
    are kept, and the same command resumes. ``then``: a second pool fed each shard as it is
    written (:class:`pipeline.ray_pool.FollowUp`: prep's lip units, :func:`pipeline.units.units_follow_up`).
    """
    prepare_environment(address)
    from rich.console import Console

    started = time.time()
    storage = open_storage(out_dir)
    out_dir = storage.root if isinstance(storage, LocalStorage) else storage.location
    storage.makedirs()
    storage.clean()  # temp files and clip markers of an interrupted run
    all_clips = [c for split in SPLITS for c in clips_by_split.get(split, [])]
    keys = [c.key for c in all_clips]
    if len(set(keys)) != len(keys):
        duplicated = sorted(k for k, n in Counter(keys).items() if n > 1)[:5]
        raise ValueError(f"sample keys must be unique; duplicated: {duplicated}")
    digest = clips_digest(all_clips, params)
    previous = json.loads(storage.read_text(PREP_FILE)) if storage.exists(PREP_FILE) else None
    if previous and has_output(storage) and previous.get("source_digest") != digest and not force:
        raise OutputMismatch(describe_mismatch(storage, previous, all_clips, params))
    resumed = previous if previous and has_output(storage) and not force else None
    planned_for = plan_workers(workers, address, resumed)
    plans = plan_shards(clips_by_split, shard_mb, estimate_clip_duration(all_clips), planned_for)
    if force:
        remove_unplanned(storage, {p.name for p in plans})
    if retry_failed:
        forget_failures(storage, {p.name: p.clips for p in plans}, TRANSIENT_REASONS)
    todo = [p for p in plans if not shard_is_complete(storage, p.name, p.clips, params)]
    prep_info = {
        "command": command or sys.argv,
        "parameters": params.to_dict(),
        "shard_mb": shard_mb,
        "plan": {"workers": planned_for, "shards_per_worker": SHARDS_PER_WORKER, "min_shard_mb": MIN_SHARD_MB},
        "format_version": FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "mel_params": MEL_PARAMS.to_dict(),
        "versions": versions(),
        "source_digest": digest,
        "clips": len(all_clips),
        "shards": [p.name for p in plans],
    }
    # The manifest's room, held from here until just before it is written (a disk the shards fill
    # still takes it; the reserve is removed by the block's end, and by clean() after a kill).
    # A resume with no shard to write fills nothing: it holds nothing (LRW's would be 256 MiB).
    with space_reserved(storage, RESERVE_FILE, reserve_bytes(len(all_clips)) if todo else 0):
        with no_space_raised_as_one_line(storage.url(PREP_FILE)):
            _write_json(storage, prep_info, PREP_FILE)

        plan_s = time.time() - started
        asked_for = workers or (None if address else os.cpu_count())
        if show_progress and resumed is not None and todo and asked_for and planned_for != asked_for:
            made_for = f"planned for {planned_for} workers" if planned_for else "planned before worker counts were recorded"
            Console(stderr=True).print(f"resuming {out_dir} with the plan of its first run ({len(plans)} shards, {made_for}); "
                                       f"--force replans for {asked_for} workers")
        if show_progress and len(todo) < len(plans):
            Console(stderr=True).print(f"resuming {out_dir}: {len(plans) - len(todo)} of {len(plans)} shards already complete, {len(todo)} to do")
        failed_tasks: dict[str, tuple[str, str]] = {}
        ray_start_s = process_s = worker_start_s = 0.0
        if todo:
            bar = Bar("clips", total=len(all_clips), completed=len(all_clips) - sum(len(p.clips) for p in todo), rate=True)
            pool = run_pool([ShardTask(p) for p in dispatch_order(todo, asked_for)], PrepWorker(storage.location, params, fail_fast), bar, name=ShardTask.shard,
                            blame=clip_blame(storage), workers=workers, address=address, fail_fast=fail_fast, show_progress=show_progress,
                            then=then)
            failed_tasks = {shard: (reason, detail[:DETAIL_CHARS]) for shard, (reason, detail) in pool.failures.items()}
            ray_start_s, process_s, worker_start_s = pool.ray_start_s, pool.process_s, pool.worker_start_s

        rows = []
        for plan in plans:
            part = part_name(plan.name)
            if storage.exists(part):
                rows.extend(read_rows(io.BytesIO(storage.read_bytes(part))))
            else:  # the task failed past its retries: every clip of the shard is recorded, none lost silently
                reason, detail = failed_tasks.get(plan.name, ("worker_crash", "shard task did not finish"))
                rows.extend(manifest_row(c, status="failed", reason=reason, detail=f"shard {plan.name}: {detail}") for c in plan.clips)
    with no_space_raised_as_one_line(storage.url(MANIFEST_FILE)), storage.staged(MANIFEST_FILE) as tmp:
        write_parquet(rows, tmp)
    summary = RunSummary(
        out_dir=out_dir,
        rows=rows,
        wall_s=time.time() - started,
        shards_done=sum(storage.exists(part_name(p.name)) for p in todo),  # only the shards that exist
        shards_skipped=len(plans) - len(todo),
        plan_s=plan_s,
        ray_start_s=ray_start_s,
        process_s=process_s,
        worker_start_s=worker_start_s,
        failures=Counter(r["reason"] for r in rows if r["status"] == "failed"),
    )
    prep_info["summary"] = {
        "clips_ok": summary.ok,
        "clips_failed": dict(summary.failures),
        "frames": summary.frames,
        "wall_s": round(summary.wall_s, 3),
        "ray_start_s": round(summary.ray_start_s, 3),
        "process_s": round(summary.process_s, 3),
        "worker_start_s": round(summary.worker_start_s, 3),
    }
    with no_space_raised_as_one_line(storage.url(PREP_FILE)):
        _write_json(storage, prep_info, PREP_FILE)
    if show_progress:
        Console(stderr=True).print(summary.table())
    no_space = [shard for shard, (reason, _) in failed_tasks.items() if reason == "no_space"]
    if no_space:
        raise NoSpaceError(f"no space left on device under {out_dir}: {len(no_space)} of {len(plans)} shards not written "
                           f"({summary.failures['no_space']} clips recorded as no_space in {MANIFEST_FILE}); free space and re-run the same command to resume")
    return summary
