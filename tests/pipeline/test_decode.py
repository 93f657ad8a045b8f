"""The in-process decoder (pipeline.decode_pyav, the default) against the ffmpeg-process one on the
real fixture clips: the same frames (count and every pixel), audio within 1 LSB on a few samples,
the same MediaInfo but the container duration, the same ClipError reasons on bad input. The
checks are shown to reject a decoder that drops the ``fps`` filter."""

from __future__ import annotations

import hashlib
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import decode_pyav
from pipeline.errors import ClipError
from pipeline.io import FULL, Window, iter_frames, probe, read_audio
from tests.conftest import FIXTURE_VIDEO, ffmpeg, needs_fixtures

VFR = FIXTURE_VIDEO / "talk_man_suit_retalking_vfr.mp4"  # nominal 30, average 22.1 fps
HEVC30 = FIXTURE_VIDEO / "talk_man_whiteshirt_latentsync_hevc_30fps.mp4"
HDTF = FIXTURE_VIDEO / "talk_hdtf_aoc_sadtalker.mp4"
AOC2 = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"
#: Audio of the two paths (PyAV's FFmpeg 8.1 vs the system ffmpeg): at most this far apart ...
AUDIO_MAX_LSB = 1
#: ... on at most this share of the samples (measured: 2..9 of 80k..128k samples per clip).
AUDIO_MAX_DIFFERING = 1e-3


def frame_digests(info, window, decoder) -> list[str]:
    """SHA-1 of each decoded frame (one frame in memory at a time)."""
    with closing(iter_frames(info, window, decoder=decoder)) as frames:
        return [hashlib.sha1(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames]


def frames_differ(path: Path, window: Window = FULL) -> str:
    """'' when both decoders give the same frames of ``path``'s ``window``, else what differs."""
    info = probe(path, decoder="ffmpeg")
    want, got = frame_digests(info, window, "ffmpeg"), frame_digests(info, window, "pyav")
    if len(want) != len(got):
        return f"{path.name}: {len(got)} frames, ffmpeg {len(want)}"
    bad = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
    return f"{path.name}: frames {bad[:5]} differ" if bad else ""


def audio_differs(path: Path, window: Window = FULL) -> str:
    info = probe(path, decoder="ffmpeg")
    want, got = read_audio(info, window, decoder="ffmpeg"), read_audio(info, window, decoder="pyav")
    if want.shape != got.shape:
        return f"{path.name}: {got.shape[0]} samples, ffmpeg {want.shape[0]}"
    diff = np.abs(want.astype(np.int32) - got)
    if diff.max(initial=0) > AUDIO_MAX_LSB or np.count_nonzero(diff) > AUDIO_MAX_DIFFERING * diff.size:
        return f"{path.name}: max {diff.max()} LSB, {np.count_nonzero(diff)} samples differ"
    return ""


#: Fast cases: the VFR clip whole, a window (seek + trim + crop) of the 30 fps HEVC one and of HDTF.
FAST_CASES = [(VFR, FULL), (HEVC30, Window(1.0, 2.2, (200, 500, 640, 700))), (HDTF, Window(1.3, 5.1, (100, 60, 300, 320)))]


@needs_fixtures
@pytest.mark.parametrize("path,window", FAST_CASES, ids=["vfr", "hevc30-window", "hdtf-span-crop"])
def test_pyav_frames_and_audio_equal_ffmpeg(path, window):
    assert frames_differ(path, window) == ""
    assert audio_differs(path, window) == ""


@needs_fixtures
@pytest.mark.slow
def test_pyav_equals_ffmpeg_on_every_fixture_clip():
    clips = sorted(FIXTURE_VIDEO.glob("*.mp4")) + sorted(FIXTURE_VIDEO.glob("*.avi"))
    assert len(clips) >= 8
    problems = [frames_differ(clip) for clip in clips]
    problems += [audio_differs(clip) for clip in clips if probe(clip).has_audio]
    assert [p for p in problems if p] == []


@needs_fixtures
def test_the_check_rejects_a_decoder_without_the_fps_filter(monkeypatch):
    real = decode_pyav.video_filters
    monkeypatch.setattr(decode_pyav, "video_filters", lambda *a: [f for f in real(*a) if f[0] != "fps"])
    assert "frames" in frames_differ(VFR)  # 135 source frames, not 153 at 25 fps
    assert "frames" in frames_differ(HEVC30, Window(1.0, 2.2, (200, 500, 320, 320)))  # 36, not 30


@needs_fixtures
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_clip_is_turned_as_ffmpeg_turns_it(tmp_path, degrees):
    plain, rotated = tmp_path / "plain.mp4", tmp_path / f"rot{degrees}.mp4"
    ffmpeg("-i", str(AOC2), "-t", "1", "-vf", "crop=160:96:200:150", "-c:v", "libx264", "-c:a", "copy", str(plain))
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(rotated))
    info = probe(rotated, decoder="pyav")
    assert same_but_duration(info, probe(rotated, decoder="ffmpeg"))
    assert (info.width, info.height) == ((96, 160) if degrees != 180 else (160, 96))
    assert frames_differ(rotated) == "" and frames_differ(rotated, Window(0.2, 0.8, (10, 20, 40, 50))) == ""


@needs_fixtures
def test_pyav_probe_equals_ffprobe_but_the_container_duration():
    for clip in sorted(FIXTURE_VIDEO.glob("*.mp4")):
        assert same_but_duration(probe(clip, decoder="pyav"), probe(clip, decoder="ffmpeg")), clip.name


def same_but_duration(got, want) -> bool:
    """MediaInfo equal but ``duration_s``, which may differ by < 0.1 s (the container duration of
    libavformat 8.1 vs 5.1: edit lists, audio priming)."""
    return replace(got, duration_s=want.duration_s) == want and abs(got.duration_s - want.duration_s) < 0.1


def bad_inputs(folder: Path) -> dict[Path, str]:
    """Bad files and the ClipError reason probe → read_audio → iter_frames gives for each."""
    folder.mkdir(exist_ok=True)
    cases = {}
    (folder / "zero.mp4").write_bytes(b"")
    cases[folder / "zero.mp4"] = "empty_file"
    (folder / "text.mp4").write_text("this is not a video\n")
    cases[folder / "text.mp4"] = "unreadable"
    data = AOC2.read_bytes()
    (folder / "truncated_moov_end.mp4").write_bytes(data[: len(data) // 2])
    cases[folder / "truncated_moov_end.mp4"] = "unreadable"
    cases[FIXTURE_VIDEO / "silent_yongen_musetalk.mp4"] = "no_audio"
    return cases


def first_reason(path: Path, decoder: str) -> str:
    try:
        info = probe(path, decoder=decoder)
        read_audio(info, decoder=decoder)
        with closing(iter_frames(info, decoder=decoder)) as frames:
            next(frames)
    except ClipError as error:
        return error.reason
    return "ok"


@needs_fixtures
def test_bad_input_gives_the_same_reasons(tmp_path):
    for path, reason in bad_inputs(tmp_path).items():
        assert (first_reason(path, "pyav"), first_reason(path, "ffmpeg")) == (reason, reason), path.name


@needs_fixtures
def test_truncated_faststart_clip_decodes_about_as_many_frames_as_ffmpeg(tmp_path):
    faststart = tmp_path / "faststart.mp4"
    ffmpeg("-i", str(AOC2), "-c", "copy", "-movflags", "+faststart", str(faststart))
    blob = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(blob[: len(blob) // 2])
    info = probe(cut, decoder="ffmpeg")
    assert info.expected_frames == 125
    want, got = frame_digests(info, FULL, "ffmpeg"), frame_digests(info, FULL, "pyav")
    # measured: 56 frames, ffmpeg 58 (where the data stops mid-packet); both "truncated" in prep
    assert len(got) < 0.9 * 125 and abs(len(got) - len(want)) <= 3, (len(got), len(want))
    assert got[: min(len(got), len(want))] == want[: min(len(got), len(want))]


def test_unknown_decoder_is_a_clear_error_and_old_prep_json_means_ffmpeg():
    from pipeline.prepare_clip import PrepParams

    with pytest.raises(ValueError, match="decoder must be one of"):
        iter_frames(None, decoder="gstreamer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--decoder must be one of"):
        PrepParams(decoder="gstreamer")
    assert PrepParams().decoder == "pyav" and PrepParams().to_dict()["decoder"] == "pyav"
    old = PrepParams(decoder="ffmpeg").to_dict()
    assert "decoder" not in old  # the digest of a run before --decoder is unchanged
    assert PrepParams.from_dict(old).decoder == "ffmpeg"
