"""The ffmpeg edge: probe a media file, stream its frames at 25 fps, read its audio at 16 kHz.

Two decode paths give the same frames (``decoder=``, :data:`DECODERS`): ``"pyav"`` (the default)
runs FFmpeg's demuxer, decoders and filter graph in this process (:mod:`pipeline.decode_pyav`:
no process per clip); ``"ffmpeg"`` runs ``ffprobe`` and one ``ffmpeg`` process per stream (the
path before issue 12). Measured in BENCHMARKS.md ("Decode path"); the differences (audio ±1 LSB
on a few samples, container duration) in docs/shard-format.md.

All commands are argument lists (no shell), the input is passed as ``file:<absolute path>`` so
names with spaces, quotes, ``$(...)``, colons or a leading dash are read literally.

Timing: both streams are put on the container's clock starting at 0. Video goes through
``fps=25:start_time=0`` (constant frame rate; a late-starting or variable-rate stream is
duplicated/dropped to the 25 fps grid), audio through ``aresample=async=1:first_pts=0`` (a
late-starting stream is padded with silence). Frame t therefore covers [t/25, (t+1)/25) s and
audio samples [640t, 640t + 640).
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import ffmpeg
import numpy as np

from cals.constants import FPS, SAMPLE_RATE
from pipeline.errors import ClipError


#: Decode paths: "pyav" in-process (pipeline.decode_pyav), "ffmpeg" ffprobe + one process per stream.
DECODERS = ("pyav", "ffmpeg")
#: The default decode path (prep's ``--decoder``; recorded in prep.json through PrepParams).
DEFAULT_DECODER = "pyav"


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


@dataclass(frozen=True)
class Window:
    """The part of a source to read: a time span and a crop.

    ``start_s``/``end_s`` in seconds on the container clock (None: start / end of file);
    ``crop`` = ``(x, y, width, height)`` in source pixels (None: the whole frame).
    """

    start_s: Optional[float] = None
    end_s: Optional[float] = None
    crop: Optional[tuple[int, int, int, int]] = None

    def input_options(self) -> dict[str, str]:
        """ffmpeg input options (accurate seek: ffmpeg decodes from the previous keyframe and
        drops frames before ``start_s``; timestamps then restart at 0)."""
        options = {}
        if self.start_s is not None and self.start_s > 0:
            options["ss"] = f"{self.start_s:.6f}"
        if self.end_s is not None:
            options["t"] = f"{self.end_s - (self.start_s or 0.0):.6f}"
        return options


FULL = Window()


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says of a file. Sizes are display sizes (rotation applied)."""

    path: str
    duration_s: float
    video_duration_s: float
    width: int
    height: int
    fps: float
    video_codec: str
    has_audio: bool
    audio_rate: int
    audio_channels: int

    @property
    def expected_frames(self) -> int:
        """Frames at 25 fps the video stream's duration promises (the container's duration may
        be longer when the audio outlasts the video)."""
        return int(round(self.video_duration_s * FPS))

    def frames_in(self, window: Window) -> int:
        """Frames at 25 fps the video promises inside ``window``."""
        end = self.video_duration_s if window.end_s is None else min(window.end_s, self.video_duration_s)
        return max(0, int(round((end - (window.start_s or 0.0)) * FPS)))

    def frame_size(self, window: Window) -> tuple[int, int]:
        """(width, height) of the frames read through ``window``."""
        return (window.crop[2], window.crop[3]) if window.crop else (self.width, self.height)

    def check(self, window: Window) -> None:
        """Raise ValueError if ``window`` does not fit this video."""
        if window.crop:
            x, y, w, h = window.crop
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
                raise ValueError(f"crop {window.crop} does not fit a {self.width}x{self.height} video")
        if window.start_s is not None and window.end_s is not None and window.end_s <= window.start_s:
            raise ValueError(f"span {window.start_s}..{window.end_s} s is empty")


def ffmpeg_input(path: str | Path) -> str:
    """The literal-file URL ffmpeg and ffprobe read without interpreting the name."""
    return "file:" + os.path.abspath(path)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(float(side["rotation"])) % 360
    return int(float(stream.get("tags", {}).get("rotate", 0))) % 360


def probe(path: str | Path, require_video: bool = True, decoder: str = DEFAULT_DECODER) -> MediaInfo:
    """Probe a file (``decoder="ffmpeg"``: ffprobe; "pyav": the same fields in-process, whose
    ``duration_s`` is the bundled libavformat's). Raises ClipError (empty_file, unreadable, no_video).

    ``require_video=False`` accepts an audio-only file (a WAV): its MediaInfo then has width,
    height and fps 0 and ``video_codec`` "none".
    """
    _check_decoder(decoder)
    if decoder == "pyav":
        from pipeline import decode_pyav

        return decode_pyav.probe(path, require_video)
    path = str(path)
    if os.path.getsize(path) == 0:
        raise ClipError("empty_file", path)
    try:
        info = ffmpeg.probe(ffmpeg_input(path), v="error")
    except ffmpeg.Error as error:
        detail = _first_line(error.stderr.decode("utf-8", "replace")) if error.stderr else str(error)
        raise ClipError("unreadable", detail) from None
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        if require_video:
            raise ClipError("no_video", f"streams: {[s.get('codec_type') for s in streams]}")
        if audio is None:
            raise ClipError("no_audio", f"the file has neither audio nor video (streams: {[s.get('codec_type') for s in streams]})")
        duration = float(info.get("format", {}).get("duration") or audio.get("duration") or 0.0)
        return MediaInfo(path=path, duration_s=duration, video_duration_s=0.0, width=0, height=0, fps=0.0, video_codec="none",
                         has_audio=True, audio_rate=int(audio.get("sample_rate", 0)), audio_channels=int(audio.get("channels", 0)))
    width, height = int(video["width"]), int(video["height"])
    if _rotation(video) in (90, 270):
        width, height = height, width
    rate = video.get("avg_frame_rate") or video.get("r_frame_rate") or "0/1"
    fps = float(Fraction(rate)) if rate != "0/0" else 0.0
    duration = float(info.get("format", {}).get("duration") or video.get("duration") or 0.0)
    video_duration = float(video.get("duration") or duration)
    return MediaInfo(
        path=path,
        duration_s=duration,
        video_duration_s=video_duration,
        width=width,
        height=height,
        fps=fps,
        video_codec=video.get("codec_name", "?"),
        has_audio=audio is not None,
        audio_rate=int(audio.get("sample_rate", 0)) if audio else 0,
        audio_channels=int(audio.get("channels", 0)) if audio else 0,
    )


class _StderrDrain(threading.Thread):
    """Reads a pipe to the end in the background so ffmpeg never blocks on a full stderr."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.chunks: list[bytes] = []

    def run(self) -> None:
        for chunk in iter(lambda: self.pipe.read(4096), b""):
            self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


#: Decoder threads per clip. Measured here (2 cores, 2 workers, the fixture clips): 1 thread
#: took 19 s, 2 threads or ffmpeg's automatic choice 13 s (a long HEVC clip no longer leaves a
#: core idle at the end), with the same frames per CPU-second; 2 bounds oversubscription when
#: one worker per core runs on a large node, which the automatic choice (1 per core) does not.
DECODE_THREADS = 2


def iter_frames(info: MediaInfo, window: Window = FULL, threads: int = DECODE_THREADS,
                decoder: str = DEFAULT_DECODER) -> Iterator[np.ndarray]:
    """Stream the video (inside ``window``) as ``(H, W, 3)`` uint8 RGB frames at exactly 25 fps,
    one at a time.

    Memory stays at one frame (plus ffmpeg's pipe buffer) whatever the clip length.
    ``threads`` is the decoder's thread count (0 = FFmpeg's automatic choice).
    Raises ClipError("decode_error") if decoding fails.
    """
    _check_decoder(decoder)
    if decoder == "pyav":
        from pipeline import decode_pyav

        return decode_pyav.iter_frames(info, window, threads)
    return _ffmpeg_frames(info, window, threads)


def _ffmpeg_frames(info: MediaInfo, window: Window, threads: int) -> Iterator[np.ndarray]:
    """:func:`iter_frames` through one ffmpeg process."""
    stream = ffmpeg.input(ffmpeg_input(info.path), threads=threads, **window.input_options()).video
    if window.crop:
        x, y, w, h = window.crop
        stream = stream.filter("crop", w, h, x, y)
    process = (
        stream.filter("fps", fps=FPS, start_time=0)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-nostdin", "-v", "error")
        .run_async(pipe_stdout=True, pipe_stderr=True)
    )
    drain = _StderrDrain(process.stderr)
    drain.start()
    width, height = info.frame_size(window)
    frame_bytes = width * height * 3
    try:
        while True:
            buffer = process.stdout.read(frame_bytes)
            if len(buffer) < frame_bytes:
                break
            yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        returncode = process.wait()
        drain.join(timeout=5)
    if returncode != 0:
        raise ClipError("decode_error", _first_line(drain.text()) or f"ffmpeg exit code {returncode}")


def read_audio(info: MediaInfo, window: Window = FULL, decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """The audio track (inside ``window``'s span) as ``(N,)`` int16 mono at 16 kHz (FFmpeg's
    downmix and resampler).

    Raises ClipError("no_audio") without an audio stream, ("decode_error") if decoding fails.
    """
    _check_decoder(decoder)
    if not info.has_audio:
        raise ClipError("no_audio", "the file has no audio stream")
    if decoder == "pyav":
        from pipeline import decode_pyav

        return decode_pyav.read_audio(info, window)
    command = (
        ffmpeg.input(ffmpeg_input(info.path), **window.input_options())
        .audio.filter("aresample", **{"async": 1, "first_pts": 0})
        .output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE)
        .global_args("-nostdin", "-v", "error")
        .compile()
    )
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise ClipError("decode_error", "audio: " + (_first_line(result.stderr.decode("utf-8", "replace")) or f"exit {result.returncode}"))
    return np.frombuffer(result.stdout, dtype=np.int16).copy()


#: x264 constant rate factor of ``cals-generate``'s output (18: visually transparent for most
#: content; ``--crf`` changes it), and its speed preset.
ENCODE_CRF = 18
ENCODE_PRESET = "medium"
#: AAC bit rate of the 16 kHz mono audio track.
AAC_BITRATE = "64k"


class EncodeError(RuntimeError):
    """ffmpeg failed to write a video (the message is its last stderr line)."""


class VideoEncoder:
    """Stream ``(H, W, 3)`` uint8 RGB frames at 25 fps into an H.264 mp4 with a 16 kHz AAC
    audio track, one frame at a time (memory: one frame plus the pipe).

    Video: libx264, yuv420p, ``-crf crf`` (yuv420p needs even sides: an odd width or height is
    padded by one black column/row). ``lossless=True``: libx264rgb ``-qp 0`` in RGB, which
    decodes back to exactly the frames written (for tests; few players read it). Audio: the
    given int16 mono samples at 16 kHz (written to a temporary WAV), AAC at
    :data:`AAC_BITRATE`. The file is written under a temporary name beside ``out`` and renamed
    when :meth:`close` succeeds; :meth:`abort` (or leaving the ``with`` block on an exception)
    removes it.
    """

    def __init__(self, out: str | Path, width: int, height: int, audio: np.ndarray, lossless: bool = False,
                 crf: int = ENCODE_CRF) -> None:
        import shutil
        import tempfile
        import uuid

        import soundfile

        self.out = Path(out)
        self.width, self.height = int(width), int(height)
        self._frame_bytes = self.width * self.height * 3
        self._workdir = Path(tempfile.mkdtemp(prefix="cals-encode-"))
        self._cleanup = lambda: shutil.rmtree(self._workdir, ignore_errors=True)
        self.partial = self.out.with_name(f".{self.out.stem}.partial-{uuid.uuid4().hex[:8]}.mp4")
        wav = self._workdir / "audio.wav"
        soundfile.write(wav, np.asarray(audio, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
        # (width, height) of the encoded video: the frames' own, or padded to even sides
        self.output_size = (self.width, self.height)
        if lossless:
            video = ["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"]
        else:
            video = ["-c:v", "libx264", "-preset", ENCODE_PRESET, "-crf", str(int(crf)), "-pix_fmt", "yuv420p"]
            if self.width % 2 or self.height % 2:
                self.output_size = (self.width + self.width % 2, self.height + self.height % 2)
                video += ["-vf", f"pad={self.output_size[0]}:{self.output_size[1]}"]
        command = [
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-r", str(FPS), "-i", "pipe:",
            "-i", ffmpeg_input(wav),
            "-map", "0:v:0", "-map", "1:a:0", *video,
            "-c:a", "aac", "-b:a", AAC_BITRATE, "-ar", str(SAMPLE_RATE), "-ac", "1",
            "-movflags", "+faststart", "-f", "mp4", ffmpeg_input(self.partial),
        ]  # fmt: skip
        self.frames = 0
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._drain = _StderrDrain(self._process.stderr)
        self._drain.start()

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype}, expected ({self.height}, {self.width}, 3) uint8")
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            self._process.wait()
            self._drain.join(timeout=5)
            raise EncodeError(f"ffmpeg stopped while encoding {self.out}: {_first_line(self._drain.text()) or 'broken pipe'}") from None
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it to ``out``; returns ``out``."""
        try:
            try:
                self._process.stdin.close()
            except BrokenPipeError:  # ffmpeg already exited: its return code and stderr say why
                pass
            returncode = self._process.wait()
            self._drain.join(timeout=5)
            if returncode != 0:
                raise EncodeError(f"ffmpeg failed to encode {self.out}: {_first_line(self._drain.text()) or f'exit code {returncode}'}")
            os.replace(self.partial, self.out)
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        return self.out

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass
        self.partial.unlink(missing_ok=True)
        self._cleanup()

    def __enter__(self) -> "VideoEncoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def ffmpeg_version() -> str:
    """First line of ``ffmpeg -version`` (recorded in prep.json)."""
    result = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False)
    first = result.stdout.splitlines()[0] if result.stdout else "unknown"
    return first.split(" Copyright")[0]
