"""Scenes, face tracks, keys, quality filters and --max-seconds splits on synthetic inputs (fast:
no video decode, no detector). The clips test is tests/pipeline/test_tracks.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cals.constants import AUDIO_SAMPLES_PER_FRAME
from cals.shard_format import is_valid_key
from pipeline.errors import REASONS
from pipeline.manifest import TRACK_COLUMNS, manifest_row, read_rows, write_parquet, ClipSource
from pipeline.prepare_clip import PrepParams
from pipeline.prepare_tracks import SceneStream, sample_key, speaker_verdicts, split_points
from pipeline.stages.detect import Detection
from pipeline.stages.quality import QualityParams, interpolated_share, interpolation_verdict, sharpness, sharpness_verdict, size_verdict
from pipeline.stages.scenes import SceneSplitter, scene_ranges
from pipeline.stages.track import TrackParams
from pipeline.stages.tracks import scene_tracks, smooth_boxes


def flat_frames(levels: list[int], size: int = 64) -> list[np.ndarray]:
    """One ``(size, size, 3)`` uint8 frame per grey level, with a little texture."""
    rng = np.random.default_rng(0)
    return [np.clip(level + rng.integers(-3, 4, (size, size, 3)), 0, 255).astype(np.uint8) for level in levels]


def test_scene_splitter_finds_a_hard_cut_and_scene_stream_splits_there():
    frames = flat_frames([40] * 30 + [220] * 30)
    splitter = SceneSplitter()
    segments = [len(list(segment)) for segment in SceneStream(frames, splitter).segments()]
    assert splitter.cuts == [30] and segments == [30, 30]
    assert splitter.ranges(60) == [(0, 30), (30, 60)]
    # No cut in a steady shot: one scene, one segment (the dominant path keeps its one sample).
    steady = SceneSplitter()
    assert [len(list(s)) for s in SceneStream(flat_frames([40] * 40), steady).segments()] == [40] and steady.cuts == []


def test_scene_ranges_cover_the_clip():
    assert scene_ranges([], 10) == [(0, 10)]
    assert scene_ranges([0, 4, 4, 12], 10) == [(0, 4), (4, 10)]


def face(x: float, score: float = 0.9) -> Detection:
    return Detection((x, 20.0, x + 40.0, 60.0), score)


def test_tracks_never_cross_a_cut_and_overlapping_faces_are_separate_tracks():
    # Two faces side by side in frames 0..59, the left one alone after a cut at 60 (same place).
    detections = [[face(10), face(100)] for _ in range(60)] + [[face(10)] for _ in range(40)]
    detections[5] = [face(100)]  # the left face missed once: interpolated
    params = TrackParams()
    scenes = scene_ranges([60], 100)
    tracks = [t for index, (first, end) in enumerate(scenes) for t in scene_tracks(detections, first, end, index, params)]
    assert [(t.scene, t.index, t.first, t.num_frames) for t in tracks] == [(0, 0, 0, 60), (0, 1, 0, 60), (1, 0, 60, 40)]
    left = tracks[0]
    assert left.scores[5] == 0 and left.detected == 59 and left.boxes[5, 0] == pytest.approx(10)
    assert all(t.end <= 60 or t.first >= 60 for t in tracks)
    # The broken variant: one scene over the cut gives a left track that does cross it.
    crossing = scene_tracks(detections, 0, 100, 0, params)
    assert any(t.first < 60 < t.end for t in crossing)


def test_a_track_holds_its_box_over_skipped_frames_at_its_ends_not_over_missed_ones():
    # Every 3rd frame examined (--detect-every 3); frames 0..8 of a scene of 10, a face on each examined one.
    detections = [[face(10)] if i % 3 == 0 else None for i in range(10)]
    (track,) = scene_tracks(detections, 0, 10, 0, TrackParams())
    assert (track.first, track.num_frames) == (0, 10) and track.examined == 4 and track.detected == 4
    # Examined and empty (a missed face) at the end: the track stops at its last detection.
    detections[9] = []
    (track,) = scene_tracks(detections, 0, 10, 0, TrackParams())
    assert (track.first, track.num_frames) == (0, 9)  # held over the skipped 7, 8; not over the missed 9


def test_smoothing_is_the_centred_truncated_mean():
    boxes = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], dtype=float)
    assert smooth_boxes(boxes, 3)[:, 0].tolist() == [1.5, 3.0, 4.5]


def test_sample_keys_are_valid_webdataset_keys():
    key = sample_key("spk1__clip-3f2a9c1d", 0, 1)
    assert key == "spk1__clip-3f2a9c1d-s00t01" and is_valid_key(key)
    assert sample_key("k", 12, 3, 2) == "k-s12t03p02" and is_valid_key("k-s12t03p02")
    assert not is_valid_key("k/s00t01") and not is_valid_key("k.s00t01")  # what the key must not look like


def test_prep_params_keep_todays_digest_for_dominant_without_scenes():
    legacy = PrepParams()
    assert legacy.legacy and not set(legacy.to_dict()) & {"tracks", "scenes", "min_track", "quality", "max_seconds"}
    tracked = PrepParams(tracks="all", scenes=True, max_seconds=10.0)
    assert not tracked.legacy and {"tracks", "scenes", "max_seconds"} <= set(tracked.to_dict())
    assert PrepParams.from_dict(tracked.to_dict()) == tracked
    with pytest.raises(ValueError, match="--sync-model"):
        PrepParams(tracks="speaker")
    with pytest.raises(ValueError, match="--tracks"):
        PrepParams(tracks="every")


def test_manifest_writes_track_columns_only_when_used(tmp_path):
    source = ClipSource("k", "/x.mp4", "d", "train", "s")
    plain = tmp_path / "plain.parquet"
    write_parquet([manifest_row(source, status="ok")], plain)
    import pyarrow.parquet as pq

    assert not set(pq.read_schema(plain).names) & {name for name, _ in TRACK_COLUMNS}
    assert read_rows(plain)[0]["source_key"] is None  # read back as null
    tracked = tmp_path / "tracked.parquet"
    write_parquet([manifest_row(source, status="source", scenes=2, tracks_found=3)], tracked)
    assert read_rows(tracked)[0]["tracks_found"] == 3


def test_split_points_cut_at_the_quietest_frame_before_the_limit():
    rng = np.random.default_rng(1)
    frames = 250
    audio = (rng.standard_normal(frames * AUDIO_SAMPLES_PER_FRAME) * 3000).astype(np.int16)
    quiet = 90  # in the last quarter before the 100-frame limit
    audio[quiet * AUDIO_SAMPLES_PER_FRAME : (quiet + 1) * AUDIO_SAMPLES_PER_FRAME] = 0
    ranges = split_points(audio, frames, 100)
    assert ranges[0] == (0, quiet)
    assert all(end - start <= 100 for start, end in ranges) and ranges[-1][1] == frames
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # consecutive, nothing lost
    # Silence outside the search window (frame 10) is not used: the split stays near the limit.
    early = audio.copy()
    early[quiet * AUDIO_SAMPLES_PER_FRAME : (quiet + 1) * AUDIO_SAMPLES_PER_FRAME] = 3000
    early[10 * AUDIO_SAMPLES_PER_FRAME : 11 * AUDIO_SAMPLES_PER_FRAME] = 0
    assert split_points(early, frames, 100)[0][1] >= 75
    assert split_points(audio[: 80 * AUDIO_SAMPLES_PER_FRAME], 80, 100) == [(0, 80)]


def test_quality_verdicts_name_the_measured_value_and_the_limit():
    params = QualityParams()
    rng = np.random.default_rng(2)
    sharp = rng.integers(0, 256, (128, 128, 3)).astype(np.uint8)
    import cv2

    blurred = cv2.GaussianBlur(sharp, (9, 9), 3)
    assert sharpness_verdict(sharpness(sharp), params) is None
    reason, detail = sharpness_verdict(sharpness(blurred), params)
    assert reason == "blurry" and "--min-sharpness 20" in detail
    assert size_verdict(100.0, params) is None and size_verdict(40.0, params)[0] == "small_face"
    scores = np.array([0.9, 0, 0, 0.8, 0, 0.7])
    faces = np.array([1, -1, 1, 1, 1, 1])  # frame 1 not examined: not counted
    assert interpolated_share(scores, faces) == pytest.approx(2 / 5)
    assert interpolation_verdict(0.4, params) is None and interpolation_verdict(0.6, params)[0] == "interpolated"
    for reason in ("small_face", "blurry", "interpolated", "not_speaking", "no_track"):
        assert reason in REASONS


def test_speaker_rule_keeps_the_best_track_of_each_scene_above_min_conf():
    verdicts = speaker_verdicts([(0, 5.0), (0, 2.0), (1, 2.0), (1, 2.0), (2, 0.5)], min_conf=1.5)
    assert verdicts[0] is None and verdicts[2] is None and verdicts[3] is None  # ties both speak
    assert "2.000 < 5.000 of another track" in verdicts[1] and "--min-conf 1.5" in verdicts[4]
    # The broken rule, "above --min-conf" alone, would keep the listener of scene 0 (2.0 > 1.5).
    assert [(scene, conf) for scene, conf in [(0, 5.0), (0, 2.0)] if conf >= 1.5] == [(0, 5.0), (0, 2.0)]


def test_a_tracked_shard_is_complete_with_its_sample_and_dropped_track_rows(tmp_path):
    from cals.layout import part_name, tar_name
    from pipeline.resume import DIGEST_KEY, clips_digest, shard_is_complete
    from pipeline.storage import open_storage

    clips = [ClipSource("a", str(tmp_path / "a.mp4"), "d", "train", "s"), ClipSource("b", str(tmp_path / "b.mp4"), "d", "train", "s")]
    params = PrepParams(tracks="all", scenes=True)
    rows = [
        manifest_row(clips[0], status="source", scenes=1, tracks_found=2, tracks_kept=1),
        manifest_row(replace(clips[0], key="a-s00t00"), status="ok", shard=tar_name("train-000000"), source_key="a", scene=0, track=0),
        manifest_row(replace(clips[0], key="a-s00t01"), status="failed", reason="small_face", source_key="a", scene=0, track=1),
        manifest_row(clips[1], status="failed", reason="no_face"),
    ]
    storage = open_storage(tmp_path)
    (tmp_path / "_parts").mkdir()
    write_parquet(rows, tmp_path / part_name("train-000000"), {DIGEST_KEY: clips_digest(clips, params)})
    (tmp_path / tar_name("train-000000")).write_bytes(b"")
    assert shard_is_complete(storage, "train-000000", clips, params)  # a re-run skips it
    # The check before tracks (every row key is a planned clip) would redo it on every run.
    assert [r["key"] for r in read_rows(tmp_path / part_name("train-000000"))] != [c.key for c in clips]
