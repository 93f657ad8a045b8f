#!/usr/bin/env python
"""Benchmark of the cals-prep core (issue "cals-prep core"): throughput, scaling, bytes, memory.

Builds its inputs in a work folder, then measures them in one run:

- floor 1, decode only: every corpus frame through ``pipeline.io.iter_frames`` (one process);
- floor 2, decode + detect: the same frames through the detector, batched as the pipeline does;
- end to end with 1 and 2 Ray workers: ``run_prep`` over the corpus (one clip per shard), plus
  the same figures with Ray's start-up (init + first task + shutdown, timed alone) taken out;
- bytes per frame of the written shards;
- peak RSS of one worker running ``process_clip`` on a long 1280x720 25 fps clip, in a child;
- LRS2-shaped input (``--lrs2``, on unless ``--skip-lrs2``): a fake ``mvlrs_v1/main`` tree of
  2-second 160x160 clips cut from the fixtures, read through ``prepare_lrs2``; its decode-only
  floor, end to end on 1 worker with ``--detector mediapipe`` and ``none`` (and their ratios to
  the floor), a resume run over the finished output, and the arithmetic for the whole of LRS2
  main and pretrain on a 16-core node and a 256-core Ray cluster.

That is ``--suite 3``. The default, ``--suite 12``, measures issue 12's "Must show" in one run,
each figure a ratio against floors measured in the same run (floors decode with one ffmpeg
process per clip): LRS2-shaped 2 s 160x160 clips (decode floor, decode + MediaPipe floor, prep
with ``--detector none`` and mediapipe on 1 worker, whole run incl. Ray start over processing,
a Wav2Lip-style S3FD-per-frame baseline: target >= 30x); the full fixture clips (every-frame
detection over the decode+detect floor, the default stride over the decode floor); 2 workers vs
1 on a 20-clip folder with default flags, with CPU-seconds per frame of the whole process tree;
worker peak RSS on a 10-minute 720p clip. ``--quick`` runs it on small inputs (a few minutes).

Prints a markdown table (with PASS/MISS against the targets) and writes it to ``--results``;
``--markdown`` keeps stdout to that table (paste it into BENCHMARKS.md).
Smoke runs: ``python bench/prep.py --quick --markdown``; ``python bench/prep.py --suite 3 --minutes
0.3 --long-minutes 0.3 --lrs2-clips 8``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixture_builders, as bench/train.py imports tests.*

from cals.constants import FPS  # noqa: E402
from pipeline.io import iter_frames, probe  # noqa: E402
from pipeline.manifest import ClipSource  # noqa: E402
from pipeline.prepare_clip import PrepParams  # noqa: E402
from pipeline.recipes.folder import SPLITS, prepare_folder  # noqa: E402
from pipeline.recipes.lrs2 import MAIN_SUBSET, prepare_lrs2  # noqa: E402
from pipeline.ray_session import WORKER_ENV  # noqa: E402
from pipeline.run import (  # noqa: E402
    BYTES_PER_FRAME_ESTIMATE,
    RunSummary,
    estimate_clip_duration,
    plan_shards,
    run_prep,
)
from pipeline.stages.detect import DETECTORS, make_detector  # noqa: E402
from pipeline.stages.face import detected_stream  # noqa: E402
from tests.fixture_builders import (  # noqa: E402
    LONG_HEIGHT,
    LONG_WIDTH,
    LRS2_CLIP_SECONDS,
    LRS2_SIZE,
    Lrs2Tree,
    build_corpus,
    build_long_clip,
    build_lrs2_tree,
    corpus_videos,
)

#: Where the fixture clips live, and which of them (talking faces with speech) make the corpus.
FIXTURE_DIR = REPO.parent / "shared" / "fixtures" / "video"
FIXTURE_GLOB = "talk_*.mp4"
#: Fixture scaled and padded to 1280x720 and looped into the long clip of the memory test.
LONG_SOURCE = "talk_aoc2_retalking.mp4"

DEFAULT_MINUTES = 2.0
DEFAULT_LONG_MINUTES = 10.0
DEFAULT_DETECTOR = "mediapipe"

#: Shard size for run_prep, far below one clip's planned size, so every clip gets its own shard.
SHARD_MB = 1e-3
#: Shards the end-to-end runs should have so that two workers both get work.
MIN_SHARDS = 4
#: Targets: end to end >= 60 % of the decode+detect floor, 2 workers >= 1.7x one worker,
#: peak RSS of one worker < 1.5 GB on the long 720p clip.
TARGET_E2E_OVER_FLOOR = 0.60
TARGET_SCALING_2_OVER_1 = 1.7
TARGET_PEAK_RSS_BYTES = 1_500_000_000

#: The fake LRS2 main tree: clips of this length, cut from the fixtures in order (looped when a
#: fixture runs out), 160x160 like the release, this many clips per <video_id> folder.
DEFAULT_LRS2_CLIPS = 120
#: Detectors run end to end on the LRS2 tree (both on 1 worker); resume is timed with the last.
LRS2_DETECTORS = ("mediapipe", "none")
LRS2_RESUME_DETECTOR = "none"
#: The real release, for the arithmetic: hours of video per subset (frames at 25 fps).
LRS2_SUBSET_HOURS = {"main": 29.0, "pretrain": 195.0}
#: Machines of the arithmetic: (label, cores); one Ray worker per core.
PROJECTION_MACHINES = (("one 16-core node", 16), ("256-core Ray cluster", 256))
#: Cores one worker really keeps busy (Python + its ffmpeg decoder process; measured 1.3-1.5).
CORES_PER_WORKER_CONSERVATIVE = 1.4

KIB = 1024
MIB = 1024**2
GIB = 1024**3


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Throughput:
    """Frames handled in a wall time."""

    frames: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class EndToEnd:
    """One run_prep run: its throughput (whole run, and the actor pool's processing alone), shards
    and failures."""

    workers: int
    run: Throughput
    process_s: float
    ray_startup_s: float
    shards: int
    tar_bytes: int
    failures: dict[str, int]

    @property
    def without_ray(self) -> Throughput:
        """Frames over the processing time (actors started, detectors loaded, shards written),
        without ray.init, planning and the final manifest."""
        return Throughput(self.run.frames, max(self.process_s, 1e-9))


@dataclass(frozen=True)
class LongClip:
    """process_clip on the long clip in a child: throughput and peak memory."""

    run: Throughput
    worker_peak_bytes: int
    ffmpeg_peak_bytes: int
    sample_bytes: int


@dataclass(frozen=True)
class Resume:
    """run_prep run again on a finished output: its wall time and what it skipped."""

    wall_s: float
    plan_s: float
    shards_done: int
    shards_skipped: int

    @property
    def skipped_all(self) -> bool:
        return self.shards_done == 0 and self.shards_skipped > 0


@dataclass
class Report:
    """Everything measured, rendered as a markdown table."""

    header: list[str]
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, value: str, detail: str = "", target: str = "", status: str = "") -> None:
        self.rows.append((metric, value, detail, target, status))

    def markdown(self) -> str:
        lines = list(self.header) + ["", "| metric | value | detail | target | status |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


# ----------------------------------------------------------------------------- planning


def lrs2_shard_mb(clips_by_split: dict[str, list[ClipSource]]) -> tuple[float, int]:
    """A ``shard_mb`` that gives >= MIN_SHARDS shards, and that number of shards.

    The largest split is cut into about MIN_SHARDS equal shards (fewer clips per shard if the
    plan still falls short). Planned as run_prep plans (the same clip-duration estimate and
    plan_shards); the size sits half a clip above a whole number of clips, so rounding cannot
    tip the plan.
    """
    every = [c for split in SPLITS for c in clips_by_split.get(split, [])]
    mean_s = estimate_clip_duration(every)
    clip_mb = mean_s * FPS * BYTES_PER_FRAME_ESTIMATE / 1e6
    per_shard = max(1, math.ceil(max(len(c) for c in clips_by_split.values()) / MIN_SHARDS))
    while True:
        shard_mb = (per_shard + 0.5) * clip_mb
        shards = len(plan_shards(clips_by_split, shard_mb, mean_s))
        if shards >= MIN_SHARDS or per_shard == 1:
            return shard_mb, shards
        per_shard -= 1


# ----------------------------------------------------------------------------- measurements


def measure_decode(paths: list[Path]) -> Throughput:
    """Floor 1: probe and stream every frame through iter_frames, nothing else."""
    frames = 0
    started = time.perf_counter()
    for path in paths:
        for _ in iter_frames(probe(path)):
            frames += 1
    return Throughput(frames, time.perf_counter() - started)


def measure_decode_detect(paths: list[Path], detector_name: str) -> Throughput:
    """Floor 2: iter_frames plus the detector on every frame, batched like process_clip.

    The detector is built (model loaded) before the clock starts.
    """
    detector = make_detector(detector_name)
    frames = 0
    try:
        started = time.perf_counter()
        for path in paths:
            for _ in detected_stream(iter_frames(probe(path)), detector, every=1):
                frames += 1
        seconds = time.perf_counter() - started
    finally:
        detector.close()
    return Throughput(frames, seconds)


def prep(clips_by_split: dict[str, list[ClipSource]], out_dir: Path, workers: int, detector_name: str, command: list[str], shard_mb: float) -> RunSummary:
    """run_prep, quietly, with this script's command line in prep.json."""
    return run_prep(
        clips_by_split,
        out_dir,
        PrepParams(detector=detector_name),
        shard_mb=shard_mb,
        workers=workers,
        show_progress=False,
        command=command,
    )


def measure_end_to_end(
    clips_by_split: dict[str, list[ClipSource]],
    out_dir: Path,
    workers: int,
    detector_name: str,
    command: list[str],
    shard_mb: float = SHARD_MB,
) -> EndToEnd:
    """run_prep over ``clips_by_split`` into a fresh ``out_dir`` with ``workers`` Ray workers."""
    if out_dir.exists():
        shutil.rmtree(out_dir)  # run_prep resumes complete shards: a stale folder would skip work
    summary = prep(clips_by_split, out_dir, workers, detector_name, command, shard_mb)
    tars = sorted(out_dir.glob("*.tar"))
    return EndToEnd(
        workers=workers,
        run=Throughput(summary.frames, summary.wall_s),
        process_s=summary.process_s,
        ray_startup_s=summary.ray_start_s,
        shards=len(tars),
        tar_bytes=sum(t.stat().st_size for t in tars),
        failures=dict(summary.failures),
    )


def measure_resume(clips_by_split: dict[str, list[ClipSource]], out_dir: Path, detector_name: str, command: list[str], shard_mb: float) -> Resume:
    """The same run_prep (1 worker) again on the finished ``out_dir``: it should skip every shard."""
    summary = prep(clips_by_split, out_dir, 1, detector_name, command, shard_mb)
    return Resume(summary.wall_s, summary.plan_s, summary.shards_done, summary.shards_skipped)


def measure_long_clip(path: Path, detector_name: str) -> LongClip:
    """process_clip on ``path`` in a child Python (``python -m bench.prep_rss_probe``) with the
    Ray workers' environment."""
    env = {**os.environ, **WORKER_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "bench.prep_rss_probe", str(path), detector_name],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"long-clip child failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return LongClip(
        run=Throughput(data["frames"], data["wall_s"]),
        worker_peak_bytes=max(data["vm_hwm_kib"], data["maxrss_self_kib"]) * KIB,
        ffmpeg_peak_bytes=data["maxrss_ffmpeg_kib"] * KIB,
        sample_bytes=data["sample_bytes"],
    )


# ----------------------------------------------------------------------------- report


def machine_description() -> str:
    """nproc, CPU model and total RAM of this machine."""
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
                break
    return f"nproc {len(os.sched_getaffinity(0))}, {cpu}, {ram_kib * KIB / GIB:.1f} GiB RAM"


def report_header(command: list[str], work: Path) -> list[str]:
    """Title, command line, machine, date and tool versions."""
    import importlib.metadata as md

    from pipeline.io import ffmpeg_version

    packages = ", ".join(f"{name} {md.version(name)}" for name in ("mediapipe", "ray", "numpy"))
    ffmpeg = ffmpeg_version().split(" Copyright", 1)[0]
    return [
        "## cals-prep core benchmark",
        "",
        f"- command: `{shlex.join(command)}`",
        f"- machine: {machine_description()}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- versions: python {platform.python_version()}, {ffmpeg}, {packages}",
        f"- work folder: `{work}`",
    ]


def per_core(throughput: Throughput, cores: int) -> str:
    """``X frames/s (Y per core)`` with Y = X / cores."""
    return f"{throughput.fps:.1f} frames/s ({throughput.fps / cores:.1f} per core)"


def add_corpus_rows(report: Report, paths: list[Path], clip_s: float) -> None:
    """Minutes of video the corpus actually holds (ffprobe durations)."""
    total_s = sum(probe(p).duration_s for p in paths)
    report.add("corpus (looped fixtures)", f"{total_s / 60:.2f} min", f"{len(paths)} clips x {clip_s:.0f} s")


def add_floor_rows(report: Report, decode: Throughput, detect: Throughput, detector_name: str) -> None:
    """The two single-process floors."""
    report.add("floor 1: decode only", per_core(decode, 1), f"{decode.frames} frames in {decode.seconds:.1f} s, 1 process")
    report.add(
        f"floor 2: decode + detect ({detector_name})",
        per_core(detect, 1),
        f"{detect.frames} frames in {detect.seconds:.1f} s, 1 process",
    )


def add_end_to_end_rows(report: Report, one: EndToEnd, two: EndToEnd, floor: Throughput) -> None:
    """Throughputs, the ratio to the floor, scaling and bytes per frame."""
    for run in (one, two):
        label = f"end to end, {run.workers} worker{'s' if run.workers > 1 else ''}"
        detail = f"{run.run.frames} frames in {run.run.seconds:.1f} s, {run.shards} shards"
        report.add(label, per_core(run.run, run.workers), detail)
        report.add(
            f"{label}, processing only",
            per_core(run.without_ray, run.workers),
            f"{run.process_s:.1f} s in the actor pool; ray.init took {run.ray_startup_s:.1f} s",
        )
        if run.failures:
            report.add(f"{label}: failed clips", str(sum(run.failures.values())), json.dumps(run.failures), "0", "MISS")
        if run.shards < MIN_SHARDS:
            report.notes.append(f"{label} wrote {run.shards} shards (< {MIN_SHARDS}): scaling is not meaningful")
    for name, a, b in (("", one.run, two.run), (", processing only", one.without_ray, two.without_ray)):
        ratio = a.fps / max(floor.fps, 1e-9)
        report.add(
            f"end to end (1 worker) / floor 2{name}",
            f"{ratio:.2f}",
            f"{a.fps:.1f} / {floor.fps:.1f}",
            f">= {TARGET_E2E_OVER_FLOOR:.2f}",
            verdict(ratio >= TARGET_E2E_OVER_FLOOR),
        )
        scaling = b.fps / max(a.fps, 1e-9)
        report.add(
            f"scaling 2 workers / 1 worker{name}",
            f"{scaling:.2f}x",
            f"{b.fps:.1f} / {a.fps:.1f}",
            f">= {TARGET_SCALING_2_OVER_1:.1f}x",
            verdict(scaling >= TARGET_SCALING_2_OVER_1),
        )
    bytes_per_frame = one.tar_bytes / max(one.run.frames, 1)
    report.add(
        "shard bytes per frame",
        f"{bytes_per_frame:,.0f} B",
        f"{one.tar_bytes / MIB:.1f} MiB of .tar / {one.run.frames} frames (planning estimate {BYTES_PER_FRAME_ESTIMATE:,} B)",
    )


def add_long_rows(report: Report, long_clip: LongClip, minutes: float) -> None:
    """Peak RSS (worker alone, and with its ffmpeg child) and throughput on the long clip."""
    label = f"{minutes:g}-min {LONG_WIDTH}x{LONG_HEIGHT} clip"
    report.add(
        f"{label}: peak RSS of the worker",
        f"{long_clip.worker_peak_bytes / MIB:.0f} MiB",
        f"ffmpeg child peak {long_clip.ffmpeg_peak_bytes / MIB:.0f} MiB; sample {long_clip.sample_bytes / MIB:.1f} MiB",
        f"< {TARGET_PEAK_RSS_BYTES / 1e9:.1f} GB",
        verdict(long_clip.worker_peak_bytes < TARGET_PEAK_RSS_BYTES),
    )
    both = long_clip.worker_peak_bytes + long_clip.ffmpeg_peak_bytes
    report.add(
        f"{label}: worker + ffmpeg peak RSS",
        f"{both / MIB:.0f} MiB",
        "upper bound: both peaks added",
        f"< {TARGET_PEAK_RSS_BYTES / 1e9:.1f} GB",
        verdict(both < TARGET_PEAK_RSS_BYTES),
    )
    report.add(
        f"{label}: process_clip throughput",
        per_core(long_clip.run, 1),
        f"{long_clip.run.frames} frames in {long_clip.run.seconds:.1f} s, 1 process",
    )


def format_hours(seconds: float) -> str:
    """``X.X h``, or ``X.X min`` below an hour."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def add_lrs2_rows(
    report: Report, tree: Lrs2Tree, decode: Throughput, runs: dict[str, EndToEnd], resume: Resume, shard_mb: float
) -> None:
    """The fake tree, its decode floor, end to end per detector (and over the floor), resume."""
    splits = "/".join(str(tree.split_counts[s]) for s in SPLITS)
    report.add(
        "LRS2: fake main tree",
        f"{tree.seconds / 60:.2f} min",
        f"{tree.clips} clips x {LRS2_CLIP_SECONDS:g} s, {LRS2_SIZE}x{LRS2_SIZE} H.264 + AAC 16 kHz mono, "
        f"{tree.folders} folders, {'/'.join(SPLITS)} {splits}",
    )
    report.add("LRS2: floor, decode only", per_core(decode, 1), f"{decode.frames} frames in {decode.seconds:.1f} s, 1 process")
    for detector_name, run in runs.items():
        label = f"LRS2: end to end, {detector_name}, 1 worker"
        detail = f"{run.run.frames} frames in {run.run.seconds:.1f} s, {run.shards} shards (shard_mb {shard_mb:.2f})"
        report.add(label, per_core(run.run, 1), detail)
        report.add(
            f"{label}, processing only",
            per_core(run.without_ray, 1),
            f"{run.process_s:.1f} s in the actor pool; ray.init took {run.ray_startup_s:.1f} s",
        )
        for name, throughput in (("", run.run), (", processing only", run.without_ray)):
            report.add(
                f"LRS2: {detector_name} / decode floor{name}",
                f"{throughput.fps / max(decode.fps, 1e-9):.2f}",
                f"{throughput.fps:.1f} / {decode.fps:.1f}",
            )
        if run.failures:
            report.add(f"{label}: failed clips", str(sum(run.failures.values())), json.dumps(run.failures), "0", "MISS")
        if run.shards < MIN_SHARDS:
            report.notes.append(f"{label} wrote {run.shards} shards (< {MIN_SHARDS})")
    total = resume.shards_done + resume.shards_skipped
    report.add(
        f"LRS2: resume, {LRS2_RESUME_DETECTOR}, finished output",
        f"{resume.wall_s:.2f} s",
        f"{resume.shards_skipped} of {total} shards skipped, {resume.shards_done} redone; planning {resume.plan_s:.2f} s",
        "every shard skipped",
        verdict(resume.skipped_all),
    )


def add_projection_rows(report: Report, runs: dict[str, EndToEnd]) -> None:
    """Wall time for the whole of LRS2 main and pretrain, per detector and machine, from the
    measured processing frames/s of one worker (the assumptions go to the notes)."""
    for subset, hours in LRS2_SUBSET_HOURS.items():
        frames = hours * 3600 * FPS
        for detector_name, run in runs.items():
            per_worker = run.without_ray.fps
            for machine, cores in PROJECTION_MACHINES:
                linear_s = frames / max(cores * per_worker, 1e-9)
                conservative_s = frames / max(cores / CORES_PER_WORKER_CONSERVATIVE * per_worker, 1e-9)
                report.add(
                    f"projection: LRS2 {subset} ({hours:g} h), {detector_name}, {machine}",
                    f"{format_hours(linear_s)} ({format_hours(conservative_s)} conservative)",
                    f"{frames / 1e6:.2f}M frames / ({cores} x {per_worker:.1f} frames/s) = {linear_s:,.0f} s; "
                    f"conservative: / ({cores} / {CORES_PER_WORKER_CONSERVATIVE:g} x {per_worker:.1f}) = {conservative_s:,.0f} s",
                )
    report.notes.append(
        f"LRS2 projections: frames = hours x 3600 x {FPS} fps; rate = workers x the processing-only "
        "frames/s of one worker measured above on the fake tree (Ray start-up, planning and the "
        "manifest are left out: a constant, small at this scale). Assumes linear scaling with one "
        "Ray worker per core (workers = cores; shards are independent, nothing is shared), no I/O "
        "or network limit, and pretrain clips processed as fast per frame as 2-s main clips "
        "(pretrain clips are longer, so per-clip costs weigh less there). One worker really keeps "
        f"~1.3-1.5 cores busy (ffmpeg decodes in its own process), so the conservative figure "
        f"runs cores / {CORES_PER_WORKER_CONSERVATIVE:g} workers"
    )


def run_lrs2_section(args: argparse.Namespace, fixtures: list[Path], work: Path, command: list[str], report: Report) -> None:
    """Build the fake LRS2 tree, measure it (floor, both detectors, resume) and add the rows."""
    print(f"[bench] LRS2: building {args.lrs2_clips} clips of {LRS2_CLIP_SECONDS:g} s", file=sys.stderr)
    tree = build_lrs2_tree(fixtures, work / "lrs2", args.lrs2_clips)
    clips_by_split = prepare_lrs2(tree.root, subset=MAIN_SUBSET)
    paths = [Path(c.path) for split in SPLITS for c in clips_by_split[split]]
    shard_mb, _ = lrs2_shard_mb(clips_by_split)

    print("[bench] LRS2: decode floor", file=sys.stderr)
    decode = measure_decode(paths)
    runs = {}
    for detector_name in LRS2_DETECTORS:
        print(f"[bench] LRS2: end to end, {detector_name}, 1 worker", file=sys.stderr)
        runs[detector_name] = measure_end_to_end(
            clips_by_split, work / f"lrs2_out_{detector_name}", 1, detector_name, command, shard_mb
        )
    print(f"[bench] LRS2: resume ({LRS2_RESUME_DETECTOR})", file=sys.stderr)
    resume = measure_resume(clips_by_split, work / f"lrs2_out_{LRS2_RESUME_DETECTOR}", LRS2_RESUME_DETECTOR, command, shard_mb)
    add_lrs2_rows(report, tree, decode, runs, resume, shard_mb)
    add_projection_rows(report, runs)


# ----------------------------------------------------------------------------- issue 12 suite
#
# "Prep at the decode floor" (issue 12, Must show): every figure a ratio against floors measured
# in this same run. The default suite of this script (``--suite 12``); ``--suite 3`` runs the
# issue 2/3 report above.

#: Inputs of the suite (full / --quick): LRS2-shaped clips, clips of the scaling folder, S3FD
#: baseline frames, minutes of the 720p memory clip. 200 LRS2-shaped clips (10,000 frames): the
#: run's fixed costs (ray.init, a worker's start: imports, detector, FaceMesh, ~2-4 s) amortise
#: towards what they are on the real corpus (LRS2 main: ~45k clips); 40 clips were ~2,000 frames,
#: 4-8 s of work against those seconds.
SUITE_LRS2_CLIPS = (200, 12)
SUITE_SCALING_CLIPS = (20, 8)
SUITE_S3FD_FRAMES = (100, 20)
SUITE_LONG_MINUTES = (10.0, 0.5)
#: Targets of issue 12 (value, what it is a ratio of).
TARGETS_12 = {
    "lrs2_none_over_decode": 1.0,
    "lrs2_mediapipe_over_detect": 0.8,
    "lrs2_whole_over_processing": 0.8,
    "full_k1_over_detect": 0.85,
    "full_default_over_decode": 0.8,
    "scaling": 1.7,
    "over_s3fd": 30.0,
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def ffmpeg_frames(path: Path) -> Iterator[np.ndarray]:
    """The floors' decoder: one ``ffmpeg`` process per clip, ``fps=25``, RGB24 frames on a pipe
    (what prep did per clip before in-process decoding; independent of pipeline.io's decoder)."""
    info = probe(path)
    size = info.width * info.height * 3
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf", f"fps={FPS}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        try:
            while True:
                data = process.stdout.read(size)
                if len(data) < size:
                    break
                yield np.frombuffer(data, np.uint8).reshape(info.height, info.width, 3)
        finally:
            process.kill()  # a consumer that stopped early (the S3FD baseline)


def floor_decode(paths: list[Path]) -> Throughput:
    """Floor: every frame through :func:`ffmpeg_frames` (probe + one process per clip), 1 core."""
    frames, started = 0, time.perf_counter()
    for path in paths:
        frames += sum(1 for _ in ffmpeg_frames(path))
    return Throughput(frames, time.perf_counter() - started)


def floor_decode_detect(paths: list[Path], detector_name: str) -> Throughput:
    """Floor: :func:`ffmpeg_frames` plus the detector on every frame, batched as prep batches."""
    detector = make_detector(detector_name)
    try:
        frames, started = 0, time.perf_counter()
        for path in paths:
            frames += sum(1 for _ in detected_stream(ffmpeg_frames(path), detector, every=1))
        return Throughput(frames, time.perf_counter() - started)
    finally:
        detector.close()


def s3fd_baseline(paths: list[Path], max_frames: int) -> Throughput:
    """Wav2Lip-style preprocessing: every frame through S3FD at full resolution (random weights:
    the same network, the same time; no face clears 0.8 so post-processing is the cheapest case),
    then crop + resize to 128x128 of the best box or the frame; 1 torch thread (one core, as one
    prep worker). Stops after ``max_frames`` frames."""
    import cv2
    import torch

    from cals.models.s3fd import S3FD, S3FDNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    detector = S3FD(S3FDNet())
    frames, started = 0, time.perf_counter()
    for path in itertools.cycle(paths):
        for frame in ffmpeg_frames(path):
            rows = detector.detect(frame)
            x0, y0, x1, y1 = (rows[0, :4].astype(int) if len(rows) else (0, 0, frame.shape[1], frame.shape[0]))
            cv2.resize(frame[max(0, y0):y1, max(0, x0):x1], (128, 128))
            frames += 1
            if frames >= max_frames:
                return Throughput(frames, time.perf_counter() - started)
    return Throughput(frames, time.perf_counter() - started)


#: TreeCpu's roles, by a process's name (/proc/PID/comm; Ray titles its workers ``ray::<Class>``).
ROLES = ("driver", "workers", "ray system")


def _role(pid: int) -> str:
    """The driver (this process), a worker (a Ray actor or a decoder it started), or Ray's own
    processes (GCS, raylet, dashboard, log monitor, ...)."""
    if pid == os.getpid():
        return "driver"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "ray system"
    return "workers" if comm.startswith("ray::") or comm in ("ffmpeg", "ffprobe") else "ray system"


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid → (ppid, own + reaped children's CPU seconds) of every process (from /proc/PID/stat)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, utime, stime, cutime, cstime = int(fields[1]), *map(int, fields[11:15])
        table[int(entry)] = (ppid, (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS)
    return table


class TreeCpu:
    """CPU seconds of this process and all its descendants (Ray's GCS, raylet, workers and their
    decoders) while the block runs, from /proc every ``period`` s. Each process counts its own
    time plus its reaped children's (``cutime``/``cstime``); a process seen that is gone at the
    end while its parent is alive is subtracted again (its parent reaped it: the parent's reaped
    time holds it, with what it used after the last sample). One whose parent died too keeps its
    last sampled time (at most ``period`` s of its end missed)."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.seen: dict[int, tuple[int, float, float]] = {}
        self.roles: dict[int, str] = {}
        self.seconds = 0.0
        self.by_role: dict[str, float] = {}

    def _sample(self) -> set[int]:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, stack = set(), [os.getpid()]
        while stack:
            pid = stack.pop()
            if pid in table:
                tree.add(pid)
                stack.extend(children.get(pid, []))
        for pid in tree:
            self.seen[pid] = table[pid]
            if pid not in self.roles or self.roles[pid] == "ray system":  # a worker's title is set after its start
                self.roles[pid] = _role(pid)
        return tree

    def _loop(self) -> None:
        while not self.stop.wait(self.period):
            self._sample()

    def __enter__(self) -> "TreeCpu":
        self._sample()
        self.base = dict(self.seen)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        alive = self._sample()
        by_role = dict.fromkeys(ROLES, 0.0)
        for pid, (ppid, own, reaped) in self.seen.items():
            _, own0, reaped0 = self.base.get(pid, (ppid, 0.0, 0.0))
            used = (own - own0) + (reaped - reaped0)
            by_role[self.roles.get(pid, "ray system")] += used
            if pid not in alive and ppid in alive:
                # reaped by its live parent: counted again in the parent's cutime/cstime, so taken
                # off the parent's role (the driver reaps Ray's GCS and raylet at shutdown)
                by_role[self.roles.get(ppid, "ray system")] -= used
        self.by_role = {role: max(seconds, 0.0) for role, seconds in by_role.items()}
        self.seconds = sum(self.by_role.values())


@dataclass(frozen=True)
class Run12:
    """One run_prep of the suite: frames, whole wall time, pool time (of it: the workers'
    start-up), Ray start, shards, CPU s (all processes, and by :data:`ROLES`)."""

    frames: int
    wall_s: float
    process_s: float
    ray_start_s: float
    shards: int
    cpu_s: float
    failed: int
    worker_start_s: float = 0.0
    cpu_by_role: dict = field(default_factory=dict)

    @property
    def whole(self) -> Throughput:
        return Throughput(self.frames, self.wall_s)

    @property
    def processing(self) -> Throughput:
        """Steady state: first worker ready (its first clip started) to last shard written."""
        return Throughput(self.frames, self.process_s - self.worker_start_s)

    @property
    def pool(self) -> Throughput:
        """The whole pool, the workers' start-up included (what "processing" meant before)."""
        return Throughput(self.frames, self.process_s)

    def cpu_roles(self) -> str:
        return ", ".join(f"{role} {self.cpu_by_role.get(role, 0.0):.1f}" for role in ROLES) + " CPU-s"


def run12(clips_by_split: dict[str, list[ClipSource]], out_dir: Path, params: PrepParams, workers: int, command: list[str]) -> Run12:
    """run_prep into a fresh ``out_dir`` with the default shard plan, CPU seconds of the tree."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with TreeCpu() as cpu:
        summary = run_prep(clips_by_split, out_dir, params, workers=workers, show_progress=False, command=command)
    return Run12(summary.frames, summary.wall_s, summary.process_s, summary.ray_start_s, len(list(out_dir.glob("*.tar"))),
                 cpu.seconds, sum(summary.failures.values()), summary.worker_start_s, dict(cpu.by_role))


def start_up_row(report: Report, label: str, run: Run12) -> None:
    report.add(f"{label}: pool start-up (first worker ready)", f"{run.worker_start_s:.1f} s",
               f"of {run.process_s:.1f} s in the pool; pool incl. start-up {run.pool.fps:.1f} frames/s; Ray start {run.ray_start_s:.1f} s")


def ratio_row(report: Report, label: str, a: Throughput, b: Throughput, target_key: Optional[str], what: str) -> float:
    ratio = a.fps / max(b.fps, 1e-9)
    target = TARGETS_12.get(target_key) if target_key else None
    report.add(label, f"{ratio:.2f}x" if ratio >= 3 else f"{ratio:.2f}", f"{a.fps:.1f} / {b.fps:.1f} frames/s ({what})",
               f">= {target:g}" if target else "", verdict(ratio >= target) if target else "")
    return ratio


def throughput_row(report: Report, label: str, t: Throughput, detail: str = "") -> None:
    report.add(label, f"{t.fps:.1f} frames/s", f"{t.frames} frames in {t.seconds:.1f} s" + (f"; {detail}" if detail else ""))


def run_suite12(args: argparse.Namespace, command: list[str], work: Path) -> Report:
    """Issue 12's Must show, in one run (module docstring of the suite above)."""
    quick = 1 if args.quick else 0
    fixtures = sorted(args.fixtures.glob(FIXTURE_GLOB))
    default = PrepParams()
    report = Report(header=report_header(command, work))
    report.header[0] = "## Prep at the decode floor (issue 12): `bench/prep.py`"
    report.header.insert(3, f"- load while measuring (uptime at start): {open('/proc/loadavg').read().split()[:3]}")
    report.header.insert(4, f"- defaults: detector {default.detector}, detect_every {default.detect_every}; "
                            "floors decode with one ffmpeg process per clip; every prep run on the default shard plan")

    def log(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    # LRS2-shaped 2 s 160x160 clips
    log(f"LRS2-shaped: building {SUITE_LRS2_CLIPS[quick]} clips")
    tree = build_lrs2_tree(fixtures, work / "lrs2", SUITE_LRS2_CLIPS[quick])
    lrs2 = prepare_lrs2(tree.root, subset=MAIN_SUBSET)
    lrs2_paths = [Path(c.path) for split in SPLITS for c in lrs2[split]]
    log("LRS2-shaped: floors")
    decode = floor_decode(lrs2_paths)
    detect = floor_decode_detect(lrs2_paths, "mediapipe")
    throughput_row(report, f"LRS2-shaped ({tree.clips} x {LRS2_CLIP_SECONDS:g} s {LRS2_SIZE}²): decode floor", decode, "1 ffmpeg process per clip")
    throughput_row(report, "LRS2-shaped: decode + MediaPipe floor", detect, "every frame")
    log("LRS2-shaped: prep --detector none, 1 worker")
    none = run12(lrs2, work / "lrs2_none", PrepParams(detector="none"), 1, command)
    log("LRS2-shaped: prep --detector mediapipe --detect-every 1, 1 worker")
    mp1 = run12(lrs2, work / "lrs2_mp1", PrepParams(detect_every=1), 1, command)
    log("LRS2-shaped: prep default flags, 1 worker")
    mpd = run12(lrs2, work / "lrs2_default", default, 1, command) if default.detect_every != 1 else mp1
    ratio_row(report, "LRS2-shaped: --detector none processing / decode floor", none.processing, decode, "lrs2_none_over_decode", f"1 worker, {none.shards} shards")
    ratio_row(report, "LRS2-shaped: mediapipe (every frame) processing / decode+detect floor", mp1.processing, detect, "lrs2_mediapipe_over_detect", "1 worker")
    ratio_row(report, f"LRS2-shaped: default flags (k={default.detect_every}) processing / decode+detect floor", mpd.processing, detect, None, "1 worker")
    for name, run in (("--detector none", none), ("default flags", mpd)):
        start_up_row(report, f"LRS2-shaped, {name}", run)
        ratio_row(report, f"LRS2-shaped: whole run / processing, {name}", run.whole, run.processing, "lrs2_whole_over_processing",
                  f"Ray start {run.ray_start_s:.1f} s, pool start-up {run.worker_start_s:.1f} s, wall {run.wall_s:.1f} s")

    # Wav2Lip-style S3FD per frame on the same clips
    log(f"S3FD-per-frame baseline ({SUITE_S3FD_FRAMES[quick]} frames)")
    s3fd = s3fd_baseline(lrs2_paths, SUITE_S3FD_FRAMES[quick])
    throughput_row(report, "LRS2-shaped: Wav2Lip-style S3FD per frame (random weights, 1 thread)", s3fd)
    ratio_row(report, "LRS2-shaped: default flags processing / S3FD baseline", mpd.processing, s3fd, "over_s3fd", "1 core each")
    ratio_row(report, "LRS2-shaped: default flags whole run / S3FD baseline", mpd.whole, s3fd, None, "incl. Ray start")

    # full fixture clips
    full_root = work / "full"
    if full_root.exists():
        shutil.rmtree(full_root)
    for fixture in fixtures:
        (full_root / fixture.stem).mkdir(parents=True)
        (full_root / fixture.stem / fixture.name).symlink_to(fixture.resolve())
    full = prepare_folder(full_root, val=0, test=0)
    log("full clips: floors")
    full_decode = floor_decode(fixtures)
    full_detect = floor_decode_detect(fixtures, "mediapipe")
    throughput_row(report, f"full fixture clips ({len(fixtures)}): decode floor", full_decode)
    throughput_row(report, "full clips: decode + MediaPipe floor", full_detect)
    log("full clips: prep every frame, 1 worker")
    full1 = run12(full, work / "full_k1", PrepParams(detect_every=1), 1, command)
    log("full clips: prep default flags, 1 worker")
    fulld = run12(full, work / "full_default", default, 1, command) if default.detect_every != 1 else full1
    ratio_row(report, "full clips: --detect-every 1 processing / decode+detect floor", full1.processing, full_detect, "full_k1_over_detect", "1 worker")
    ratio_row(report, f"full clips: default stride (k={default.detect_every}) processing / decode floor", fulld.processing, full_decode, "full_default_over_decode", "1 worker")

    # 2 workers vs 1 on a folder of N clips, default flags
    n = SUITE_SCALING_CLIPS[quick]
    folder = work / "scaling"
    if folder.exists():
        shutil.rmtree(folder)
    for i in range(n):
        fixture = fixtures[i % len(fixtures)]
        (folder / f"spk{i:02d}").mkdir(parents=True)
        (folder / f"spk{i:02d}" / f"clip{i:02d}{fixture.suffix}").symlink_to(fixture.resolve())
    clips = prepare_folder(folder, val=0, test=0)
    runs = {}
    for workers in (1, 2):
        log(f"{n}-clip folder: default flags, {workers} worker(s)")
        runs[workers] = run12(clips, work / f"scaling_w{workers}", default, workers, command)
    for workers, run in runs.items():
        report.add(f"{n}-clip folder, {workers} worker{'s' if workers > 1 else ''}: processing",
                   f"{run.processing.fps:.1f} frames/s",
                   f"{run.frames} frames, {run.shards} shards; pool start-up {run.worker_start_s:.1f} s; whole run {run.whole.fps:.1f} frames/s; "
                   f"{run.cpu_s / max(run.frames, 1) * 1000:.2f} CPU-ms/frame ({run.cpu_s:.0f} CPU-s, all processes: {run.cpu_roles()}); "
                   f"{run.cpu_s / max(run.wall_s, 1e-9):.2f} cores busy on average")
    ratio_row(report, f"{n}-clip folder: 2 workers / 1 worker, processing", runs[2].processing, runs[1].processing, "scaling", "default flags")
    ratio_row(report, f"{n}-clip folder: 2 workers / 1 worker, whole run", runs[2].whole, runs[1].whole, None, "incl. Ray start")
    cpu1, cpu2 = (runs[w].cpu_s / max(runs[w].frames, 1) for w in (1, 2))
    report.add("CPU-seconds per frame, 2 workers / 1 worker", f"{cpu2 / max(cpu1, 1e-12):.2f}",
               f"{cpu2 * 1000:.2f} / {cpu1 * 1000:.2f} CPU-ms/frame: 1.00 = no extra work per frame with 2 workers")

    # worker peak RSS on a long 720p clip
    minutes = args.long_minutes if args.long_minutes_given else SUITE_LONG_MINUTES[quick]
    if args.skip_long:
        report.notes.append("long-clip memory test skipped (--skip-long)")
    else:
        log(f"long clip ({minutes:g} min 720p): peak RSS")
        long_path = build_long_clip(args.fixtures / LONG_SOURCE, work / "long", minutes)
        add_long_rows(report, measure_long_clip(long_path, default.detector), minutes)
    failed = {name: run.failed for name, run in (("lrs2 none", none), ("lrs2 mediapipe", mp1), ("full", full1), ("scaling 1", runs[1])) if run.failed}
    if failed:
        report.notes.append(f"failed clips: {failed}")
    report.notes.append("processing = frames / the pool's steady state: from the first worker ready (process started, imports, "
                        "detector and FaceMesh loaded; its first clip starts) to the last shard written; the start-up before it has "
                        "its own rows; whole run = frames / run_prep wall time (planning, ray.init, pool start-up, pool, manifest)")
    report.notes.append("lip-unit frames/s before/after (issue 12) are measured by the lip-units work, not here")
    return report


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see --help)."""
    parser = argparse.ArgumentParser(
        description="Benchmark cals-prep: decode/detect floors, end to end on 1 and 2 Ray workers, "
        "shard bytes per frame, peak RSS on a long 720p clip, and LRS2-shaped input with projections "
        "for the real release.",
    )
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="minutes of looped fixtures in the corpus (default %(default)s)")
    parser.add_argument("--long-minutes", type=float, default=DEFAULT_LONG_MINUTES, help="length of the 1280x720 memory-test clip (default %(default)s)")
    parser.add_argument("--skip-long", action="store_true", help="skip the long-clip memory test")
    parser.add_argument("--work", type=Path, default=None, help="work folder for inputs and outputs (default: a new temp folder, kept)")
    parser.add_argument("--results", type=Path, default=None, help="markdown results file (default WORK/results.md)")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR, help="face detector (default %(default)s)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURE_DIR, help="folder of talk_*.mp4 fixture clips (default %(default)s)")
    parser.add_argument(
        "--lrs2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"LRS2 section: fake {LRS2_SIZE}x{LRS2_SIZE} main tree, decode floor, end to end with "
        f"{' and '.join(LRS2_DETECTORS)}, resume, projections for the real release (default: on)",
    )
    parser.add_argument("--skip-lrs2", dest="lrs2", action="store_false", help="skip the LRS2 section (same as --no-lrs2)")
    parser.add_argument(
        "--lrs2-clips",
        type=int,
        default=DEFAULT_LRS2_CLIPS,
        help=f"clips of {LRS2_CLIP_SECONDS:g} s in the fake LRS2 tree (default %(default)s)",
    )
    parser.add_argument("--suite", choices=("12", "3"), default="12",
                        help="12: issue 12's Must show (floors, LRS2-shaped, full clips, scaling with CPU-s/frame, S3FD baseline, RSS); "
                        "3: the issue 2/3 report (corpus, LRS2 projections). Default %(default)s")
    parser.add_argument("--quick", action="store_true", help="suite 12 on small inputs (12 LRS2 clips, 8-clip folder, 0.5-min long clip): a smoke run")
    parser.add_argument("--markdown", action="store_true", help="print only the ready-to-paste markdown section on stdout (progress on stderr)")
    args = parser.parse_args(argv)
    args.long_minutes_given = any(a.startswith("--long-minutes") for a in (argv if argv is not None else sys.argv[1:]))
    if args.minutes <= 0 or args.long_minutes <= 0:
        parser.error("--minutes and --long-minutes must be > 0")
    if args.lrs2 and args.lrs2_clips < MIN_SHARDS:
        parser.error(f"--lrs2-clips must be >= {MIN_SHARDS} (the end-to-end runs need that many shards)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the inputs, measure everything, print and write the table. Returns the exit code."""
    args = parse_args(argv)
    command = ["python", *sys.argv] if argv is None else ["python", "bench/prep.py", *argv]
    os.environ.update(WORKER_ENV)  # the floors and the child run with the Ray workers' settings
    import cv2

    cv2.setNumThreads(1)  # as prepare_shard does in every worker

    work = (args.work or Path(tempfile.mkdtemp(prefix="cals-bench-prep-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = args.results or work / "results.md"
    fixtures = sorted(args.fixtures.glob(FIXTURE_GLOB))
    if not fixtures:
        print(f"no {FIXTURE_GLOB} in {args.fixtures}", file=sys.stderr)
        return 2

    print(f"[bench] work folder {work}", file=sys.stderr)
    if args.suite == "12":
        text = run_suite12(args, command, work).markdown()
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(text, encoding="utf-8")
        print(text)
        print(f"[bench] results written to {results}", file=sys.stderr)
        return 0
    corpus = work / "corpus"
    clip_s = build_corpus(fixtures, corpus, args.minutes)
    paths = corpus_videos(corpus)
    report = Report(header=report_header(command, work))
    add_corpus_rows(report, paths, clip_s)

    print("[bench] floors", file=sys.stderr)
    decode = measure_decode(paths)
    detect = measure_decode_detect(paths, args.detector)
    add_floor_rows(report, decode, detect, args.detector)

    print("[bench] end to end, 1 then 2 workers", file=sys.stderr)
    one = measure_end_to_end(prepare_folder(corpus, val=0, test=0), work / "out_w1", 1, args.detector, command)
    two = measure_end_to_end(prepare_folder(corpus, val=0, test=0), work / "out_w2", 2, args.detector, command)
    add_end_to_end_rows(report, one, two, detect)

    if args.skip_long:
        report.notes.append("long-clip memory test skipped (--skip-long)")
    else:
        print(f"[bench] long clip ({args.long_minutes:g} min, {LONG_WIDTH}x{LONG_HEIGHT})", file=sys.stderr)
        long_path = build_long_clip(args.fixtures / LONG_SOURCE, work / "long", args.long_minutes)
        add_long_rows(report, measure_long_clip(long_path, args.detector), args.long_minutes)

    if args.lrs2:
        run_lrs2_section(args, fixtures, work, command, report)
    else:
        report.notes.append("LRS2 section skipped (--skip-lrs2)")

    report.notes.append(
        "per core = frames/s divided by Ray workers; ffmpeg decodes in its own process with its own "
        "threads, so a 'core' here is one Python worker, not one hardware thread"
    )
    text = report.markdown()
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text, encoding="utf-8")
    print(text)
    print(f"[bench] results written to {results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
