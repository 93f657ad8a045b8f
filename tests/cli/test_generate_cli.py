"""cals-generate through its command line with a random-weight CALS model on the real fixtures:
durations and resolution of the mp4, the face region changed and nothing outside the crop boxes
touched, a still image, and the one-line errors.

Pixels outside the boxes are compared with the source frames decoded the same way (25 fps RGB
through pipeline.io). With ``--lossless`` (RGB H.264, qp 0) they must be identical. The default
yuv420p encode is lossy everywhere (x264 at crf 18 plus 4:2:0 chroma, whose 2x2 subsampling and
interpolation also spread a box's colours a pixel or two outward), so there the boxes are
enlarged by 4 px and the mean absolute error outside them must stay below 3 levels (measured:
1.4 at most, what re-encoding this clip at crf 18 costs), while the face region changes by
tens of levels.
"""

from __future__ import annotations

import json
import subprocess
from contextlib import closing

import numpy as np
import pytest
from typer.testing import CliRunner

from cals.constants import CROP_SIZE, MASK_TOP_ROW, PASTE_FEATHER
from cli.generate import app
from tests.conftest import FIXTURE_VIDEO, SHARED, ffmpeg, needs_fixtures
from cals.models.tiny import tiny_cals_config

runner = CliRunner()
FACE_VIDEO = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"  # 590x590, 125 frames at 25 fps
SPEECH = SHARED / "fixtures" / "audio" / "speech_latentsync_demo1_16k.wav"  # 9.6 s, 16 kHz mono
STILL = SHARED / "fixtures" / "images" / "face_woman_sadtalker_happy.png"  # 256x256
SILENT_VIDEO = FIXTURE_VIDEO / "silent_yongen_musetalk.mp4"  # no audio stream
FRAME_S = 1 / 25
#: Default (lossy) encode: boxes enlarged by this many pixels, mean error allowed outside them.
LOSSY_MARGIN_PX = 4
LOSSY_MEAN_ERROR = 3.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from cals.models.cals_model import save_random_cals_model

    return save_random_cals_model(tmp_path_factory.mktemp("models") / "cals-run", tiny_cals_config(8, window=25))


def one_line_error(result) -> str:
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return " ".join(result.output.split())


def streams(path) -> dict[str, dict]:
    """ffprobe's streams of ``path`` by codec type (video, audio)."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,width,height,duration,nb_frames,sample_rate,pix_fmt",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {s["codec_type"]: s for s in json.loads(result.stdout)["streams"]}


def decoded(path) -> list[np.ndarray]:
    from pipeline.io import iter_frames, probe

    with closing(iter_frames(probe(path))) as frames:
        return list(frames)


def source_boxes(path, frames: int) -> np.ndarray:
    """The crop boxes cals-generate uses for the first ``frames`` frames (same detector, tracker
    and crop, deterministic)."""
    from itertools import islice

    from pipeline.lipsync_video import GenerateParams, face_crops
    from pipeline.io import iter_frames, probe
    from pipeline.stages.detect import make_detector

    detector = make_detector("mediapipe")
    try:
        with closing(iter_frames(probe(path))) as stream:
            _, boxes, detected = face_crops(islice(stream, frames), detector, GenerateParams())
    finally:
        detector.close()
    assert detected > 0
    return boxes


def box_mask(shape, box, margin: int = 0) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros(shape[:2], bool)
    mask[max(y0 - margin, 0) : max(y1 + margin, 0), max(x0 - margin, 0) : max(x1 + margin, 0)] = True
    return mask


def mouth_box(box) -> tuple[float, float, float, float]:
    """The part of a crop box the default ``--paste mouth`` may change: from the top of the seam
    band above the mask line down (cals.inference.paste_mask)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    side = x1 - x0
    return (x0, y0 + MASK_TOP_ROW * side // CROP_SIZE - round(PASTE_FEATHER * side) - 1, x1, y1)


def core(box, share: float = 0.3) -> tuple[slice, slice]:
    """The middle of a box (where the generated face is pasted with full weight)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    inset = int((x1 - x0) * share)
    return slice(y0 + inset, y1 - inset), slice(x0 + inset, x1 - inset)


def check_durations(out, audio_seconds: float, width: int, height: int) -> int:
    info = streams(out)
    video, audio = info["video"], info["audio"]
    assert (video["codec_name"], int(video["width"]), int(video["height"])) == ("h264", width, height)
    assert audio["codec_name"] == "aac" and int(audio["sample_rate"]) == 16000
    assert abs(float(video["duration"]) - audio_seconds) <= FRAME_S + 1e-6, video
    assert abs(float(audio["duration"]) - audio_seconds) <= FRAME_S + 1e-6, audio
    return int(video["nb_frames"])


@pytest.mark.slow
@needs_fixtures
def test_a_short_face_video_is_looped_and_only_the_mouth_changes(tmp_path, run):
    from cals.inference import frame_schedule

    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["--face", str(FACE_VIDEO), "--audio", str(SPEECH), "--ckpt", str(run), "--out", str(out), "--lossless"])
    assert result.exit_code == 0, result.output
    assert "590x590, 240 frames" in result.output and "looped" in result.output
    assert check_durations(out, 9.6, 590, 590) == 240

    source = decoded(FACE_VIDEO)
    assert len(source) == 125
    boxes = source_boxes(FACE_VIDEO, len(source))
    schedule = frame_schedule(len(source), 240)
    generated = decoded(out)
    assert len(generated) == 240
    for index, frame in enumerate(generated):
        original, box = source[schedule[index]], boxes[schedule[index]]
        outside = ~box_mask(frame.shape, mouth_box(box))
        assert np.array_equal(frame[outside], original[outside]), f"frame {index}: pixels outside the mouth region changed"
        rows, cols = core(mouth_box(box), 0.15)
        change = np.abs(frame[rows, cols].astype(int) - original[rows, cols].astype(int)).mean()
        assert change > 10, f"frame {index}: the face region barely changed ({change:.1f})"


@pytest.mark.slow
@needs_fixtures
def test_a_longer_face_video_gives_its_first_frames_in_the_default_encode(tmp_path, run):
    speech = tmp_path / "speech_2s.wav"
    ffmpeg("-i", str(SPEECH), "-t", "2", "-c:a", "pcm_s16le", str(speech))
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["--face", str(FACE_VIDEO), "--audio", str(speech), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "looped" not in result.output
    assert check_durations(out, 2.0, 590, 590) == 50
    assert streams(out)["video"]["pix_fmt"] == "yuv420p"
    source = decoded(FACE_VIDEO)[:50]
    boxes = source_boxes(FACE_VIDEO, 50)
    errors, changes = [], []
    for frame, original, box in zip(decoded(out), source, boxes):
        outside = ~box_mask(frame.shape, box, LOSSY_MARGIN_PX)
        errors.append(np.abs(frame[outside].astype(int) - original[outside].astype(int)).mean())
        rows, cols = core(box)
        changes.append(np.abs(frame[rows, cols].astype(int) - original[rows, cols].astype(int)).mean())
    assert max(errors) < LOSSY_MEAN_ERROR, max(errors)
    assert min(changes) > 10


@pytest.mark.slow
@needs_fixtures
def test_a_still_image_is_animated_for_the_whole_audio(tmp_path, run):
    import cv2

    speech = tmp_path / "speech_3s.wav"
    ffmpeg("-i", str(SPEECH), "-t", "3.01", "-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le", str(speech))  # 44.1 kHz stereo in
    out = tmp_path / "still.mp4"
    result = runner.invoke(app, ["--face", str(STILL), "--audio", str(speech), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert check_durations(out, 3.01, 256, 256) == 76  # ceil(3.01 * 25)
    image = cv2.imread(str(STILL), cv2.IMREAD_COLOR)[..., ::-1]
    (box,) = source_boxes(STILL, 1)
    frames = decoded(out)
    rows, cols = core(box)
    for frame in frames[:: 25]:
        assert np.abs(frame[rows, cols].astype(int) - image[rows, cols].astype(int)).mean() > 10


@pytest.mark.slow
@needs_fixtures
def test_a_video_without_a_face_is_a_one_line_error(tmp_path, run):
    pattern = tmp_path / "testsrc.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-pix_fmt", "yuv420p", str(pattern))
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["--face", str(pattern), "--audio", str(SPEECH), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 2
    message = one_line_error(result)
    assert f"face {pattern}: no face found" in message and "50 frames" in message
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


@needs_fixtures
def test_unusable_inputs_are_one_line_errors(tmp_path, run):
    out = tmp_path / "out.mp4"
    result = runner.invoke(app, ["--face", str(FACE_VIDEO), "--audio", str(SILENT_VIDEO), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 2 and f"audio {SILENT_VIDEO}: no audio" in one_line_error(result)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    result = runner.invoke(app, ["--face", str(text), "--audio", str(SPEECH), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 2 and f"face {text}: unreadable" in one_line_error(result)
    result = runner.invoke(app, ["--face", str(FACE_VIDEO), "--audio", str(text), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 2 and f"audio {text}: unreadable" in one_line_error(result)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["--face", str(FACE_VIDEO), "--audio", str(empty), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 2 and "empty file" in one_line_error(result)
    result = runner.invoke(app, ["--face", str(tmp_path / "missing.mp4"), "--audio", str(SPEECH), "--ckpt", str(run), "--out", str(out)])
    assert result.exit_code == 2 and "does not exist" in one_line_error(result)
    result = runner.invoke(app, ["--face", str(FACE_VIDEO), "--audio", str(SPEECH), "--ckpt", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "config.json is missing" in one_line_error(result)
    assert not out.exists()


@needs_fixtures
def test_probe_reads_an_audio_only_file_only_when_asked():
    from pipeline.errors import ClipError
    from pipeline.io import probe

    with pytest.raises(ClipError, match="no_video"):
        probe(SPEECH)
    info = probe(SPEECH, require_video=False)
    assert info.has_audio and (info.width, info.height, info.video_codec) == (0, 0, "none")
    assert info.duration_s == pytest.approx(9.6) and info.audio_rate == 16000
