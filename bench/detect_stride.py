#!/usr/bin/env python
"""Crop deviation of ``--detect-every k`` (with the tracker's re-detect) against every-frame
detection, on every fixture clip (issue 12, "Detection amortised without losing quality").

Each clip is decoded once; its frames go, in lockstep, through one face stage
(:func:`pipeline.stages.face.face_track`, prep's default track/crop parameters) per stride k.
Per clip and k it reports:

- box deviation in 128-crop pixels: per frame, the largest of the four square-box coordinates'
  differences from the k=1 square, scaled by ``crop.size / side`` of the k=1 square; the mean
  and the max over the clip's frames;
- the lip-top statistic of prep (:func:`pipeline.prepare_clip.measure_lip_top`, on the JPEG crops
  as prep encodes them): the median row of the upper lip's top edge, and its difference from k=1;
- detections per frame (scheduled + re-detected) and the seconds spent in the detector.

The summary line names the fastest k whose mean deviation stays under ``--limit-px`` (1 px) on
every clip: the ``PrepParams.detect_every`` default. Prints a markdown table and writes it to
``--results`` (default: stdout only).

Run: ``python bench/detect_stride.py`` (about 3-6 min on 2 shared cores; ``--strides 1,2,4``).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cals.shard_format import encode_frames  # noqa: E402
from pipeline.io import iter_frames, probe  # noqa: E402
from pipeline.prepare_clip import PrepParams, measure_lip_top  # noqa: E402
from pipeline.stages.detect import make_detector  # noqa: E402
from pipeline.stages.face import REDETECT_IOU, REDETECT_SCORE, face_track  # noqa: E402

FIXTURE_DIR = REPO.parent / "shared" / "fixtures" / "video"
DEFAULT_STRIDES = (1, 2, 3, 4, 5, 6, 8, 10)
#: The quality bar of the issue: mean deviation under this many 128-crop pixels on every clip.
LIMIT_PX = 1.0


class TimedDetector:
    """A detector wrapper that adds up the seconds and frames of its calls (one per stride)."""

    def __init__(self, detector) -> None:
        self.detector, self.name, self.seconds, self.frames = detector, detector.name, 0.0, 0

    def __call__(self, frames):
        started = time.perf_counter()
        try:
            return self.detector(frames)
        finally:
            self.seconds += time.perf_counter() - started
            self.frames += len(frames)


@dataclass(frozen=True)
class StrideResult:
    clip: str
    every: int
    frames: int
    mean_px: float
    max_px: float
    lip_top: Optional[float]
    lip_top_delta: Optional[float]
    detections_per_frame: float
    detect_s: float


def deviation_px(reference: np.ndarray, other: np.ndarray, size: int) -> np.ndarray:
    """Per frame: max |coordinate difference| of ``(T, 4)`` xyxy squares, in ``size``-crop pixels."""
    side = np.maximum(reference[:, 2] - reference[:, 0], 1e-6)
    return np.abs(other - reference).max(axis=1) * size / side


def measure_clip(path: Path, strides: Sequence[int], detector, params: PrepParams) -> list[StrideResult]:
    """Every stride over one decode of ``path`` (see the module docstring)."""
    info = probe(str(path))
    copies = itertools.tee(iter_frames(info), len(strides))
    timed = [TimedDetector(detector) for _ in strides]
    stages = [face_track(frames, t, params.track, params.crop, every) for frames, t, every in zip(copies, timed, strides)]
    squares: list[list[tuple[float, ...]]] = [[] for _ in strides]
    crops: list[list[bytes]] = [[] for _ in strides]
    for faces in zip(*stages):
        for k, face in enumerate(faces):
            squares[k].append(tuple(face.square))
            crops[k].append(encode_frames(face.crop[None], params.codec, params.jpeg_quality)[0])
    reference = np.asarray(squares[0], np.float64)
    lips = [measure_lip_top(encoded).median for encoded in crops]
    results = []
    for k, every in enumerate(strides):
        dev = deviation_px(reference, np.asarray(squares[k], np.float64), params.crop.size)
        delta = None if lips[k] is None or lips[0] is None else lips[k] - lips[0]
        results.append(StrideResult(path.name, every, len(reference), float(dev.mean()), float(dev.max()), lips[k], delta,
                                    timed[k].frames / max(1, len(reference)), timed[k].seconds))
    return results


def fastest_ok(results: list[StrideResult], limit_px: float) -> int:
    """The largest stride whose mean deviation is under ``limit_px`` on every clip (and every
    smaller stride's too, so the choice is not a lucky outlier)."""
    strides = sorted({r.every for r in results})
    best = strides[0]
    for every in strides:
        if all(r.mean_px < limit_px for r in results if r.every == every):
            best = every
        else:
            break
    return best


def fmt(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"


def markdown(results: list[StrideResult], limit_px: float, command: str) -> str:
    lines = [
        f"Command: `{command}`; machine: {platform.node()} ({platform.processor() or platform.machine()}), "
        f"load {open('/proc/loadavg').read().split()[0] if Path('/proc/loadavg').exists() else '?'}; "
        f"re-detect below score {REDETECT_SCORE} or IoU {REDETECT_IOU}.",
        "",
        "| clip | frames | k | mean dev (128-px) | max dev (128-px) | lip top row (Δ vs k=1) | detections/frame | detector s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lip = "—" if r.lip_top is None else f"{r.lip_top:.1f} ({r.lip_top_delta:+.1f})" if r.lip_top_delta is not None else f"{r.lip_top:.1f}"
        lines.append(f"| {r.clip} | {r.frames} | {r.every} | {r.mean_px:.3f} | {r.max_px:.2f} | {lip} | {r.detections_per_frame:.3f} | {r.detect_s:.1f} |")
    lines.append("")
    strides = sorted({r.every for r in results})
    lines.append("| k | worst clip mean dev | worst clip max dev | detections/frame (all clips) | detector s (all clips) |")
    lines.append("|---|---|---|---|---|")
    for every in strides:
        rows = [r for r in results if r.every == every]
        frames = sum(r.frames for r in rows)
        detections = sum(r.detections_per_frame * r.frames for r in rows) / max(1, frames)
        lines.append(f"| {every} | {max(r.mean_px for r in rows):.3f} | {max(r.max_px for r in rows):.2f} | {detections:.3f} | {sum(r.detect_s for r in rows):.1f} |")
    lines.append("")
    lines.append(f"Fastest k with mean deviation < {limit_px} px on every clip: **{fastest_ok(results, limit_px)}**")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=FIXTURE_DIR, help="folder of fixture videos (default %(default)s)")
    parser.add_argument("--strides", default=",".join(map(str, DEFAULT_STRIDES)), help="comma-separated k values; 1 is added (default %(default)s)")
    parser.add_argument("--limit-px", type=float, default=LIMIT_PX, help="mean deviation bar in 128-crop pixels (default %(default)s)")
    parser.add_argument("--detector", default=PrepParams.detector, help="face detector (default %(default)s)")
    parser.add_argument("--results", type=Path, default=None, help="also write the markdown here")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import cv2
    from rich.progress import track

    cv2.setNumThreads(1)  # as prep's workers do
    args = parse_args(argv)
    strides = sorted({1, *(int(k) for k in args.strides.split(","))})
    clips = sorted(p for p in args.fixtures.iterdir() if p.suffix in (".mp4", ".avi")) if args.fixtures.is_dir() else []
    if not clips:
        print(f"no fixture videos under {args.fixtures}", file=sys.stderr)
        return 2
    params = PrepParams(detector=args.detector)
    detector = make_detector(params.detector, params.mediapipe_model)
    results: list[StrideResult] = []
    for clip in track(clips, description="clips", transient=True):
        results.extend(measure_clip(clip, strides, detector, params))
    command = "python bench/detect_stride.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(results, args.limit_px, command.strip())
    print(table)
    if args.results:
        args.results.write_text(table)
        print(f"wrote {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
