"""Run a prep job on Ray: plan shards, one Ray task per shard, then manifest + prep.json.

``ray.init()`` locally by default (``workers`` CPUs); ``address`` ("auto", "ray://host:port")
joins an existing cluster, whose nodes must see ``out_dir`` and have cals installed.
``out_dir`` may be an fsspec URL (s3://, gs://, ...): every read and write goes through
:class:`pipeline.storage.Storage`. Re-running the same command skips complete shards (resume).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cals import __version__ as cals_version
from cals.constants import FPS
from cals.data import MANIFEST_FILE, PREP_FILE
from cals.mel import MEL_PARAMS
from cals.shard_format import FORMAT_VERSION
from pipeline import PIPELINE_VERSION
from pipeline.prepare_clip import PrepParams
from pipeline.errors import ClipError
from pipeline.io import ffmpeg_version, probe
from pipeline.manifest import ClipSource, manifest_row, read_rows, write_parquet
from pipeline.recipes.folder import SPLITS, stable_fraction
from pipeline.ray_session import prepare_environment, ray_session
from pipeline.prepare_shard import PARTS_DIR, ShardPlan, marker_name, part_name, prepare_shard, shard_is_complete
from pipeline.storage import LocalStorage, Storage, open_storage

log = logging.getLogger(__name__)

#: Planning estimate of shard bytes per video frame (JPEG q95 crop ~7.8 kB + FLAC + mel + rest).
BYTES_PER_FRAME_ESTIMATE = 8_500
#: Clips probed (a fixed, hash-chosen sample) to estimate the mean clip duration for planning.
PLAN_PROBE_CLIPS = 32
#: Memory Ray reserves per shard worker, so a node never runs more workers than it can hold
#: (measured peak on a 10-minute 720p clip: see BENCHMARKS.md).
TASK_MEMORY_BYTES = 1_500 * 1024**2
#: Times Ray restarts a shard worker whose process died, and re-runs its shard.
TASK_MAX_RETRIES = 2
#: Deaths of a worker process on the same clip after which the clip is recorded as failed.
CLIP_CRASH_LIMIT = 2
#: Failure reasons that may pass on a second try (``--retry-failed`` redoes their shards).
TRANSIENT_REASONS = ("worker_crash", "internal_error")
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


def plan_shards(clips_by_split: dict[str, list[ClipSource]], shard_mb: float, mean_duration_s: float) -> list[ShardPlan]:
    """Group each split's clips, in key order, into shards of about ``shard_mb`` megabytes."""
    clip_mb = mean_duration_s * FPS * BYTES_PER_FRAME_ESTIMATE / 1e6
    per_shard = max(1, int(shard_mb / clip_mb))
    plans = []
    for split in SPLITS:
        clips = clips_by_split.get(split, [])
        for index, start in enumerate(range(0, len(clips), per_shard)):
            plans.append(ShardPlan(f"{split}-{index:06d}", split, tuple(clips[start : start + per_shard])))
    return plans


def source_digest(clips_by_split: dict[str, list[ClipSource]], params: PrepParams) -> str:
    """SHA-256 of the parameters and every clip's full description (key, path, split, span,
    crop, transcript, extra) and source file size: what resume must match."""
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode())
    for split in SPLITS:
        for clip in clips_by_split.get(split, []):
            size = os.path.getsize(clip.path) if os.path.exists(clip.path) else -1
            digest.update(json.dumps([clip.to_dict(), size], sort_keys=True, default=list).encode())
    return digest.hexdigest()


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
    process_s: float = 0.0  # the actor pool working through the shards
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
        table.add_row("frames/s (whole run / processing only)", f"{self.frames / max(self.wall_s, 1e-9):.1f} / {self.frames / max(self.process_s, 1e-9):.1f}")
        return table


def _shard_worker_class():
    """The Ray actor class (built lazily so importing this module does not import Ray).

    One actor per CPU loads the detector once (``__init__``) and prepares shard after shard: the
    Ray Data shape of "a model as a callable class on an actor pool". The driver replaces an
    actor whose process died and re-queues its shard (at most TASK_MAX_RETRIES times).
    """
    import ray

    @ray.remote(num_cpus=1, memory=TASK_MEMORY_BYTES)
    class ShardWorker:
        def __init__(self, out_dir: str, params: PrepParams, progress_actor, fail_fast: bool) -> None:
            from pipeline.stages.detect import make_detector

            self.out_dir = open_storage(out_dir)
            self.params = params
            self.fail_fast = fail_fast
            self.progress_actor = progress_actor
            self.detector = make_detector(params.detector, params.mediapipe_model)

        def __call__(self, plan: ShardPlan, skip: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
            def report(clips: int, frames: int, failed: int) -> None:
                self.progress_actor.add.remote(clips, frames, failed)

            return prepare_shard(plan, self.out_dir, self.params, report, self.fail_fast, self.detector, skip)

    return ShardWorker


def _progress_actor():
    import ray

    @ray.remote(num_cpus=0)
    class Progress:
        def __init__(self) -> None:
            self.clips = self.frames = self.failed = 0

        def add(self, clips: int, frames: int, failed: int) -> None:
            self.clips += clips
            self.frames += frames
            self.failed += failed

        def snapshot(self) -> tuple[int, int, int]:
            return self.clips, self.frames, self.failed

    return Progress.remote()


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
) -> RunSummary:
    """Prepare every clip into ``out_dir`` (the dataset folder: a local path or an fsspec URL
    such as ``s3://bucket/shards/videos``), resuming complete shards.

    Writes ``<split>-NNNNNN.tar``, ``manifest.parquet`` (one row per source clip) and
    ``prep.json`` (command, parameters, versions, source digest).

    Raises OutputMismatch when ``out_dir`` holds a run of other inputs or parameters, unless
    ``force`` (then shards whose digest differs are redone and shards no longer planned are
    removed). ``retry_failed`` redoes the shards whose clips failed for a transient reason.
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
    digest = source_digest(clips_by_split, params)
    previous = json.loads(storage.read_text(PREP_FILE)) if storage.exists(PREP_FILE) else None
    has_output = bool(storage.glob(f"{PARTS_DIR}/*.parquet"))
    if previous and has_output and previous.get("source_digest") != digest and not force:
        raise OutputMismatch(describe_mismatch(storage, previous, all_clips, params))
    plans = plan_shards(clips_by_split, shard_mb, estimate_clip_duration(all_clips))
    if force:
        planned = {p.name for p in plans}
        for stale in storage.glob("*.tar") + storage.glob(f"{PARTS_DIR}/*.parquet"):
            if stale.rsplit("/", 1)[-1].split(".")[0] not in planned:
                storage.remove(stale)
    if retry_failed and storage.exists(MANIFEST_FILE):
        retry = {r["key"] for r in read_rows(io.BytesIO(storage.read_bytes(MANIFEST_FILE))) if r["reason"] in TRANSIENT_REASONS}
        for plan in plans:
            if any(c.key in retry for c in plan.clips):
                storage.remove(part_name(plan.name))
    todo = [p for p in plans if not shard_is_complete(storage, p, params)]
    prep_info = {
        "command": command or sys.argv,
        "parameters": params.to_dict(),
        "shard_mb": shard_mb,
        "format_version": FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "mel_params": MEL_PARAMS.to_dict(),
        "versions": versions(),
        "source_digest": digest,
        "clips": len(all_clips),
        "shards": [p.name for p in plans],
    }
    _write_json(storage, prep_info, PREP_FILE)

    plan_s = time.time() - started
    if show_progress and len(todo) < len(plans):
        Console(stderr=True).print(f"resuming {out_dir}: {len(plans) - len(todo)} of {len(plans)} shards already complete, {len(todo)} to do")
    failed_tasks: dict[str, tuple[str, str]] = {}
    ray_start_s = process_s = 0.0
    if todo:
        ray_started = time.time()
        with ray_session(workers, address):
            ray_start_s = time.time() - ray_started
            process_started = time.time()
            failed_tasks = _run_tasks(todo, storage, params, fail_fast, show_progress, len(all_clips) - sum(len(p.clips) for p in todo), len(all_clips), workers)
            process_s = time.time() - process_started

    rows = []
    for plan in plans:
        part = part_name(plan.name)
        if storage.exists(part):
            rows.extend(read_rows(io.BytesIO(storage.read_bytes(part))))
        else:  # the task failed past its retries: every clip of the shard is recorded, none lost silently
            reason, detail = failed_tasks.get(plan.name, ("worker_crash", "shard task did not finish"))
            rows.extend(manifest_row(c, status="failed", reason=reason, detail=f"shard {plan.name}: {detail}") for c in plan.clips)
    with storage.staged(MANIFEST_FILE) as tmp:
        write_parquet(rows, tmp)
    summary = RunSummary(
        out_dir=out_dir,
        rows=rows,
        wall_s=time.time() - started,
        shards_done=len(todo),
        shards_skipped=len(plans) - len(todo),
        plan_s=plan_s,
        ray_start_s=ray_start_s,
        process_s=process_s,
        failures=Counter(r["reason"] for r in rows if r["status"] != "ok"),
    )
    prep_info["summary"] = {
        "clips_ok": summary.ok,
        "clips_failed": dict(summary.failures),
        "frames": summary.frames,
        "wall_s": round(summary.wall_s, 3),
        "ray_start_s": round(summary.ray_start_s, 3),
        "process_s": round(summary.process_s, 3),
    }
    _write_json(storage, prep_info, PREP_FILE)
    if show_progress:
        Console(stderr=True).print(summary.table())
    return summary


def _task_failure(error: Exception) -> tuple[str, str]:
    """(reason, detail) for a shard Ray gave up on."""
    import ray

    crashed = isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
    lines = [line for line in str(error).splitlines() if line.strip()]
    return ("worker_crash" if crashed else "internal_error", (lines[-1] if lines else type(error).__name__)[:500])


def _run_tasks(todo, storage: Storage, params, fail_fast, show_progress, already_done, total, workers) -> dict[str, tuple[str, str]]:
    """Feed shards to an actor pool with a progress bar; returns shard → (reason, detail) of failures."""
    from collections import deque

    import ray
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failed_tasks: dict[str, tuple[str, str]] = {}
    worker_class = _shard_worker_class()
    progress_actor = _progress_actor()
    size = max(1, min(len(todo), workers or int(ray.cluster_resources().get("CPU", 1))))
    make_actor = lambda: worker_class.remote(storage.location, params, progress_actor, fail_fast)  # noqa: E731
    actors = [make_actor() for _ in range(size)]
    queue = deque(todo)
    attempts: Counter = Counter()  # worker deaths not pinned on a clip, per shard
    crashes: Counter = Counter()  # worker deaths per clip key
    skip: dict[str, dict[str, tuple[str, str]]] = {p.name: {} for p in todo}
    in_flight: dict[Any, tuple[int, ShardPlan]] = {}

    def submit(slot: int) -> None:
        if queue:
            plan = queue.popleft()
            in_flight[actors[slot].__call__.remote(plan, skip[plan.name])] = (slot, plan)

    def blame(plan: ShardPlan) -> bool:
        """After a worker death on ``plan``: charge the clip it was on (or the shard); True
        when the shard should be tried again."""
        marker = marker_name(plan.name)
        try:
            key = storage.read_text(marker).strip() if storage.exists(marker) else None
        except FileNotFoundError:
            key = None
        if key:
            crashes[key] += 1
            if crashes[key] >= CLIP_CRASH_LIMIT:
                skip[plan.name][key] = ("worker_crash", f"the worker process died {crashes[key]} times while preparing this clip")
            return True
        attempts[plan.name] += 1
        return attempts[plan.name] <= TASK_MAX_RETRIES

    for slot in range(size):
        submit(slot)
    columns = [
        TextColumn("[bold]clips"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:>7.1f} frames/s  failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    ]
    started = time.time()
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress, transient=False) as bar:
        bar_id = bar.add_task("prep", total=total, completed=already_done, fps=0.0, failed=0)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0.5)
            for ref in done:
                slot, plan = in_flight.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as error:
                    if fail_fast:
                        raise
                    if isinstance(error, ray.exceptions.RayActorError):
                        actors[slot] = make_actor()  # the process died: a fresh worker takes the slot
                        if blame(plan):
                            queue.appendleft(plan)
                            submit(slot)
                            continue
                    failed_tasks[plan.name] = _task_failure(error)
                    log.error("shard %s failed: %s", plan.name, failed_tasks[plan.name][1])
                submit(slot)
            clips, frames, failed = ray.get(progress_actor.snapshot.remote())
            bar.update(bar_id, completed=already_done + clips, fps=frames / max(time.time() - started, 1e-9), failed=failed)
    return failed_tasks
