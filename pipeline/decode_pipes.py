"""One ``ffmpeg`` process per clip with both streams out: video RGB24 on stdout, audio s16le on a
second pipe: the alternative to in-process decode that issue 12 asks to measure (bench/decode.py,
path ``ffmpeg2``). Not a ``--decoder`` choice: it saves one process per clip where in-process
decode saves them all (BENCHMARKS.md, "Decode path").

The filters are :func:`pipeline.io.iter_frames`' and :func:`pipeline.io.read_audio`'s, in one
command line with two outputs, so frames and samples equal the two-process path's. The audio pipe
is read by a thread while the caller reads frames (ffmpeg interleaves the outputs and blocks on a
full pipe otherwise).
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import TYPE_CHECKING, Iterator

import numpy as np

from cals.constants import FPS, SAMPLE_RATE
from pipeline.errors import ClipError

if TYPE_CHECKING:
    from pipeline.io import MediaInfo, Window


class TwoPipeDecode:
    """Start ffmpeg on ``info``'s ``window``; :meth:`frames` streams ``(H, W, 3)`` uint8 RGB frames
    at 25 fps, :meth:`audio` then returns the ``(N,)`` int16 16 kHz mono track (after the frames
    were read to the end). ``with_audio=False`` (or a file without audio) decodes video only."""

    def __init__(self, info: "MediaInfo", window: "Window", threads: int, with_audio: bool = True) -> None:
        from pipeline.io import _StderrDrain, ffmpeg_input

        self.info, self.window = info, window
        options = [arg for key, value in window.input_options().items() for arg in (f"-{key}", value)]
        video_filters = []
        if window.crop:
            x, y, w, h = window.crop
            video_filters.append(f"crop={w}:{h}:{x}:{y}")
        video_filters.append(f"fps=fps={FPS}:start_time=0")
        command = ["ffmpeg", "-nostdin", "-v", "error", "-threads", str(threads), *options, "-i", ffmpeg_input(info.path),
                   "-map", "0:v:0", "-vf", ",".join(video_filters), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        self._read_fd = None
        pass_fds: tuple[int, ...] = ()
        if with_audio and info.has_audio:
            self._read_fd, write_fd = os.pipe()
            pass_fds = (write_fd,)
            command += ["-map", "0:a:0", "-af", "aresample=async=1:first_pts=0", "-f", "s16le", "-acodec", "pcm_s16le",
                        "-ac", "1", "-ar", str(SAMPLE_RATE), f"pipe:{write_fd}"]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds)
        self._audio_chunks: list[bytes] = []
        self._reader = None
        if pass_fds:
            os.close(pass_fds[0])
            self._reader = threading.Thread(target=self._read_audio, daemon=True)
            self._reader.start()
        self._drain = _StderrDrain(self._process.stderr)
        self._drain.start()
        self._returncode = None

    def _read_audio(self) -> None:
        with os.fdopen(self._read_fd, "rb") as pipe:
            for chunk in iter(lambda: pipe.read(65536), b""):
                self._audio_chunks.append(chunk)

    def frames(self) -> Iterator[np.ndarray]:
        from pipeline.io import _first_line

        width, height = self.info.frame_size(self.window)
        frame_bytes = width * height * 3
        try:
            while True:
                buffer = self._process.stdout.read(frame_bytes)
                if len(buffer) < frame_bytes:
                    break
                yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
        finally:
            self._finish()
        if self._returncode != 0:
            raise ClipError("decode_error", _first_line(self._drain.text()) or f"ffmpeg exit code {self._returncode}")

    def _finish(self) -> None:
        if self._returncode is not None:
            return
        self._process.stdout.close()
        if self._process.poll() is None and self._reader is None:
            self._process.kill()
        self._returncode = self._process.wait()
        if self._reader is not None:
            self._reader.join()
        self._drain.join(timeout=5)

    def audio(self) -> np.ndarray:
        """The audio track; reads the rest of the frames first if the caller stopped early."""
        if not self.info.has_audio:
            raise ClipError("no_audio", "the file has no audio stream")
        self._finish()
        return np.frombuffer(b"".join(self._audio_chunks), dtype=np.int16).copy()
