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

Prints a markdown table (with PASS/MISS against the targets) and writes it to ``--results``.
Smoke run (about a minute): ``python bench/prep.py --minutes 0.3 --long-minutes 0.3 --lrs2-clips 8``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

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
    args = parser.parse_args(argv)
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
