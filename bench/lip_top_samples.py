#!/usr/bin/env python
"""How many crops the lip-top step (:func:`pipeline.prepare_clip.measure_lip_top`) needs: the
median and 1st percentile of the lip-top row from a few evenly spaced crops against FaceMesh on
every crop, on every talking fixture clip (issue 12: FaceMesh was 73 % of ``--detector none``
prep on 2 s clips).

Each clip is prepared once as prep does (default :class:`~pipeline.prepare_clip.PrepParams`,
the crops JPEG-encoded); FaceMesh runs once on every decoded crop (one landmarker); then each
sampling rule picks its crops (the same index rule as prep: evenly spaced, first and last
included) from those rows. Two sets: the whole clip, and every 2 s window of it (the length of
LRS2 / LRW-like corpora, where the count floor decides). Per rule it prints the largest and the
mean absolute difference of median and p1 from every-crop, in crop rows (of 128), and crops per
clip. Seconds per FaceMesh crop are timed too.

Run: ``python bench/lip_top_samples.py`` (about 1 min on one core).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cals.constants import FPS, LIP_TOP_MAX_SAMPLES, LIP_TOP_MIN_SAMPLES  # noqa: E402
from cals.metrics import MouthLandmarker  # noqa: E402
from cals.shard_format import decode_frames  # noqa: E402
from pipeline.manifest import ClipSource  # noqa: E402
from cals.shard_format import encode_frames  # noqa: E402
from pipeline.prepare_clip import PrepParams, check_faces, clip_faces, lip_top_indices, lip_top_rows, validate_clip  # noqa: E402
from pipeline.stages.detect import make_detector  # noqa: E402

FIXTURE_DIR = REPO.parent / "shared" / "fixtures" / "video"
WINDOW_FRAMES = 2 * FPS


def rule(frames_per_sample: int, least: int, most: int):
    return lambda n: min(n, max(least, min(most, -(-n // frames_per_sample))))


#: name -> crops for a clip of n frames
RULES = {
    "16 (before)": lambda n: min(n, 16),
    "1/s, floor 2, cap 16": rule(FPS, 2, 16),
    "1/s, floor 3, cap 16": rule(FPS, 3, 16),
    "1/s, floor 4, cap 16": rule(FPS, 4, 16),
    "1/s, floor 6, cap 16": rule(FPS, 6, 16),
    "1/2s, floor 4, cap 16": rule(2 * FPS, 4, 16),
    f"chosen: 1/s, floor {LIP_TOP_MIN_SAMPLES}, cap {LIP_TOP_MAX_SAMPLES}": rule(FPS, LIP_TOP_MIN_SAMPLES, LIP_TOP_MAX_SAMPLES),
}


def stats(rows: np.ndarray) -> tuple[float, float]:
    found = rows[~np.isnan(rows)]
    if not found.size:
        return np.nan, np.nan
    return float(np.median(found)), float(np.percentile(found, 1))


def main() -> None:
    import cv2

    cv2.setNumThreads(1)
    params = PrepParams()
    detector = make_detector(params.detector, params.mediapipe_model)
    every: dict[str, np.ndarray] = {}
    facemesh_s = facemesh_n = 0
    with MouthLandmarker() as landmarker:
        for path in sorted(FIXTURE_DIR.glob("talk_*")) + sorted(FIXTURE_DIR.glob("syncnet_*")):
            source = ClipSource(key="clip", path=str(path), dataset="d", split="train", speaker="s")
            info, window, expected = validate_clip(source, params)
            faces = clip_faces(info, window, detector, params, keep=lambda c: encode_frames(c[None], params.codec, params.jpeg_quality)[0])
            check_faces(faces, info, expected, params)
            crops = decode_frames(b"".join(faces.crops), [len(c) for c in faces.crops])
            started = time.perf_counter()
            every[path.name] = lip_top_rows(landmarker, crops)
            facemesh_s += time.perf_counter() - started
            facemesh_n += len(crops)
            print(f"[lip-top] {path.name}: {len(crops)} crops, FaceMesh found {np.count_nonzero(~np.isnan(every[path.name]))}", file=sys.stderr)
    detector.close()
    print(f"FaceMesh: {1000 * facemesh_s / facemesh_n:.1f} ms per 128x128 crop ({facemesh_n} crops, 1 thread)\n")
    for label, windows in (("whole clips", False), ("2 s windows", True)):
        print(f"### {label}\n")
        print("| rule | crops per clip (mean) | median: max / mean abs diff | p1: max / mean abs diff | worst clip (p1) |")
        print("|---|---|---|---|---|")
        for name, count in RULES.items():
            dmed, dp1, crops, worst = [], [], [], ("", 0.0)
            for clip, rows in every.items():
                spans = [(a, min(a + WINDOW_FRAMES, len(rows))) for a in range(0, len(rows) - WINDOW_FRAMES + 1, WINDOW_FRAMES)] if windows else [(0, len(rows))]
                for a, b in spans:
                    part = rows[a:b]
                    ref = stats(part)
                    picked = part[lip_top_indices(len(part), count(len(part)))]
                    got = stats(picked)
                    crops.append(len(picked))
                    if np.isnan(ref[0]) or np.isnan(got[0]):
                        continue
                    dmed.append(abs(got[0] - ref[0]))
                    dp1.append(abs(got[1] - ref[1]))
                    if dp1[-1] > worst[1]:
                        worst = (f"{clip} [{a}:{b}]", dp1[-1])
            print(f"| {name} | {np.mean(crops):.1f} | {max(dmed):.2f} / {np.mean(dmed):.2f} | {max(dp1):.2f} / {np.mean(dp1):.2f} | {worst[0]} {worst[1]:+.2f} |")
        print()


if __name__ == "__main__":
    main()
