"""The lip-top row: measured by prep on real crops, recorded in the manifest and the sample json,
and warned about by ``cals-prep verify`` when the mouth shows above the mask line."""

import json

import numpy as np
import pytest
import webdataset as wds

from cals.constants import LIP_TOP_MAX_SAMPLES, LIP_TOP_MIN_SAMPLES, MASK_LIP_MARGIN_ROWS, MASK_TOP_ROW
from cals.layout import MANIFEST_FILE, PREP_FILE
from cals.mel import MEL_PARAMS
from cals.shard_format import REQUIRED_META, ClipSample, decode_sample, encode_sample
from pipeline.manifest import ClipSource, manifest_row, read_rows, write_parquet
from pipeline import prepare_clip
from pipeline.prepare_clip import PrepParams, lip_top_indices, lip_top_samples, process_clip
from pipeline.prepare_shard import ShardPlan, prepare_shard
from pipeline.run import PrepWorker, ShardTask
from pipeline.stages.crop import CropParams
from pipeline.stages.detect import make_detector
from pipeline.verify import verify_dataset
from tests.conftest import FIXTURE_VIDEO, needs_fixtures

#: The fixture clips with speech and a face (the silent one has no audio).
TALKING = sorted(p for p in FIXTURE_VIDEO.glob("*") if not p.name.startswith("silent_")) if FIXTURE_VIDEO.is_dir() else []
LIMIT = MASK_TOP_ROW + MASK_LIP_MARGIN_ROWS


def prepare(path, seconds: float, crop: CropParams = CropParams(), key: str = "clip"):
    detector = make_detector("mediapipe")
    try:
        source = ClipSource(key=key, path=str(path), dataset="d", split="train", speaker="s", end_s=seconds)
        return source, process_clip(source, PrepParams(crop=crop), detector)
    finally:
        detector.close()


@needs_fixtures
def test_lip_top_of_a_fixture_clip_lands_in_the_manifest_and_the_json(tmp_path):
    # the fixture clip whose mouth sits highest in the crops (the old geometry: p1 row 46)
    source, result = prepare(FIXTURE_VIDEO / "talk_man_whiteshirt_latentsync_hevc_30fps.mp4", 2.0)
    lip = decode_sample(result.sample).meta["lip_top"]
    assert lip["sampled"] == lip_top_samples(50) == LIP_TOP_MIN_SAMPLES and lip["measured"] == lip["sampled"]
    assert lip["mask_top_row"] == MASK_TOP_ROW
    assert LIMIT <= lip["p1"] <= lip["median"] < 128  # below the mask line, with the margin
    write_parquet([manifest_row(source, status="ok", shard="train-000000.tar", **result.fields)], tmp_path / "m.parquet")
    (row,) = read_rows(tmp_path / "m.parquet")
    assert (row["lip_top_median"], row["lip_top_p1"]) == (lip["median"], lip["p1"])


@pytest.mark.slow
@needs_fixtures
def test_every_fixture_clip_has_its_mouth_below_the_mask():
    """The crop geometry's claim (pipeline/stages/crop.py): on every fixture clip the upper lip's
    top is below the mask line + margin on >= 99 % of sampled crops; the old geometry fails it."""
    p1 = {path.name: prepare(path, 3.0)[1].fields["lip_top_p1"] for path in TALKING}
    assert len(p1) == 7 and all(v >= LIMIT for v in p1.values()), p1
    old = prepare(FIXTURE_VIDEO / "talk_man_whiteshirt_latentsync_hevc_30fps.mp4", 3.0, CropParams(margin=1.6, shift_down=0.1))
    assert old[1].fields["lip_top_p1"] < LIMIT


def test_lip_top_sample_count_rule():
    """One crop per second of video, at least LIP_TOP_MIN_SAMPLES, at most LIP_TOP_MAX_SAMPLES,
    never more than the frames; evenly spaced with the first and last frame."""
    assert [lip_top_samples(n) for n in (1, 3, 4, 25, 50, 101, 250, 400, 401, 10_000)] == [1, 3, 4, 4, 4, 5, 10, 16, 16, LIP_TOP_MAX_SAMPLES]
    assert lip_top_indices(50, 4).tolist() == [0, 16, 33, 49]
    assert lip_top_indices(3, 4).tolist() == [0, 1, 2] and lip_top_indices(1, 1).tolist() == [0]


class CountingLandmarker(prepare_clip.MouthLandmarker):
    """A real FaceMesh landmarker that counts how many were built (each builds a graph)."""

    built = 0

    def __init__(self) -> None:
        type(self).built += 1
        super().__init__()


def two_second_clips(count: int) -> list[ClipSource]:
    return [ClipSource(key=f"clip{i}", path=str(TALKING[i % len(TALKING)]), dataset="d", split="train", speaker="s", end_s=2.0)
            for i in range(count)]


@needs_fixtures
def test_one_landmarker_per_worker_not_per_clip(tmp_path, monkeypatch):
    """Issue 12: building FaceMesh per clip was ~18 ms of a 2 s clip's ~170 ms. A prep worker
    (PrepWorker, one per Ray actor) builds one for its lifetime, over shards and clips; a shard
    run standalone builds one; process_clip alone builds its own. The per-clip variant (no
    landmarker passed down) builds one per clip and the count rejects it."""
    import cals.metrics

    monkeypatch.setattr(cals.metrics, "MouthLandmarker", CountingLandmarker)
    monkeypatch.setattr(prepare_clip, "MouthLandmarker", CountingLandmarker)
    monkeypatch.setattr("pipeline.prepare_shard.MouthLandmarker", CountingLandmarker)
    params = PrepParams(detector="none")
    work = PrepWorker(str(tmp_path / "worker"), params, fail_fast=True).start(lambda done, failed, frames: None)
    rows = [row for i in range(2) for row in work(ShardTask(ShardPlan(f"train-{i:06d}", "train", tuple(two_second_clips(2)))))]
    assert [r["status"] for r in rows] == ["ok"] * 4 and CountingLandmarker.built == 1  # 2 shards x 2 clips, one graph

    CountingLandmarker.built = 0
    rows = prepare_shard(ShardPlan("train-000000", "train", tuple(two_second_clips(3))), tmp_path / "shard", params, fail_fast=True)
    assert len(rows) == 3 and CountingLandmarker.built == 1

    CountingLandmarker.built = 0
    detector = make_detector("none")
    for source in two_second_clips(3):  # the broken variant: what every clip did before
        process_clip(source, params, detector)
    assert CountingLandmarker.built == 3
    with pytest.raises(AssertionError):
        assert CountingLandmarker.built == 1


def sample(key: str, lip_top: dict, T: int = 4) -> ClipSample:
    rng = np.random.default_rng(0)
    meta = {k: None for k in REQUIRED_META}
    meta.update(split="train", frames_detected=T, lip_top=lip_top, mel_params=MEL_PARAMS.to_dict())
    return ClipSample(
        key=key,
        frames=rng.integers(0, 256, (T, 128, 128, 3), dtype=np.uint8),
        mel=np.zeros((4 * T, 80), np.float16),
        audio=np.zeros(640 * T, np.int16),
        boxes=np.tile(np.array([0, 0, 128, 128], np.float32), (T, 1)),
        scores=np.ones(T, np.float32),
        meta=meta,
    )


def test_verify_warns_on_a_mouth_above_the_mask_and_still_passes(tmp_path):
    lips = {
        "below": {"median": 85.0, "p1": LIMIT + 0.5, "measured": 16, "sampled": 16, "mask_top_row": MASK_TOP_ROW},
        "above": {"median": 66.0, "p1": LIMIT - 0.5, "measured": 16, "sampled": 16, "mask_top_row": MASK_TOP_ROW},  # crafted
        "nofacemesh": {"median": None, "p1": None, "measured": 0, "sampled": 16, "mask_top_row": MASK_TOP_ROW},
    }
    with wds.TarWriter(str(tmp_path / "train-000000.tar")) as sink:
        for key, lip in lips.items():
            sink.write(encode_sample(sample(key, lip)))
    rows = [manifest_row(ClipSource(key, f"/{key}.mp4", "d", "train", "s"), status="ok", shard="train-000000.tar", num_frames=4) for key in lips]
    write_parquet(rows, tmp_path / MANIFEST_FILE)
    (tmp_path / PREP_FILE).write_text(json.dumps({}))
    report = verify_dataset(tmp_path, check_mel=False)
    assert report.ok, report.problems  # a warning, not a failure
    assert len(report.warnings) == 2
    above, unmeasured = sorted(report.warnings)  # "...:above: ..." sorts before "...:nofacemesh: ..."
    assert "train-000000.tar:above: mouth above the mask: upper-lip top at row 66.5" in above
    assert "nofacemesh: lip top not measured" in unmeasured
