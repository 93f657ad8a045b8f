"""Every face track of a clip (``--tracks all|speaker``): per scene, IoU tracks of the detections.

Input: the detections of the examined 25 fps frames (boxes xyxy in the decoded window's pixels,
scores in [0, 1]) and the scenes (:mod:`pipeline.stages.scenes`). Per scene, the greedy IoU
tracker of syncnet_python (:func:`pipeline.sync_protocols.track_shot`, one implementation for
``cals-sync`` and prep) links detections whose IoU with the track's last box reaches
``TrackParams.iou_min`` at most ``TrackParams.max_gap`` frames apart; the boxes between two
detections are linear interpolations (score 0), and frames the detector skipped
(``--detect-every``) right before the first or after the last detection hold that box. A track never crosses a cut: each scene is
tracked on its own. Tracks that overlap in time stay separate tracks.

Each track's boxes are then smoothed as the dominant track's are (centred moving average over
``smooth_frames``, truncated at the track's ends: :func:`smooth_boxes`) and squared by
:func:`pipeline.stages.crop.crop_square`. Tracks are numbered per scene in order of their first
frame (ties: left to right).

Memory: boxes and scores only (a few floats per detection); the crops are cut in a second pass
over the frames (:mod:`pipeline.prepare_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pipeline.stages.crop import CropParams, crop_square
from pipeline.stages.detect import Detection
from pipeline.stages.track import TrackParams


@dataclass(frozen=True)
class FaceTrack:
    """One face track of one scene.

    Attributes:
        scene: scene index in the clip (0-based).
        index: track index within its scene (0-based, by first frame, then left edge).
        first: first 25 fps frame of the clip (window) it covers; it covers ``first .. first + n - 1``.
        boxes: ``(n, 4)`` float64 detection boxes xyxy (window pixels), interpolated between detections.
        scores: ``(n,)`` float64 the frame's own detection score; 0 = interpolated.
        faces: ``(n,)`` int64 detections on the frame; -1 = not examined (``--detect-every``).
    """

    scene: int
    index: int
    first: int
    boxes: np.ndarray
    scores: np.ndarray
    faces: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def end(self) -> int:
        """One past the last frame."""
        return self.first + self.num_frames

    @property
    def detected(self) -> int:
        """Frames with their own detection."""
        return int(np.count_nonzero(self.scores))

    @property
    def examined(self) -> int:
        return int(np.count_nonzero(self.faces >= 0))

    @property
    def interpolated_share(self) -> float:
        """Share of the track's frames whose box was interpolated (no own detection)."""
        return 1.0 - self.detected / max(self.num_frames, 1)

    @property
    def face_px(self) -> float:
        """Median larger side of the track's detection boxes (own detections only), source pixels."""
        own = self.boxes[self.scores > 0]
        own = own if own.size else self.boxes
        return float(np.median(np.maximum(own[:, 2] - own[:, 0], own[:, 3] - own[:, 1])))

    def suffix(self) -> str:
        """The sample key suffix: ``s<scene>t<track>``, two digits each (more when needed)."""
        return f"s{self.scene:02d}t{self.index:02d}"


def scene_tracks(
    detections: Sequence[Optional[list[Detection]]], first: int, end: int, scene: int, params: TrackParams
) -> list[FaceTrack]:
    """The face tracks of frames ``first .. end - 1`` of a clip whose per-frame ``detections`` (None:
    frame not examined) are given for the whole clip (module docstring)."""
    from pipeline.sync_protocols import SyncnetPythonParams, track_shot

    faces = [(i, detections[i]) for i in range(first, end) if detections[i] is not None]
    linked = track_shot(faces, SyncnetPythonParams(iou_threshold=params.iou_min, num_failed_det=params.max_gap, min_track=0, min_face_size=0.0))
    score_of = {(i, tuple(d.box)): d.score for i, dets in faces for d in dets}
    built = []
    for track in linked:
        frames, boxes = _held_over_unexamined(track.frames.astype(int), track.boxes, detections, first, end)
        scores = np.array([score_of.get((int(i), tuple(b)), 0.0) for i, b in zip(frames, boxes.tolist())])
        counts = np.array([-1 if detections[i] is None else len(detections[i]) for i in frames], dtype=np.int64)
        built.append((int(frames[0]), float(boxes[0, 0]), boxes, scores, counts))
    built.sort(key=lambda t: (t[0], t[1]))
    return [FaceTrack(scene, k, start, boxes, scores, counts) for k, (start, _, boxes, scores, counts) in enumerate(built)]


def _held_over_unexamined(
    frames: np.ndarray, boxes: np.ndarray, detections: Sequence[Optional[list[Detection]]], first: int, end: int
) -> tuple[np.ndarray, np.ndarray]:
    """Extend a track over the frames right before and after it that the detector skipped
    (``--detect-every``; None in ``detections``) within the scene ``first .. end - 1``, holding
    its first / last box: a skipped frame is not a missed face."""
    start, stop = int(frames[0]), int(frames[-1]) + 1
    while start > first and detections[start - 1] is None:
        start -= 1
    while stop < end and detections[stop] is None:
        stop += 1
    before, after = int(frames[0]) - start, stop - 1 - int(frames[-1])
    held = np.concatenate([np.repeat(boxes[:1], before, axis=0), boxes, np.repeat(boxes[-1:], after, axis=0)])
    return np.arange(start, stop), held


def smooth_boxes(boxes: np.ndarray, smooth_frames: int) -> np.ndarray:
    """Centred moving average of ``(n, 4)`` boxes over ``smooth_frames`` (odd) frames, the window
    truncated at both ends (the dominant tracker's rule 4). Returns ``(n, 4)`` float64."""
    radius = smooth_frames // 2
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.stack([boxes[max(0, t - radius) : t + radius + 1].mean(axis=0) for t in range(boxes.shape[0])])


def track_squares(track: FaceTrack, width: int, height: int, track_params: TrackParams, crop: CropParams) -> np.ndarray:
    """``(n, 4)`` float64 square crop boxes (window pixels) of ``track`` in a ``width`` x ``height`` frame."""
    smoothed = smooth_boxes(track.boxes, track_params.smooth_frames)
    return np.array([crop_square(tuple(float(v) for v in box), width, height, crop) for box in smoothed], dtype=np.float64)
