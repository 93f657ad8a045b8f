"""--detect-every k re-detects where the track grows uncertain: a scheduled detection whose face
jumped (IoU drop), scores low, or is lost re-detects the frames skipped before it; a steady face
costs only the scheduled detections."""

import numpy as np
import pytest

from pipeline.stages import face as face_stage
from pipeline.stages.detect import Detection
from pipeline.stages.face import DETECT_BATCH, REDETECT_SCORE, detected_stream

STILL = (40.0, 30.0, 100.0, 110.0)
MOVED = (70.0, 30.0, 130.0, 110.0)  # IoU with STILL 1/3


class ScriptedDetector:
    """Frames carry their index in pixel [0, 0, 0]; ``script(index)`` gives that frame's faces."""

    name = "scripted"

    def __init__(self, script) -> None:
        self.script = script
        self.seen: list[int] = []

    def __call__(self, frames):
        indices = [int(f[0, 0, 0]) for f in frames]
        self.seen.extend(indices)
        return [self.script(i) for i in indices]


def indexed_frames(count: int) -> list[np.ndarray]:
    frames = [np.zeros((8, 8, 3), np.uint8) for _ in range(count)]
    for i, frame in enumerate(frames):
        frame[0, 0, 0] = i
    return frames


def detected(script, count: int, every: int) -> tuple[list[int], list[int]]:
    """(indices of frames with detections, in stream order; every frame index yielded, in order)."""
    stream = list(detected_stream(indexed_frames(count), ScriptedDetector(script), every))
    order = [int(f[0, 0, 0]) for f, _ in stream]
    return [i for i, (_, dets) in zip(order, stream) if dets is not None], order


def jump_at_10(i):
    return [Detection(STILL if i < 10 else MOVED, 0.9)]


def weak_at_12(i):
    return [Detection(STILL, REDETECT_SCORE / 2 if i == 12 else 0.9)]


def lost_from_21(i):
    return [Detection(STILL, 0.9)] if i < 21 else []


def assert_redetects(detect) -> None:
    count = 2 * DETECT_BATCH + 3
    scheduled = list(range(0, count, 4))
    # a jump between 8 and 12 re-detects 9-11 (frames after a batch's last scheduled one wait for it)
    found, order = detect(jump_at_10, count, 4)
    assert order == list(range(count)) and found == sorted(set(scheduled) | {9, 10, 11})
    found, _ = detect(weak_at_12, count, 4)
    assert found == sorted(set(scheduled) | {9, 10, 11})
    # lost at 21 (scheduled 24 has none): 21-23 re-detected; 17-19 not (steady)
    found, _ = detect(lost_from_21, count, 4)
    assert found == sorted(set(scheduled) | {21, 22, 23})
    # across a batch boundary: a jump at 15 (scheduled 12 → 16) re-detects 13-15 of the first batch
    found, _ = detect(lambda i: [Detection(STILL if i < 15 else MOVED, 0.9)], count, 4)
    assert found == sorted(set(scheduled) | {13, 14, 15})


def test_redetect_where_the_track_drops():
    assert_redetects(detected)


def test_a_steady_face_costs_only_the_scheduled_detections_and_every_1_is_unchanged():
    detector = ScriptedDetector(lambda i: [Detection(STILL, 0.9)])
    stream = list(detected_stream(indexed_frames(40), detector, every=5))
    assert detector.seen == list(range(0, 40, 5)) and len(stream) == 40
    found, order = detected(jump_at_10, 40, 1)
    assert found == order == list(range(40))


def test_the_check_rejects_a_stream_without_redetection(monkeypatch):
    monkeypatch.setattr(face_stage, "needs_redetect", lambda previous, current: False)
    with pytest.raises(AssertionError):
        assert_redetects(detected)
