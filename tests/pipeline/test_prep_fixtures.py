"""The real pipeline (ffmpeg, mediapipe, Ray, WebDataset) over the shared fixture clips plus
generated bad inputs: one run, many properties."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cals.constants import AUDIO_SAMPLES_PER_FRAME, FPS, MEL_ROWS_PER_FRAME, SAMPLE_RATE
from cals.data import iter_samples
from cals.layout import MANIFEST_FILE, PREP_FILE
from cals.mel import MEL_PARAMS
from cals.shard_format import check_sample
from pipeline.prepare_clip import PrepParams
from pipeline.io import probe
from pipeline.recipes.folder import prepare_folder
from pipeline.run import run_prep
from pipeline.verify import verify_dataset
from tests.conftest import FIXTURE_VIDEO, TALK_CLIPS, ffmpeg, needs_fixtures

pytestmark = [needs_fixtures, pytest.mark.slow]

AOC2 = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"  # 44.1 kHz stereo AAC, h264 590x590
WEIRD_NAME = "odd name 'quote' $(touch pwned) ünï.mp4"


def build_corpus(root: Path) -> dict[str, str]:
    """Fixture clips + bad inputs in speaker folders; returns file name → expected reason (or 'ok')."""
    expected = {}
    good = root / "good"
    good.mkdir(parents=True)
    for clip in TALK_CLIPS:
        (good / clip.name).symlink_to(clip)
        expected[clip.name] = "ok"
    bad = root / "bad"
    bad.mkdir()
    (bad / "silent.mp4").symlink_to(FIXTURE_VIDEO / "silent_yongen_musetalk.mp4")
    expected["silent.mp4"] = "no_audio"
    (bad / "zero.mp4").write_bytes(b"")
    expected["zero.mp4"] = "empty_file"
    (bad / "text.mp4").write_text("this is not a video\n")
    expected["text.mp4"] = "unreadable"
    data = AOC2.read_bytes()
    (bad / "truncated_moov_end.mp4").write_bytes(data[: len(data) // 2])
    expected["truncated_moov_end.mp4"] = "unreadable"
    faststart = root.parent / "faststart.mp4"
    ffmpeg("-i", str(AOC2), "-c", "copy", "-movflags", "+faststart", str(faststart))
    blob = faststart.read_bytes()
    (bad / "truncated_faststart.mp4").write_bytes(blob[: len(blob) // 2])
    expected["truncated_faststart.mp4"] = "truncated"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
           "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(bad / "testsrc.mp4"))
    expected["testsrc.mp4"] = "no_face"
    ffmpeg("-i", str(AOC2), "-t", "0.5", "-c:v", "libx264", "-c:a", "aac", str(bad / "short.mp4"))
    expected["short.mp4"] = "too_short"
    weird = root / "weird"
    weird.mkdir()
    (weird / WEIRD_NAME).symlink_to(AOC2)
    expected[WEIRD_NAME] = "ok"
    return expected


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "fixtures"
    expected = build_corpus(root)
    out = tmp_path_factory.mktemp("out") / "fixtures"
    # Small shards so several Ray tasks run; val/test 0 keeps every clip in train.
    summary = run_prep(prepare_folder(root, val=0, test=0), out, PrepParams(), shard_mb=8, workers=2, show_progress=False)
    manifest = pd.read_parquet(out / MANIFEST_FILE)
    manifest["file"] = manifest["source"].map(lambda p: Path(p).name)
    samples = {s.meta["source"]: s for s in iter_samples(out)}
    return out, expected, manifest, samples, summary


def test_every_source_clip_has_one_manifest_row_with_the_expected_outcome(prepared):
    out, expected, manifest, _, _ = prepared
    assert sorted(manifest["file"]) == sorted(expected)
    outcome = {row.file: ("ok" if row.status == "ok" else row.reason) for row in manifest.itertuples()}
    assert outcome == expected
    failed = manifest[manifest.status != "ok"]
    assert failed["detail"].str.len().gt(0).all(), "every failure carries a detail"
    assert failed["shard"].isna().all()


def test_every_talking_clip_becomes_a_sample_of_the_right_length(prepared):
    _, _, manifest, samples, _ = prepared
    for clip in TALK_CLIPS:
        sample = next(s for src, s in samples.items() if Path(src).name == clip.name)
        info = probe(clip)
        # T follows the video stream; where the audio outlasts it the container is longer.
        assert abs(sample.num_frames - info.video_duration_s * FPS) <= 1, (clip.name, sample.num_frames, info)
        assert sample.num_frames <= info.duration_s * FPS + 1


def test_invariants_hold_on_every_sample(prepared):
    _, _, _, samples, _ = prepared
    assert samples
    for sample in samples.values():
        T = sample.num_frames
        assert sample.frames.shape == (T, 128, 128, 3) and sample.frames.dtype == np.uint8
        assert sample.mel.shape == (MEL_ROWS_PER_FRAME * T, 80) and sample.mel.dtype == np.float16
        assert sample.audio.shape == (AUDIO_SAMPLES_PER_FRAME * T,) and sample.audio.dtype == np.int16
        assert sample.boxes.shape == (T, 4)
        assert check_sample(sample) == []
        assert sample.meta["mel_params"] == MEL_PARAMS.to_dict()


def test_vfr_and_hevc_sources_are_resampled_to_25fps(prepared):
    _, _, manifest, _, _ = prepared
    rows = manifest.set_index("file")
    vfr = rows.loc["talk_man_suit_retalking_vfr.mp4"]
    assert vfr.source_fps == pytest.approx(1350 / 61, rel=1e-3) and vfr.num_frames == 153
    hevc30 = rows.loc["talk_man_whiteshirt_latentsync_hevc_30fps.mp4"]
    assert hevc30.source_codec == "hevc" and (hevc30.source_width, hevc30.source_height) == (1080, 1920)
    assert hevc30.num_frames == 500  # 20.016 s x 25


def test_crops_contain_the_face(prepared):
    import mediapipe as mp

    _, _, _, samples, _ = prepared
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        for source, sample in samples.items():
            found = sum(bool(detector.process(np.ascontiguousarray(f)).detections) for f in sample.frames)
            assert found / sample.num_frames >= 0.9, (Path(source).name, found, sample.num_frames)


def independent_audio(path: Path) -> np.ndarray:
    """Source audio decoded at its own rate and channel count, downmixed and resampled with
    scipy (not ffmpeg's resampler)."""
    from scipy.signal import resample_poly

    info = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
                           "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout.strip().split(",")
    rate, channels = int(info[0]), int(info[1])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-"], capture_output=True, check=True).stdout
    audio = np.frombuffer(raw, np.float32).reshape(-1, channels).mean(axis=1)
    from math import gcd

    g = gcd(SAMPLE_RATE, rate)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g)


def test_shard_audio_matches_the_source_sample_aligned(prepared):
    _, _, _, samples, _ = prepared
    for source, sample in samples.items():
        ours = sample.audio.astype(np.float64) / 32768
        theirs = independent_audio(Path(source))
        n = min(len(ours), len(theirs)) - 64
        a = ours[32:n]
        lags = range(-32, 33)
        corr = [np.dot(a, theirs[32 + lag : n + lag]) / (np.linalg.norm(a) * np.linalg.norm(theirs[32 + lag : n + lag])) for lag in lags]
        best = int(np.argmax(corr))
        assert lags[best] == 0, (Path(source).name, lags[best])
        assert corr[best] > 0.99, (Path(source).name, corr[best])
        assert sample.meta["audio_pad_samples"] == len(sample.audio) - len(theirs) or abs(len(sample.audio) - len(theirs)) <= AUDIO_SAMPLES_PER_FRAME


def test_mel_matches_an_independent_computation_from_the_stored_audio(prepared):
    librosa = pytest.importorskip("librosa")
    _, _, _, samples, _ = prepared
    for sample in list(samples.values())[:3]:
        signal = sample.audio.astype(np.float32) / 32768
        signal = np.concatenate([signal[:1], signal[1:] - 0.97 * signal[:-1]])
        spectrum = librosa.feature.melspectrogram(y=signal, sr=16000, n_fft=400, hop_length=160, win_length=400,
                                                  power=1.0, n_mels=80, fmin=55, fmax=7600, center=True, pad_mode="reflect")
        expected = np.log10(np.maximum(spectrum, 1e-5)).T[: sample.mel.shape[0]]
        np.testing.assert_allclose(sample.mel.astype(np.float32), expected, atol=5e-3)


def test_outputs_are_complete_and_verified(prepared):
    out, _, manifest, _, summary = prepared
    assert (out / PREP_FILE).is_file()
    assert not list(out.glob(".*tmp*")), "no temp files left"
    ok = manifest[manifest.status == "ok"]
    assert set(ok["shard"]) == {p.name for p in out.glob("train-*.tar")}
    assert summary.ok == len(ok)
    report = verify_dataset(out)
    assert report.ok, report.problems
    assert report.samples == len(ok)


def test_same_command_twice_gives_identical_shards(tmp_path):
    root = tmp_path / "two"
    (root / "spk").mkdir(parents=True)
    for name in ("talk_aoc2_retalking.mp4", "talk_man_suit_retalking_vfr.mp4"):
        (root / "spk" / name).symlink_to(FIXTURE_VIDEO / name)
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run / "two"
        run_prep(prepare_folder(root, val=0, test=0), out, PrepParams(), shard_mb=2, workers=2, show_progress=False)
        files = sorted(out.glob("*.tar")) + [out / MANIFEST_FILE]
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    assert len(digests[0]) >= 3
    assert digests[0] == digests[1]


def test_rerun_skips_complete_shards_and_redoes_a_missing_one(prepared, tmp_path):
    out, _, manifest, _, _ = prepared
    copy = tmp_path / "fixtures"
    shutil.copytree(out, copy)
    victim = sorted(copy.glob("train-*.tar"))[0]
    before = victim.read_bytes()
    victim.unlink()
    root = Path(manifest["source"].iloc[0]).parents[1]
    summary = run_prep(prepare_folder(root, val=0, test=0), copy, PrepParams(), shard_mb=8, workers=1, show_progress=False)
    planned = json.loads((copy / PREP_FILE).read_text())["shards"]
    assert len(planned) >= 2
    assert summary.shards_done == 1 and summary.shards_skipped == len(planned) - 1
    assert victim.read_bytes() == before
    assert verify_dataset(copy).ok


def test_span_and_source_crop_give_source_pixel_boxes():
    from cals.shard_format import decode_sample
    from pipeline.prepare_clip import process_clip
    from pipeline.manifest import ClipSource
    from pipeline.stages.detect import make_detector

    detector = make_detector("mediapipe")
    source = ClipSource(key="k", path=str(FIXTURE_VIDEO / "talk_hdtf_aoc_sadtalker.mp4"), dataset="d", split="train",
                        speaker="s", start_s=2.0, end_s=5.0, crop=(120, 100, 392, 412))
    whole = ClipSource(key="w", path=source.path, dataset="d", split="train", speaker="s")
    cut = decode_sample(process_clip(source, PrepParams(), detector).sample)
    full = decode_sample(process_clip(whole, PrepParams(), detector).sample)
    from itertools import islice

    from pipeline.io import iter_frames

    frame = next(islice(iter_frames(probe(FIXTURE_VIDEO / "talk_hdtf_aoc_sadtalker.mp4")), 62, None))
    x0, y0, x1, y1 = max(detector([frame])[0], key=lambda d: d.score).box  # source frame 62 = cut frame 12
    assert cut.num_frames == 75 and check_sample(cut) == []
    assert cut.meta["source_crop"] == [120, 100, 392, 412] and cut.meta["source_start_s"] == 2.0
    # The crop square of cut frame 12 is centred where a detection on the uncropped source frame
    # puts the face (+ the documented chin shift), in source pixels: not ~(120, 100) px off.
    centre = (cut.boxes[12, :2] + cut.boxes[12, 2:]) / 2
    expected = np.array([(x0 + x1) / 2, (y0 + y1) / 2 + PrepParams().crop.shift_down * (y1 - y0)])
    assert np.abs(centre - expected).max() < 15, (centre, expected)
    # and the audio is the same span: samples 2.0 s .. 5.0 s of the whole clip
    a, b = cut.audio.astype(np.float64), full.audio[2 * SAMPLE_RATE : 5 * SAMPLE_RATE].astype(np.float64)
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


def test_window_that_does_not_fit_is_a_clip_failure():
    from pipeline.prepare_clip import process_clip
    from pipeline.errors import ClipError
    from pipeline.manifest import ClipSource
    from pipeline.stages.detect import make_detector

    source = ClipSource(key="k", path=str(FIXTURE_VIDEO / "talk_hdtf_aoc_sadtalker.mp4"), dataset="d", split="train",
                        speaker="s", crop=(400, 0, 300, 300))
    with pytest.raises(ClipError, match="does not fit a 512x512 video") as caught:
        process_clip(source, PrepParams(), make_detector("none"))
    assert caught.value.reason == "bad_window"
