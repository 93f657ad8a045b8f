"""The face stage: decoded frames → one tracked 128x128 face crop per frame.

The one chain both ``cals-prep`` and ``cals-generate`` (and ``cals-sync`` on raw videos) crop
faces with:

1. **Detect** (:func:`detected_stream`): the detector sees every ``every``-th frame, in batches
   of :data:`DETECT_BATCH` frames, and the frames skipped before a scheduled detection where the
   track grew uncertain there (:func:`needs_redetect`: score or IoU drop, a face lost or found).
2. **Track** (:func:`pipeline.stages.track.track_faces`): one face per clip, gaps filled,
   boxes smoothed.
3. **Square** (:func:`pipeline.stages.crop.crop_square`): the detection box → the integer
   square crop box (margin, chin shift, clamped in the frame).
4. **Crop** (:func:`pipeline.stages.crop.crop_frame`): cut and resize to ``crop.size``².

A detector whose boxes already are the crop squares (the whole-frame detector ``none``) provides
``squares(frames)`` and replaces steps 1-3 with it: nothing to track, nothing to enlarge.

Memory: at most the tracker's look-ahead of decoded frames (see :mod:`pipeline.stages.track`)
plus one detector batch and the ``every - 1`` frames held after a batch's last scheduled
detection (until the next one says whether they need re-detecting).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, Optional

import numpy as np

from pipeline.stages.crop import Box, CropParams, crop_frame, crop_square
from pipeline.stages.detect import Detection, Detector
from pipeline.stages.track import TrackParams, iou, track_faces

#: Frames handed to the detector at once.
DETECT_BATCH = 16
#: With ``every`` > 1, a scheduled detection whose tracked face scores below REDETECT_SCORE, or
#: overlaps the previous scheduled detection's face with IoU below REDETECT_IOU, re-detects the
#: frames skipped in between (measured per fixture clip: bench/detect_stride.py, BENCHMARKS.md).
REDETECT_SCORE = 0.5
REDETECT_IOU = 0.8


@dataclass(frozen=True)
class FaceFrame:
    """One frame's face.

    Attributes:
        index: frame index in the stream (0-based, 25 fps frames).
        square: the integer-aligned square crop box, xyxy, in the input frame's pixels (float;
            may reach past the frame, where the crop is black).
        crop: ``(crop.size, crop.size, 3)`` uint8 RGB face crop.
        score: the frame's own detection score in [0, 1]; 0 = box filled in by the tracker
            (interpolated, held or fallback).
        faces: detections on the frame; -1 = not examined (skipped by ``every``).
    """

    index: int
    square: Box
    crop: np.ndarray
    score: float
    faces: int

    @property
    def detected(self) -> bool:
        """The frame has its own detection (not filled in)."""
        return self.score > 0

    @property
    def examined(self) -> bool:
        """The detector looked at this frame."""
        return self.faces >= 0


def needs_redetect(previous: list[Detection], current: list[Detection]) -> bool:
    """True when the track grew uncertain between two scheduled detections: a face lost or
    found, or the current face nearest the previous most salient one (score × area) has IoU with
    it below REDETECT_IOU or a score below REDETECT_SCORE."""
    if not previous or not current:
        return bool(previous) != bool(current)
    tracked = max(previous, key=lambda d: d.score * (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    nearest = max(current, key=lambda d: iou(d.box, tracked.box))
    return iou(nearest.box, tracked.box) < REDETECT_IOU or nearest.score < REDETECT_SCORE


def detected_stream(
    frames: Iterable[np.ndarray], detector: Detector, every: int = 1
) -> Iterator[tuple[np.ndarray, Optional[list[Detection]]]]:
    """``(frame, detections)`` per frame: detections on every ``every``-th frame (index 0, every,
    2·every, ...) and on the frames skipped before one that :func:`needs_redetect` (compared with
    the scheduled detection before it), None on the others; the detector runs on batches of
    :data:`DETECT_BATCH` (plus one batch of re-detections where needed). ``every`` = 1 detects
    every frame, nothing to re-detect."""
    frames = iter(frames)
    index = 0
    held: list[tuple[np.ndarray, Optional[list[Detection]]]] = []  # after the last scheduled detection
    last: Optional[list[Detection]] = None  # the last scheduled detection's faces
    while True:
        batch = list(islice(frames, DETECT_BATCH))
        if not batch:
            yield from held
            return
        wanted = [i for i in range(len(batch)) if (index + i) % every == 0]
        found = detector([batch[i] for i in wanted]) if wanted else []
        results: list[Optional[list[Detection]]] = [None] * len(batch)
        for i, dets in zip(wanted, found):
            results[i] = dets
        rows = held + list(zip(batch, results))
        redo: list[int] = []
        gap_start = 0  # first row after the previous scheduled detection
        for i in wanted:
            row = len(held) + i
            if last is not None and needs_redetect(last, rows[row][1] or []):
                redo.extend(range(gap_start, row))
            last, gap_start = rows[row][1] or [], row + 1
        if redo:
            for row, dets in zip(redo, detector([rows[r][0] for r in redo])):
                rows[row] = (rows[row][0], dets)
        yield from rows[:gap_start]
        held = rows[gap_start:]
        index += len(batch)


def tracked_squares(
    frames: Iterable[np.ndarray], detector: Detector, track: TrackParams, crop: CropParams, every: int = 1
) -> Iterator[tuple[np.ndarray, Box, float, int]]:
    """Steps 1-3: ``(frame, square, score, faces)`` per frame (see :class:`FaceFrame`)."""
    for tracked in track_faces(detected_stream(frames, detector, every), track):
        height, width = tracked.frame.shape[:2]
        yield tracked.frame, crop_square(tracked.box, width, height, crop), tracked.score, tracked.faces


def face_track(
    frames: Iterable[np.ndarray],
    detector: Detector,
    track: TrackParams = TrackParams(),
    crop: CropParams = CropParams(),
    every: int = 1,
) -> Iterator[FaceFrame]:
    """One :class:`FaceFrame` per ``(H, W, 3)`` uint8 RGB input frame, in order (see the module
    docstring); ``every`` applies to detectors that track."""
    own_squares = getattr(detector, "squares", None)
    located = own_squares(frames) if own_squares is not None else tracked_squares(frames, detector, track, crop, every)
    for index, (frame, square, score, faces) in enumerate(located):
        yield FaceFrame(index, square, crop_frame(frame, square, crop.size), score, faces)
