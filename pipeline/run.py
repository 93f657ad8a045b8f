"""Run a prep job on Ray: plan shards, one Ray task per shard, then manifest + prep.json.

``ray.init()`` locally by default (``workers`` CPUs); ``address`` ("auto", "ray://host:port")
joins an existing cluster, whose nodes must see ``out_dir`` and have cals installed.
Re-running the same command skips complete shards (resume).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
import uuid
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
from pipeline.clip import PrepParams
from pipeline.errors import ClipError
from pipeline.io import ffmpeg_version, probe
from pipeline.manifest import ClipSource, atomic_write_parquet, manifest_row, read_rows
from pipeline.recipes.folder import SPLITS, stable_fraction
from pipeline.shard_writer import PARTS_DIR, ShardPlan, part_path, prepare_shard, shard_is_complete

log = logging.getLogger(__name__)

#: Planning estimate of shard bytes per video frame (JPEG q95 crop ~7.8 kB + FLAC + mel + rest).
BYTES_PER_FRAME_ESTIMATE = 10_000
#: Clips probed (a fixed, hash-chosen sample) to estimate the mean clip duration for planning.
PLAN_PROBE_CLIPS = 32
#: Memory Ray reserves per shard task, so a node never runs more tasks than it can hold.
TASK_MEMORY_BYTES = 1_500 * 1024**2
#: Times Ray re-runs a shard task whose worker process died.
TASK_MAX_RETRIES = 2
#: Environment of Ray workers: quiet native logs, one BLAS/OpenMP thread per task.
WORKER_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}


def estimate_clip_duration(clips: list[ClipSource]) -> float:
    """Mean duration (s) of up to PLAN_PROBE_CLIPS clips chosen by key hash (deterministic)."""
    sample = sorted(clips, key=lambda c: stable_fraction(c.key))[:PLAN_PROBE_CLIPS]
    durations = []
    for clip in sample:
        try:
            durations.append(probe(clip.path).duration_s)
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
    """SHA-256 of the clip list (key, path, size) and the parameters: what resume must match."""
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode())
    for split in SPLITS:
        for clip in clips_by_split.get(split, []):
            size = os.path.getsize(clip.path) if os.path.exists(clip.path) else -1
            digest.update(f"{split}\0{clip.key}\0{clip.path}\0{size}\n".encode())
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


def _atomic_write_json(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class RunSummary:
    """What a run did; ``rows`` are the manifest rows of every source clip."""

    out_dir: Path
    rows: list[dict[str, Any]]
    wall_s: float
    shards_done: int
    shards_skipped: int
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
        table.add_row("frames/s", f"{self.frames / max(self.wall_s, 1e-9):.1f}")
        return table


def _ray_shard_task():
    """The Ray remote function (built lazily so importing this module does not import Ray)."""
    import ray

    @ray.remote(num_cpus=1, memory=TASK_MEMORY_BYTES, max_retries=TASK_MAX_RETRIES)
    def prepare_shard_task(plan, out_dir, params, progress_actor, fail_fast):
        def report(clips, frames, failed):
            progress_actor.add.remote(clips, frames, failed)

        return prepare_shard(plan, Path(out_dir), params, report, fail_fast)

    return prepare_shard_task


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
) -> RunSummary:
    """Prepare every clip into ``out_dir`` (the dataset folder), resuming complete shards.

    Writes ``<split>-NNNNNN.tar``, ``manifest.parquet`` (one row per source clip) and
    ``prep.json`` (command, parameters, versions, source digest).
    """
    import ray
    from rich.console import Console

    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(out_dir.glob(".*.tmp-*")) + list((out_dir / PARTS_DIR).glob(".*.tmp-*")):
        stale.unlink(missing_ok=True)
    all_clips = [c for split in SPLITS for c in clips_by_split.get(split, [])]
    keys = [c.key for c in all_clips]
    if len(set(keys)) != len(keys):
        duplicated = sorted(k for k, n in Counter(keys).items() if n > 1)[:5]
        raise ValueError(f"sample keys must be unique; duplicated: {duplicated}")
    plans = plan_shards(clips_by_split, shard_mb, estimate_clip_duration(all_clips))
    todo = [p for p in plans if not shard_is_complete(out_dir, p)]
    prep_info = {
        "command": command or sys.argv,
        "parameters": params.to_dict(),
        "shard_mb": shard_mb,
        "format_version": FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "mel_params": MEL_PARAMS.to_dict(),
        "versions": versions(),
        "source_digest": source_digest(clips_by_split, params),
        "clips": len(all_clips),
        "shards": [p.name for p in plans],
    }
    _atomic_write_json(prep_info, out_dir / PREP_FILE)

    started_ray = False
    failed_tasks: dict[str, tuple[str, str]] = {}
    if todo:
        if not ray.is_initialized():
            init_args: dict[str, Any] = dict(
                logging_level=logging.WARNING,
                runtime_env={"env_vars": WORKER_ENV},
                configure_logging=True,
            )
            if address:
                ray.init(address=address, **init_args)
            else:
                ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, **init_args)
            started_ray = True
        try:
            failed_tasks = _run_tasks(todo, out_dir, params, fail_fast, show_progress, len(all_clips) - sum(len(p.clips) for p in todo), len(all_clips))
        finally:
            if started_ray:
                ray.shutdown()

    rows = []
    for plan in plans:
        part = part_path(out_dir, plan.name)
        if part.is_file():
            rows.extend(read_rows(part))
        else:  # the task failed past its retries: every clip of the shard is recorded, none lost silently
            reason, detail = failed_tasks.get(plan.name, ("worker_crash", "shard task did not finish"))
            rows.extend(manifest_row(c, status="failed", reason=reason, detail=f"shard {plan.name}: {detail}") for c in plan.clips)
    atomic_write_parquet(rows, out_dir / MANIFEST_FILE)
    summary = RunSummary(
        out_dir=out_dir,
        rows=rows,
        wall_s=time.time() - started,
        shards_done=len(todo),
        shards_skipped=len(plans) - len(todo),
        failures=Counter(r["reason"] for r in rows if r["status"] != "ok"),
    )
    prep_info["summary"] = {
        "clips_ok": summary.ok,
        "clips_failed": dict(summary.failures),
        "frames": summary.frames,
        "wall_s": round(summary.wall_s, 3),
    }
    _atomic_write_json(prep_info, out_dir / PREP_FILE)
    if show_progress:
        Console(stderr=True).print(summary.table())
    return summary


def _task_failure(error: Exception) -> tuple[str, str]:
    """(reason, detail) for a shard task Ray gave up on."""
    import ray

    crashed = isinstance(error, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
    lines = [line for line in str(error).splitlines() if line.strip()]
    return ("worker_crash" if crashed else "internal_error", (lines[-1] if lines else type(error).__name__)[:500])


def _run_tasks(todo, out_dir, params, fail_fast, show_progress, already_done, total) -> dict[str, tuple[str, str]]:
    """Run shard tasks with a progress bar; returns shard name → (reason, detail) of tasks that failed."""
    import ray
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failed_tasks: dict[str, tuple[str, str]] = {}
    task = _ray_shard_task()
    progress_actor = _progress_actor()
    pending = {task.remote(p, str(out_dir), params, progress_actor, fail_fast): p for p in todo}
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
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            for ref in done:
                plan = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as error:
                    if fail_fast:
                        raise
                    failed_tasks[plan.name] = _task_failure(error)
                    log.error("shard %s failed: %s", plan.name, failed_tasks[plan.name][1])
            clips, frames, failed = ray.get(progress_actor.snapshot.remote())
            bar.update(bar_id, completed=already_done + clips, fps=frames / max(time.time() - started, 1e-9), failed=failed)
    return failed_tasks
