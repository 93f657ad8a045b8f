"""Scenes and face tracks on videos made here from the fixture clips (ffmpeg):

- ``cut.mp4``: 3 s of talk_aoc2 then 3 s of talk_man_mapbg, both 320x320, one hard cut at frame 75
  (their faces sit at about the same place, so an IoU tracker without scenes links them);
- ``pair.mp4``: side by side (512x256), talk_aoc2 speaking on the left, talk_man_mapbg's first
  frame frozen on the right, the left one's audio.

``--tracks speaker`` runs with a SyncNetV2 of seeded random weights in syncnet_v2.model's layout
(``torch.save(state_dict)``), as tests/pipeline/test_sync_filter.py does: the released weights
are not obtainable here and a critic trained in the test takes minutes of CPU. Random weights do
not know which face speaks (measured: they rank the frozen face higher, 0.19 vs 0.10 here), so
the test checks the wiring with the real scorer: every track scored against its own audio span,
the highest-confidence one of the scene kept, the other recorded ``not_speaking`` with its
number; the rule itself is tested in test_tracks_units.py. That the *speaking* face wins is
shown in test_speaker.py, with the same random trunks and heads fitted there on another clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from cals.constants import AUDIO_SAMPLES_PER_FRAME
from cals.shard_format import check_members, decode_sample, is_valid_key
from pipeline.io import Window, probe, read_audio
from pipeline.manifest import ClipSource
from pipeline.prepare_clip import PrepParams
from pipeline.prepare_shard import ShardPlan, prepare_shard
from pipeline.prepare_tracks import process_source
from pipeline.stages.detect import make_detector
from pipeline.stages.quality import QualityParams
from tests.conftest import FIXTURE_VIDEO, ffmpeg, needs_fixtures

pytestmark = needs_fixtures
CUT_FRAME = 75


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tracks-media")
    a, b = str(FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"), str(FIXTURE_VIDEO / "talk_man_mapbg_retalking.mp4")
    scale = "setpts=PTS-STARTPTS,scale={0}:{0},fps=25,setsar=1"
    ffmpeg("-i", a, "-i", b, "-filter_complex",
           f"[0:v]trim=0:3,{scale.format(320)}[a];[1:v]trim=0:3,{scale.format(320)}[b];"
           "[0:a]atrim=0:3,asetpts=PTS-STARTPTS,aresample=16000[x];[1:a]atrim=0:3,asetpts=PTS-STARTPTS,aresample=16000[y];"
           "[a][x][b][y]concat=n=2:v=1:a=1[v][au]",
           "-map", "[v]", "-map", "[au]", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(folder / "cut.mp4"))
    ffmpeg("-i", a, "-i", b, "-filter_complex",
           f"[0:v]trim=0:3,{scale.format(256)}[a];[1:v]trim=end_frame=1,scale=256:256,setsar=1,loop=loop=-1:size=1,trim=0:3,setpts=N/25/TB,fps=25[b];"
           "[a][b]hstack=inputs=2[v]",
           "-map", "[v]", "-map", "0:a", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(folder / "pair.mp4"))
    return {"cut": folder / "cut.mp4", "pair": folder / "pair.mp4"}


@pytest.fixture(scope="module")
def detector():
    detector = make_detector("mediapipe", "short")
    yield detector
    detector.close()


def clip(media, name: str) -> ClipSource:
    return ClipSource(key=name, path=str(media[name]), dataset="tracks", split="train", speaker="s")


def keys(result) -> list[str]:
    return [key for key, _, _ in result.samples]


def crosses_a_cut(first: int, num_frames: int, cuts: list[int]) -> bool:
    """The check: a sample over frames first .. first + num_frames - 1 spans a cut."""
    return any(first < cut < first + num_frames for cut in cuts)


@pytest.mark.slow
def test_all_tracks_one_sample_per_track_none_across_the_cut(media, detector, tmp_path):
    params = PrepParams(tracks="all", scenes=True)
    plan = ShardPlan("train-000000", "train", (clip(media, "cut"), clip(media, "pair")))
    rows = prepare_shard(plan, tmp_path, params, detector=detector)
    by_key = {r["key"]: r for r in rows}
    assert [r["key"] for r in rows] == ["cut", "cut-s00t00", "cut-s01t00", "pair", "pair-s00t00", "pair-s00t01"]
    assert all(is_valid_key(k) for k in by_key)
    cut_row, pair_row = by_key["cut"], by_key["pair"]
    assert (cut_row["status"], cut_row["scenes"], cut_row["tracks_found"], cut_row["tracks_kept"]) == ("source", 2, 2, 2)
    assert (pair_row["status"], pair_row["scenes"], pair_row["tracks_found"], pair_row["tracks_kept"]) == ("source", 1, 2, 2)
    samples = {s.key: s for s in (decode_sample(raw) for raw in wds.WebDataset([str(tmp_path / "train-000000.tar")], shardshuffle=False, empty_check=False))}
    assert set(samples) == {k for k, r in by_key.items() if r["status"] == "ok"}
    for raw in wds.WebDataset([str(tmp_path / "train-000000.tar")], shardshuffle=False, empty_check=False):
        assert check_members(raw) == []

    # The cut: scene 0 is frames 0..74, scene 1 75..149 (ContentDetector finds the cut exactly).
    first, second = samples["cut-s00t00"], samples["cut-s01t00"]
    assert (first.meta["track"]["first_frame"], first.num_frames) == (0, CUT_FRAME)
    assert (second.meta["track"]["first_frame"], second.num_frames) == (CUT_FRAME, 150 - CUT_FRAME)
    for key in ("cut-s00t00", "cut-s01t00"):
        track = samples[key].meta["track"]
        assert not crosses_a_cut(track["first_frame"], samples[key].num_frames, [CUT_FRAME])
        assert by_key[key]["source_key"] == "cut" and by_key[key]["first_frame"] == track["first_frame"]
    # Each track's audio is its own span of the clip's audio: 640·first .. 640·(last + 1).
    audio = read_audio(probe(media["cut"]), Window(None, None, None))
    assert np.array_equal(second.audio, audio[AUDIO_SAMPLES_PER_FRAME * CUT_FRAME : AUDIO_SAMPLES_PER_FRAME * 150])

    # The pair: two tracks at the same time, left and right, each its own boxes.
    left, right = samples["pair-s00t00"], samples["pair-s00t01"]
    assert left.num_frames == right.num_frames == 75
    assert left.boxes[:, 2].max() <= 300 and right.boxes[:, 0].min() >= 220
    assert np.array_equal(left.audio, right.audio)


def test_without_scenes_a_track_crosses_the_cut(media, detector):
    """The broken variant of the check above: no scene split, and one track runs over the cut."""
    result = process_source(clip(media, "cut"), PrepParams(tracks="all", scenes=False), detector)
    spans = [(c["first_frame"], r.fields["num_frames"]) for _, r, c in result.samples]
    assert any(crosses_a_cut(first, n, [CUT_FRAME]) for first, n in spans), spans


def test_dominant_with_scenes_one_sample_per_scene_and_todays_bytes_without_a_cut(media, detector):
    result = process_source(clip(media, "cut"), PrepParams(scenes=True), detector)
    assert keys(result) == ["cut-s00t00", "cut-s01t00"] and result.source["scenes"] == 2
    plain = process_source(clip(media, "pair"), PrepParams(), detector)
    scened = process_source(clip(media, "pair"), PrepParams(scenes=True), detector)
    assert keys(plain) == keys(scened) == ["pair"] and scened.source is None
    assert plain.samples[0][1].sample == scened.samples[0][1].sample  # every member's bytes


@pytest.mark.slow
def test_speaker_keeps_the_best_scored_track_and_records_the_other(media, detector, tmp_path):
    import torch

    from cals.models.syncnet_v2 import SyncNetV2, load_syncnet_v2

    torch.manual_seed(0)
    model_file = tmp_path / "syncnet_random.model"
    torch.save(SyncNetV2().state_dict(), model_file)
    params = PrepParams(tracks="speaker", sync_model=str(model_file), min_conf=0.0)
    result = process_source(clip(media, "pair"), params, detector, load_syncnet_v2(model_file))
    (kept, sample, columns), = result.samples
    (key, reason, detail, other), = result.dropped
    assert {kept, key} == {"pair-s00t00", "pair-s00t01"} and reason == "not_speaking"
    assert other["track_sync_conf"] < columns["track_sync_conf"] and "another track in its scene" in detail
    # The number recorded is the scorer's on the sample's own crops and audio.
    from cals.sync_score import score_clip

    decoded = decode_sample(sample.sample)
    assert score_clip(decoded.frames, decoded.audio, load_syncnet_v2(model_file)).conf == pytest.approx(columns["track_sync_conf"], abs=1e-4)
    assert result.source["tracks_dropped"] == "not_speaking: 1"


def test_each_quality_filter_drops_tracks_with_its_reason(media, detector):
    small = process_source(clip(media, "pair"), PrepParams(tracks="all", quality=QualityParams(min_face_px=1000)), detector)
    assert keys(small) == [] and [d[1] for d in small.dropped] == ["small_face", "small_face"]
    assert "< --min-face-px 1000" in small.dropped[0][2] and small.source["tracks_dropped"] == "small_face: 2"
    blurry = process_source(clip(media, "pair"), PrepParams(tracks="all", quality=QualityParams(min_sharpness=1e6)), detector)
    assert keys(blurry) == [] and {d[1] for d in blurry.dropped} == {"blurry"} and blurry.dropped[0][3]["sharpness"] > 20

    class MissesOddCalls:
        """Injects a fault: the real detector's faces are lost on every other batch."""

        name = detector.name

        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, frames):
            self.calls += 1
            found = detector(frames)
            return found if self.calls % 2 else [[] for _ in found]

    missing = process_source(clip(media, "pair"), PrepParams(tracks="all", min_face_ratio=0.0, quality=QualityParams(max_interpolated=0.3), detect_every=1), MissesOddCalls())  # one call per batch
    assert {d[1] for d in missing.dropped} == {"interpolated"} and "> --max-interpolated 0.3" in missing.dropped[0][2]


def test_max_seconds_splits_a_track_into_consecutive_samples(media, detector):
    result = process_source(clip(media, "cut"), PrepParams(tracks="all", scenes=True, max_seconds=2.0, detect_every=1), detector)  # the spans below are every-frame tracks
    spans = [(key, c["first_frame"], r.fields["num_frames"]) for key, r, c in result.samples]
    assert [k for k, _, _ in spans] == ["cut-s00t00p00", "cut-s00t00p01", "cut-s01t00p00", "cut-s01t00p01"]
    assert all(n <= 50 for _, _, n in spans)
    assert spans[0][1] == 0 and spans[1][1] == spans[0][2] and spans[1][1] + spans[1][2] == CUT_FRAME


def test_max_seconds_splits_the_dominant_track_too(media, detector):
    """HDTF's raw videos are minutes long and prep them with ``--tracks dominant``: the limit
    applies there as well (it was ignored: one 150-frame sample, which this test rejects)."""
    whole = process_source(clip(media, "cut"), PrepParams(scenes=False, detect_every=1), detector)
    result = process_source(clip(media, "cut"), PrepParams(scenes=False, max_seconds=2.0, detect_every=1), detector)
    spans = [(key, c["first_frame"], r.fields["num_frames"]) for key, r, c in result.samples]
    assert len(spans) >= 3 and all(n <= 50 for _, _, n in spans), spans
    assert [k for k, _, _ in spans] == [f"cut-s00t00p{i:02d}" for i in range(len(spans))]
    assert [f for _, f, _ in spans] == [0] + list(np.cumsum([n for _, _, n in spans])[:-1]), spans  # consecutive, nothing lost
    total = whole.samples[0][1].fields["num_frames"]
    # a last piece shorter than --min-frames is recorded, not kept
    assert {reason for _, reason, _, _ in result.dropped} <= {"too_short"}, result.dropped
    assert total - sum(n for _, _, n in spans) < PrepParams().min_frames * len(result.dropped) + 1, (spans, result.dropped)
