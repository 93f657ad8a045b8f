"""``cals-prep sync``: the audio shift (length kept, content moved 640 samples a frame, mel
recomputed), the keep/drop decision, and one real run on a prepared dataset.

A clip whose audio is offset on purpose cannot be tested without the released SyncNet weights (a
random network finds no true offset), so the run uses a randomly initialised SyncNetV2 and checks
what does not depend on the weights: the measured numbers reach the manifest, the clips below
the limit leave their shards as ``out_of_sync`` failures, the kept clips' audio is shifted by
their measured offset with a matching mel, and the dataset still verifies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from cals.constants import AUDIO_SAMPLES_PER_FRAME
from cals.data import iter_samples
from cals.layout import MANIFEST_FILE
from cals.mel import log_mel
from cals.models.syncnet_v2 import load_syncnet_v2
from cals.shard_format import ClipSample, check_members, decode_sample, encode_sample, update_sample
from cals.sync_score import score_clip
from pipeline.manifest import read_rows
from pipeline.sync_filter import SYNC_COLUMNS, measure_sync, shift_audio, sync_verdict
from pipeline.verify import verify_dataset
from tests.conftest import needs_fixtures
from tests.pipeline.conftest import LIP_CLIPS


@pytest.mark.parametrize("frames", [3, -3, 0, 1])
def test_shift_keeps_the_length_and_moves_the_content(frames):
    num_frames = 10
    audio = np.arange(1, AUDIO_SAMPLES_PER_FRAME * num_frames + 1, dtype=np.int16)
    shifted = shift_audio(audio, frames)
    assert shifted.shape == audio.shape and shifted.dtype == np.int16
    step = AUDIO_SAMPLES_PER_FRAME * abs(frames)
    if frames >= 0:  # delayed: zeros in front, the end cut
        assert np.array_equal(shifted[step:], audio[: audio.size - step]) and not shifted[:step].any()
    else:  # advanced: the start cut, zeros at the end
        assert np.array_equal(shifted[: audio.size - step], audio[step:]) and not shifted[audio.size - step :].any()


def test_shift_past_the_clip_is_silence():
    audio = np.ones(AUDIO_SAMPLES_PER_FRAME * 4, dtype=np.int16)
    assert not shift_audio(audio, 4).any() and not shift_audio(audio, -9).any()


def test_shifted_sample_gets_the_mel_of_its_new_audio():
    rng = np.random.default_rng(0)
    num_frames = 8
    audio = (rng.standard_normal(AUDIO_SAMPLES_PER_FRAME * num_frames) * 3000).astype(np.int16)
    frames = rng.integers(0, 256, (num_frames, 128, 128, 3), dtype=np.uint8)
    sample = ClipSample(
        key="clip", frames=frames, mel=log_mel(audio).astype(np.float16), audio=audio,
        boxes=np.tile(np.float32([0, 0, 10, 10]), (num_frames, 1)), scores=np.zeros(num_frames, np.float32),
        meta={"frames_detected": 0},
    )
    raw = dict(encode_sample(sample))
    shifted = shift_audio(audio, 2)
    updated = update_sample(raw, audio=shifted, mel=log_mel(shifted), meta={"sync": {"av_offset": 2}})
    assert check_members(updated) == []
    decoded = decode_sample(updated)
    assert np.array_equal(decoded.audio, shifted)
    assert np.array_equal(decoded.mel, log_mel(shifted).astype(np.float16))
    assert np.array_equal(decoded.frames, decode_sample(raw).frames) and decoded.meta["sync"] == {"av_offset": 2}
    assert updated["frames.mjpeg"] == raw["frames.mjpeg"]  # other members keep their bytes


def test_verdict_keeps_in_sync_clips_and_says_why_it_drops():
    assert sync_verdict(0, 5.0, 7.0, max_offset=3, min_conf=3.0) is None
    assert sync_verdict(-3, 3.0, 7.0, max_offset=3, min_conf=3.0) is None  # limits are inclusive
    detail = sync_verdict(4, 5.0, 7.25, max_offset=3, min_conf=3.0)
    assert detail is not None and "+4 frames" in detail and "|offset| 4 > --max-offset 3" in detail and "7.250" in detail
    detail = sync_verdict(-5, 1.5, 9.0, max_offset=3, min_conf=3.0)
    assert "|offset| 5" in detail and "confidence 1.500 < --min-conf 3" in detail


@needs_fixtures
@pytest.mark.slow
def test_measure_sync_drops_fixes_and_still_verifies(dataset_copy):
    dataset, model_file = dataset_copy
    net = load_syncnet_v2(model_file)
    originals = {s.key: s for s in iter_samples(dataset)}
    scores = {key: score_clip(s.frames, s.audio, net) for key, s in originals.items()}
    # A confidence limit between the lowest and the next: exactly one clip is out of sync.
    confs = sorted(score.conf for score in scores.values())
    assert confs[0] < confs[1]
    min_conf = (confs[0] + confs[1]) / 2
    dropped = next(key for key, score in scores.items() if score.conf == confs[0])

    summary = measure_sync(dataset, model_file, max_offset=15, min_conf=min_conf, fix_offset=True, workers=1, show_progress=False)
    assert (summary.processed, summary.dropped, summary.failed) == (len(LIP_CLIPS), 1, 0)

    manifest = pd.read_parquet(dataset / MANIFEST_FILE).set_index("key")
    assert [name for name, _ in SYNC_COLUMNS] == list(manifest.columns[-len(SYNC_COLUMNS):])
    for key, score in scores.items():
        assert manifest.loc[key, "av_offset"] == score.offset
        assert manifest.loc[key, "sync_conf"] == pytest.approx(score.conf, abs=1e-4)
        assert manifest.loc[key, "sync_dist"] == pytest.approx(score.min_dist, abs=1e-4)
    row = manifest.loc[dropped]
    assert (row.status, row.reason) == ("failed", "out_of_sync") and pd.isna(row.shard)
    assert f"{scores[dropped].offset:+d} frames" in row.detail and "--min-conf" in row.detail
    parts = {r["key"]: r for p in sorted((dataset / "_parts").glob("*.parquet")) for r in read_rows(p)}
    assert (parts[dropped]["status"], parts[dropped]["reason"]) == ("failed", "out_of_sync")  # a prep re-run keeps it failed

    kept = {s.key: s for s in iter_samples(dataset)}
    assert set(kept) == set(originals) - {dropped}
    for key, sample in kept.items():
        offset = scores[key].offset
        assert sample.meta["sync"]["av_offset"] == offset and sample.meta["sync"]["audio_shift_frames"] == offset
        assert np.array_equal(sample.audio, shift_audio(originals[key].audio, offset))
        assert np.array_equal(sample.mel, log_mel(sample.audio).astype(np.float16))
        assert np.array_equal(sample.frames, originals[key].frames)
    for shard in sorted(dataset.glob("*.tar")):
        for raw in wds.WebDataset([str(shard)], shardshuffle=False, empty_check=False):
            assert check_members(raw) == []
    report = verify_dataset(dataset)
    assert report.ok, report.problems
    assert [p for p in dataset.rglob("*") if ".tmp-" in p.name] == []

    # The same command again: every sample is measured with these settings, nothing is rewritten.
    files = sorted(dataset.glob("*.tar")) + [dataset / MANIFEST_FILE]
    before = {p: p.read_bytes() for p in files}
    again = measure_sync(dataset, model_file, max_offset=15, min_conf=min_conf, fix_offset=True, workers=1, show_progress=False)
    assert (again.processed, again.shards_done) == (0, 0)
    assert {p: p.read_bytes() for p in files} == before

    # A stricter limit with the same model: the stored measurements are re-judged without
    # re-scoring; a clip now dropped leaves a shard that keeps its neighbour, whose offset fix
    # is not applied a second time.
    stricter = (confs[1] + confs[2]) / 2
    third = measure_sync(dataset, model_file, max_offset=15, min_conf=stricter, fix_offset=True, workers=1, show_progress=False)
    assert (third.processed, third.dropped) == (len(LIP_CLIPS) - 1, 1)
    best = next(key for key, score in scores.items() if score.conf == confs[2])
    (survivor,) = list(iter_samples(dataset))
    assert survivor.key == best and np.array_equal(survivor.audio, shift_audio(originals[best].audio, scores[best].offset))
    manifest = pd.read_parquet(dataset / MANIFEST_FILE).set_index("key")
    assert (manifest.reason == "out_of_sync").sum() == len(LIP_CLIPS) - 1 and manifest.loc[best, "status"] == "ok"
    parts = {r["key"]: r for p in sorted((dataset / "_parts").glob("*.parquet")) for r in read_rows(p)}
    assert sorted(k for k, r in parts.items() if r["status"] == "ok") == [best]
    assert verify_dataset(dataset).ok
