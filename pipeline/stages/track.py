"""One face track per clip, streamed with a bounded look-ahead.

Input: per frame ``(frame, detections)`` where ``detections`` is a list (possibly empty) for an
examined frame or ``None`` for a frame skipped by ``--detect-every``. Output: per frame
``TrackedFrame(frame, box, score, faces)`` in order, with ``box`` the smoothed *detection* box
(xyxy, source pixels); the crop stage turns it into the square crop.

The rules, in order (all documented as flags with these defaults):

1. **Dominant face.** The first ``init_frames`` frames are buffered; every detection there is
   scored by the sum of ``score x area`` of the detections overlapping it (IoU >= ``iou_min``)
   across those frames. The best one seeds the track: the face that is large, confident and
   present throughout the opening, not whichever face happens to come first.
2. **Association.** Each examined frame keeps the detection with the highest IoU with the track's
   last box, if that IoU >= ``iou_min``; otherwise the frame counts as missing. After more than
   ``max_gap`` frames without a match the track re-acquires the best face (score x area), so a
   cut to another shot does not freeze the crop for the rest of the clip.
3. **Filling.** A missing frame between two matched frames at most ``max_gap + 1`` apart gets
   the linear interpolation of their boxes; one after a longer gap holds the last box; one before
   the first match takes the first match (when it comes within ``max_gap`` frames), else the
   centre-square fallback. Its score is 0.
4. **Smoothing.** A centred moving average over ``smooth_frames`` frames (truncated at the clip
   ends) of the four box coordinates; this removes detector jitter (1-3 px at 25 fps) without
   lagging head motion, which a causal filter would.

Memory: at most ``max(init_frames, max_gap + smooth_frames // 2 + 1)`` frames are held.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np

from pipeline.stages.detect import Detection, centre_square

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackParams:
    """Tracker settings (frames are 25 fps video frames)."""

    iou_min: float = 0.3
    init_frames: int = 25
    max_gap: int = 25
    smooth_frames: int = 7

    def __post_init__(self) -> None:
        if self.smooth_frames < 1 or self.smooth_frames % 2 == 0:
            raise ValueError(f"smooth_frames must be odd and >= 1, got {self.smooth_frames}")


@dataclass
class TrackedFrame:
    """``frame`` (H, W, 3) uint8; ``box`` smoothed detection box xyxy; ``score`` of the frame's own
    matched detection (0 = filled); ``faces`` detections on the frame (-1 = not examined)."""

    frame: np.ndarray
    box: Box
    score: float
    faces: int


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _salience(d: Detection) -> float:
    return d.score * _area(d.box)


def choose_dominant(window: list[Optional[list[Detection]]], iou_min: float) -> Optional[Detection]:
    """The detection whose face is most present in ``window`` (sum of score x area of the
    detections overlapping it); None when the window has no detection."""
    candidates = [d for dets in window if dets for d in dets]
    best, best_support = None, -1.0
    for candidate in candidates:
        support = sum(_salience(d) for d in candidates if iou(d.box, candidate.box) >= iou_min)
        if support > best_support:
            best, best_support = candidate, support
    return best


def _associate(
    items: Iterable[tuple[np.ndarray, Optional[list[Detection]]]], params: TrackParams
) -> Iterator[tuple[np.ndarray, Optional[Box], float, int]]:
    """Rules 1-2: yield ``(frame, matched box or None, score, faces)`` per frame."""
    iterator = iter(items)
    opening = []
    for item in iterator:
        opening.append(item)
        if len(opening) >= params.init_frames:
            break
    seed = choose_dominant([dets for _, dets in opening], params.iou_min)
    reference: Optional[Box] = seed.box if seed else None
    since_match = 0

    def step(frame: np.ndarray, dets: Optional[list[Detection]]):
        nonlocal reference, since_match
        faces = -1 if dets is None else len(dets)
        match = None
        if dets:
            if reference is None or since_match > params.max_gap:
                match = max(dets, key=_salience)
            else:
                best = max(dets, key=lambda d: iou(d.box, reference))
                if iou(best.box, reference) >= params.iou_min:
                    match = best
        if match is None:
            since_match += 1
            return frame, None, 0.0, faces
        reference, since_match = match.box, 0
        return frame, match.box, match.score, faces

    for frame, dets in opening:
        yield step(frame, dets)
    for frame, dets in iterator:
        yield step(frame, dets)


def track_faces(
    items: Iterable[tuple[np.ndarray, Optional[list[Detection]]]], params: TrackParams = TrackParams()
) -> Iterator[TrackedFrame]:
    """Rules 1-4 over a stream; yields one TrackedFrame per input frame, in order."""
    radius = params.smooth_frames // 2
    raw: list[Optional[Box]] = []
    filled: list[Box] = []
    pending: deque = deque()  # (frame, score, faces) of frames not yet yielded
    emitted = 0
    last_real: Optional[int] = None  # last index < len(filled) with a real box
    fallback: Optional[Box] = None

    def next_real(start: int) -> Optional[int]:
        for k in range(start, len(raw)):
            if raw[k] is not None:
                return k
        return None

    def resolve(eof: bool) -> None:
        nonlocal last_real
        while len(filled) < len(raw):
            j = len(filled)
            if raw[j] is not None:
                filled.append(raw[j])
                last_real = j
                continue
            n = next_real(j)
            p = last_real
            if n is not None:
                if p is not None and n - p <= params.max_gap + 1:
                    w = (j - p) / (n - p)
                    filled.append(tuple((1 - w) * a + w * b for a, b in zip(raw[p], raw[n])))
                elif p is not None:
                    filled.append(raw[p])
                elif n - j <= params.max_gap:
                    filled.append(raw[n])
                else:
                    filled.append(fallback)
            elif eof:
                filled.append(raw[p] if p is not None else fallback)
            elif p is not None and len(raw) - 1 - p > params.max_gap:
                filled.append(raw[p])
            elif p is None and len(raw) - 1 - j >= params.max_gap:
                filled.append(fallback)
            else:
                return

    def emit(eof: bool) -> Iterator[TrackedFrame]:
        nonlocal emitted
        while pending and (eof or len(filled) > emitted + radius):
            frame, score, faces = pending.popleft()
            window = np.asarray(filled[max(0, emitted - radius) : emitted + radius + 1], dtype=np.float64)
            box = tuple(float(v) for v in window.mean(axis=0))
            yield TrackedFrame(frame, box, score, faces)
            emitted += 1

    for frame, box, score, faces in _associate(items, params):
        if fallback is None:
            fallback = centre_square(frame.shape[1], frame.shape[0])
        raw.append(box)
        pending.append((frame, score, faces))
        resolve(eof=False)
        yield from emit(eof=False)
    resolve(eof=True)
    yield from emit(eof=True)
