"""In-process decode with PyAV (``av``): FFmpeg's own demuxer, decoders and filter graph in this
process, so a clip costs no ffprobe and no ffmpeg process.

The graphs are those the ``ffmpeg`` command line builds for :func:`pipeline.io.iter_frames` /
:func:`pipeline.io.read_audio` (FFmpeg 5.1's ``ffmpeg_filter.c``), rebuilt here:

- timestamps: every packet's time minus the container's start time and the window's start
  (the CLI's ``ts_offset``), in the stream's time base;
- the window: an accurate seek to the keyframe before ``start_s``, then ``trim``/``atrim``
  with ``start=0`` and ``duration=end_s - start_s`` (the CLI's ``trim_in`` filters);
- video: the display matrix's rotation (``transpose``/``hflip,vflip``, the CLI's autorotate),
  ``crop=w:h:x:y``, ``fps=25:start_time=0``, ``format=rgb24`` (the graph's own swscale,
  bicubic, as the CLI);
- audio: ``aresample=async=1:first_pts=0`` then ``aformat=s16:16000:mono`` (the graph's own
  swresample does the downmix and rate change, as the CLI's output format filter).

PyAV bundles its own FFmpeg (8.1 with av 18.1), the command line uses the system's, so the
decoded samples may differ by the two versions' decoder/swscale changes: measured in
docs/shard-format.md ("Decode path") and tests/pipeline/test_decode.py.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from cals.constants import FPS, SAMPLE_RATE
from pipeline.errors import ClipError

if TYPE_CHECKING:  # pipeline.io imports this module; only the types come back
    from pipeline.io import MediaInfo, Window

#: AV_TIME_BASE: FFmpeg's microsecond clock (container start time, seek targets).
_AV_TIME_BASE = 1_000_000


def _open(path: str):
    import av

    try:
        return av.open(os.path.abspath(path), mode="r")
    except av.FFmpegError as error:
        raise ClipError("unreadable", _message(error)) from None


def _message(error: Exception) -> str:
    """One line from a PyAV error (FFmpeg's own text, without the file name PyAV appends)."""
    text = getattr(error, "strerror", None) or str(error)
    return str(text).strip().splitlines()[-1] if str(text).strip() else type(error).__name__


def _rescale(value_us: int, time_base: Fraction) -> int:
    """``av_rescale_q(value, AV_TIME_BASE_Q, time_base)`` (round half away from zero)."""
    exact = Fraction(value_us, _AV_TIME_BASE) / time_base
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


def _window_offsets(container, window: "Window") -> tuple[int, Optional[int], Optional[float]]:
    """``(ts_offset_us, seek_us, duration_s)``: the CLI's timestamp offset (container start +
    window start, in µs), where to seek (None: no seek) and the trim duration (None: to the end)."""
    start_us = int(round((window.start_s or 0.0) * _AV_TIME_BASE)) if window.start_s and window.start_s > 0 else 0
    container_start = container.start_time if container.start_time is not None else 0
    seek = container_start + start_us if start_us else None
    duration = window.end_s - (window.start_s or 0.0) if window.end_s is not None else None
    return container_start + start_us, seek, duration


def _trim(name: str, window: "Window", duration: Optional[float]) -> Optional[str]:
    """The CLI's ``trim_in``/``atrim_in`` arguments for ``window`` (None when it inserts none)."""
    parts = []
    if window.start_s is not None and window.start_s > 0:
        parts.append("start=0")
    if duration is not None:
        parts.append(f"duration={int(round(duration * _AV_TIME_BASE))}us")
    return ":".join(parts) or None


def _rotation_filters(rotation: float) -> list[tuple[str, str]]:
    """The CLI's autorotate filters for a display matrix of ``rotation`` degrees counter-clockwise
    (``av_display_rotation_get``; the CLI turns by ``-rotation``)."""
    theta = (-round(rotation)) % 360
    if theta == 90:
        return [("transpose", "clock")]
    if theta == 180:
        return [("hflip", ""), ("vflip", "")]
    if theta == 270:
        return [("transpose", "cclock")]
    return []


def _chain(graph, source, filters: list[tuple[str, Optional[str]]]):
    """Link ``source`` through ``filters`` (name, args) into a buffersink; returns the sink."""
    node = source
    for name, args in filters:
        nxt = graph.add(name, args) if args else graph.add(name)
        node.link_to(nxt)
        node = nxt
    sink = graph.add("abuffersink" if source.filter.name == "abuffer" else "buffersink")
    node.link_to(sink)
    graph.configure()
    return sink


#: The CLI fails a decode when more than this share of the packets failed (``-max_error_rate``).
MAX_ERROR_RATE = 2 / 3


def _decoded(container, stream) -> Iterator:
    """Every decoded frame of ``stream`` from the container's current position, as the CLI reads:
    a read error ends the input (a truncated file decodes what it holds), a packet that fails to
    decode is skipped; ClipError("decode_error") when more than :data:`MAX_ERROR_RATE` failed."""
    import av

    packets, decoded, failed, last = container.demux(stream), 0, 0, None
    while True:
        try:
            packet = next(packets)
        except (StopIteration, av.FFmpegError):
            break
        try:
            frames = packet.decode()
        except av.FFmpegError as error:
            failed, last = failed + 1, error
            continue
        decoded += 1
        yield from frames
    if failed and failed > MAX_ERROR_RATE * (decoded + failed):
        raise ClipError("decode_error", _message(last))


def _rescale_pts(pts: int, source: Fraction, target: Fraction) -> int:
    """``av_rescale_q(pts, source, target)`` (round half away from zero)."""
    exact = pts * source / target
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


def _push(graph, frame) -> bool:
    """Push ``frame`` (None: end of stream) into the graph; False once the graph has ended
    (a ``trim`` reached its duration)."""
    import av

    try:
        graph.push(frame)
    except av.EOFError:
        return False
    return True


def _drain(graph) -> Iterator:
    import av

    while True:
        try:
            yield graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return


#: Threads of a clip's filter graph. 1: FFmpeg's default (one per CPU) starts and joins a thread
#: pool for every graph, 4-8 ms per clip measured here (2 s clips: 0.15-0.3 CPU-ms per frame,
#: and one thread per core of the node in every worker), while the graph's work (fps, crop,
#: the RGB conversion) is a small part of decoding (BENCHMARKS.md, issue 12).
FILTER_THREADS = 1


def _graph():
    """A new ``av.filter.Graph`` with :data:`FILTER_THREADS` threads."""
    import av

    graph = av.filter.Graph()
    graph.threads = FILTER_THREADS
    return graph


def video_filters(rotation: float, window: "Window", duration: Optional[float]) -> list[tuple[str, Optional[str]]]:
    """The video graph as (filter, arguments): autorotate, trim, crop, ``fps=25:start_time=0``,
    RGB24 (the chain ``ffmpeg`` builds for :func:`pipeline.io.iter_frames`)."""
    filters: list[tuple[str, Optional[str]]] = list(_rotation_filters(rotation))
    trim = _trim("trim", window, duration)
    if trim:
        filters.append(("trim", trim))
    if window.crop:
        x, y, w, h = window.crop
        filters.append(("crop", f"{w}:{h}:{x}:{y}"))
    return filters + [("fps", f"fps={FPS}:start_time=0"), ("format", "rgb24")]


def iter_frames(info: "MediaInfo", window: "Window", threads: int) -> Iterator[np.ndarray]:
    """``(H, W, 3)`` uint8 RGB frames of ``window`` at 25 fps, one at a time (as
    :func:`pipeline.io.iter_frames`). Raises ClipError("unreadable" / "decode_error")."""
    import av

    container = _open(info.path)
    try:
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise ClipError("no_video", "no video stream")
        stream = streams[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        offset_us, seek_us, duration = _window_offsets(container, window)
        time_base = stream.time_base
        offset = _rescale(offset_us, time_base)
        if seek_us is not None:
            container.seek(seek_us, backward=True, any_frame=False)
        graph = None
        try:
            for frame in _decoded(container, stream):
                if frame.pts is None:
                    continue
                if graph is None:
                    graph = _graph()
                    source = graph.add_buffer(template=stream, width=frame.width, height=frame.height,
                                              format=frame.format, time_base=time_base)
                    _chain(graph, source, video_filters(frame.rotation, window, duration))
                frame.pts -= offset
                done = not _push(graph, frame)
                for out in _drain(graph):
                    yield out.to_ndarray()
                if done:
                    return
            if graph is not None:
                _push(graph, None)
                for out in _drain(graph):
                    yield out.to_ndarray()
        except av.FFmpegError as error:
            raise ClipError("decode_error", _message(error)) from None
    finally:
        container.close()


def read_audio(info: "MediaInfo", window: "Window") -> np.ndarray:
    """The audio of ``window`` as ``(N,)`` int16 mono at 16 kHz (as :func:`pipeline.io.read_audio`).
    Raises ClipError("no_audio" / "unreadable" / "decode_error")."""
    import av

    container = _open(info.path)
    chunks: list[np.ndarray] = []
    try:
        if not container.streams.audio:
            raise ClipError("no_audio", "the file has no audio stream")
        stream = container.streams.audio[0]
        offset_us, seek_us, duration = _window_offsets(container, window)
        if seek_us is not None:
            container.seek(seek_us, backward=True, any_frame=False)
        graph = None
        try:
            for frame in _decoded(container, stream):
                if graph is None:
                    rate = frame.sample_rate
                    time_base = Fraction(1, rate)
                    offset = _rescale(offset_us, time_base)
                    graph = _graph()
                    source = graph.add_abuffer(sample_rate=rate, format=frame.format.name, layout=frame.layout.name,
                                               time_base=time_base)
                    filters: list[tuple[str, Optional[str]]] = []
                    trim = _trim("atrim", window, duration)
                    if trim:
                        filters.append(("atrim", trim))
                    filters += [("aresample", "async=1:first_pts=0"),
                                ("aformat", f"sample_fmts=s16:sample_rates={SAMPLE_RATE}:channel_layouts=mono")]
                    _chain(graph, source, filters)
                if frame.pts is not None:
                    frame.pts = _rescale_pts(frame.pts, frame.time_base, time_base) - offset
                    frame.time_base = time_base
                done = not _push(graph, frame)
                chunks.extend(out.to_ndarray().reshape(-1) for out in _drain(graph))
                if done:
                    break
            else:
                if graph is not None:
                    _push(graph, None)
                    chunks.extend(out.to_ndarray().reshape(-1) for out in _drain(graph))
        except av.FFmpegError as error:
            raise ClipError("decode_error", "audio: " + _message(error)) from None
    finally:
        container.close()
    return np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, np.int16)


def probe(path: str | Path, require_video: bool = True) -> "MediaInfo":
    """:func:`pipeline.io.probe` in-process: the same MediaInfo fields from the same FFmpeg
    structures ffprobe prints (format duration, stream duration × time base, avg_frame_rate,
    display-matrix rotation). Raises ClipError (empty_file, unreadable, no_video, no_audio)."""
    import av

    from pipeline.io import MediaInfo

    path = str(path)
    if os.path.getsize(path) == 0:
        raise ClipError("empty_file", path)
    container = _open(path)
    try:
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = container.duration / _AV_TIME_BASE if container.duration else 0.0
        if not videos:
            kinds = [s.type for s in container.streams]
            if require_video:
                raise ClipError("no_video", f"streams: {kinds}")
            if audio is None:
                raise ClipError("no_audio", f"the file has neither audio nor video (streams: {kinds})")
            if not duration and audio.duration:
                duration = float(audio.duration * audio.time_base)
            return MediaInfo(path=path, duration_s=duration, video_duration_s=0.0, width=0, height=0, fps=0.0,
                             video_codec="none", has_audio=True, audio_rate=int(audio.rate or 0),
                             audio_channels=int(audio.channels or 0))
        video = videos[0]
        width, height = int(video.codec_context.width), int(video.codec_context.height)
        if _stream_rotation(container, video) in (90, 270):
            width, height = height, width
        rate = video.average_rate
        if not duration and video.duration:
            duration = float(video.duration * video.time_base)
        video_duration = float(video.duration * video.time_base) if video.duration else duration
        return MediaInfo(
            path=path, duration_s=duration, video_duration_s=video_duration, width=width, height=height,
            fps=float(rate) if rate else 0.0, video_codec=video.codec_context.name,
            has_audio=audio is not None, audio_rate=int(audio.rate or 0) if audio else 0,
            audio_channels=int(audio.channels or 0) if audio else 0,
        )
    finally:
        container.close()


def _stream_rotation(container, stream) -> int:
    """The display-matrix rotation in degrees, as ffprobe's ``side_data.rotation`` % 360 (PyAV
    shows it on decoded frames only: the first frame is decoded; 0 if none decodes)."""
    import av

    try:
        for frame in _decoded(container, stream):
            return int(round(frame.rotation)) % 360
    except av.FFmpegError:
        pass  # an undecodable stream: iter_frames reports it
    return 0
