"""The face stage: decoded frames → one tracked 128x128 face crop per frame.

The one chain both ``cals-prep`` and ``cals-generate`` (and ``cals-sync`` on raw videos) crop
faces with:

1. **Detect** (:func:`detected_stream`): the detector sees every ``every``-th frame, in batches
   of :data:`DETECT_BATCH` frames.
2. **Track** (:func:`pipeline.stages.track.track_faces`): one face per clip, gaps filled,
   boxes smoothed.
3. **Square** (:func:`pipeline.stages.crop.crop_square`): the detection box → the integer
   square crop box (margin, chin shift, clamped in the frame).
4. **Crop** (:func:`pipeline.stages.crop.crop_frame`): cut and resize to ``crop.size``².

A detector whose boxes already are the crop squares (the whole-frame detector ``none``) provides
``squares(frames)`` and replaces steps 1-3 with it: nothing to track, nothing to enlarge.

Memory: at most the tracker's look-ahead of decoded frames (see :mod:`pipeline.stages.track`)
plus one detector batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, Optional

import numpy as np

from pipeline.stages.crop import Box, CropParams, crop_frame, crop_square
from pipeline.stages.detect import Detection, Detector
from pipeline.stages.track import TrackParams, track_faces

#: Frames handed to the detector at once.
DETECT_BATCH = 16


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


def detected_stream(
    frames: Iterable[np.ndarray], detector: Detector, every: int = 1
) -> Iterator[tuple[np.ndarray, Optional[list[Detection]]]]:
    """``(frame, detections)`` per frame: detections on every ``every``-th frame (index 0, every,
    2·every, ...), None on the others; the detector runs on batches of :data:`DETECT_BATCH`."""
    frames = iter(frames)
    index = 0
    while True:
        batch = list(islice(frames, DETECT_BATCH))
        if not batch:
            return
        wanted = [i for i in range(len(batch)) if (index + i) % every == 0]
        found = detector([batch[i] for i in wanted]) if wanted else []
        results: list[Optional[list[Detection]]] = [None] * len(batch)
        for i, dets in zip(wanted, found):
            results[i] = dets
        yield from zip(batch, results)
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
