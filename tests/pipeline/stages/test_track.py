import numpy as np
import pytest

from pipeline.stages.detect import Detection
from pipeline.stages.track import TrackParams, choose_dominant, iou, track_faces

FRAME = np.zeros((360, 640, 3), np.uint8)


def face(x: float, y: float = 100, size: float = 100, score: float = 0.9) -> Detection:
    return Detection((x, y, x + size, y + size), score)


def run(dets, params=TrackParams()):
    out = list(track_faces(((FRAME, d) for d in dets), params))
    assert len(out) == len(dets)
    return out


def test_dominant_face_wins_over_a_brief_larger_one():
    dets = [[face(100)] for _ in range(30)]
    dets[0] = [face(100), face(400, size=150)]  # a big face on one frame only
    out = run(dets)
    assert all(abs(t.box[0] - 100) < 1e-6 for t in out)


def test_no_flip_between_two_persistent_faces():
    # Two faces all along: the main one (bigger, more confident) is kept even when only the
    # other is detected for a few frames.
    dets = [[face(100, size=120), face(400, size=90, score=0.8)] for _ in range(40)]
    for t in range(20, 24):
        dets[t] = [face(400, size=90, score=0.8)]
    out = run(dets)
    assert max(t.box[0] for t in out) < 110
    assert all(t.score == 0 for t in out[20:24])


def test_detect_every_is_linearly_interpolated_then_smoothed():
    # Face moving right 2 px/frame, detected every 5th frame: boxes in between on the line.
    dets = [[face(100 + 2 * t)] if t % 5 == 0 else None for t in range(51)]
    out = run(dets, TrackParams(smooth_frames=1))
    np.testing.assert_allclose([t.box[0] for t in out], [100 + 2 * t for t in range(51)], atol=1e-6)
    assert [t.score > 0 for t in out] == [t % 5 == 0 for t in range(51)]
    assert [t.faces for t in out[:6]] == [1, -1, -1, -1, -1, 1]


def test_long_gap_holds_the_last_box_and_leading_frames_take_the_first():
    dets = [[] for _ in range(5)] + [[face(100)]] * 10 + [[] for _ in range(40)] + [[face(300)]] * 10
    out = run(dets, TrackParams(smooth_frames=1, max_gap=25))
    assert all(t.box[0] == 100 for t in out[:5])  # backfilled
    assert all(t.box[0] == 100 for t in out[15:55])  # held: gap of 40 > max_gap
    assert all(t.box[0] == 300 for t in out[55:])  # re-acquired


def test_smoothing_removes_jitter():
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 3, 100)
    out = run([[face(200 + j)] for j in jitter], TrackParams(smooth_frames=7))
    smoothed = np.array([t.box[0] for t in out]) - 200
    assert smoothed[5:-5].std() < 0.5 * jitter[5:-5].std()


def test_no_face_at_all_gives_fallback_boxes_with_zero_scores():
    out = run([[] for _ in range(30)])
    assert all(t.score == 0 and t.box == (140.0, 0.0, 500.0, 360.0) for t in out)


def test_memory_is_bounded():
    # The tracker must yield frame t before it has pulled much more than max_gap + radius frames.
    params = TrackParams(max_gap=10, smooth_frames=5, init_frames=8)
    pulled = []

    def source():
        for t in range(500):
            pulled.append(t)
            yield FRAME, ([face(100)] if t % 50 == 0 else [])

    for index, _ in enumerate(track_faces(source(), params)):
        assert len(pulled) - index <= max(params.init_frames, params.max_gap + 2 + params.smooth_frames // 2) + 1


def test_iou_and_dominant_helpers():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert choose_dominant([None, []], 0.3) is None


def test_even_smoothing_window_is_refused():
    with pytest.raises(ValueError, match="odd"):
        TrackParams(smooth_frames=4)
