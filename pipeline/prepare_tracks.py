"""One source clip → its samples: scenes, every face track, the speaker, long tracks split.

:func:`process_source` is what a shard runs per clip (:mod:`pipeline.prepare_shard`):

- ``--tracks dominant`` without ``--scenes``: :func:`pipeline.prepare_clip.process_clip`, one
  sample keyed by the clip's key (the pre-cropped corpora; bytes as before this module).
- ``--detector none`` (no faces, the whole frame) takes these two ways whatever ``--tracks`` says.
- ``--tracks dominant --scenes``: the same streaming chain, the tracker restarted at every cut
  (:class:`SceneStream` feeds :class:`~pipeline.stages.scenes.SceneSplitter` each frame as it is
  decoded). One scene: the same one sample as without ``--scenes``. Several: one sample per
  scene, keyed ``KEY-s<scene>t00``. ``--max-seconds`` (with or without ``--scenes``) splits a
  longer scene's track the same way as below (HDTF's minutes-long raw videos).
- ``--tracks all|speaker``: two passes over the decoded frames. Pass 1 detects (every
  ``--detect-every``-th frame) and splits scenes, keeping boxes only; per scene the IoU tracks
  (:mod:`pipeline.stages.tracks`). Tracks shorter than ``--min-track`` frames are dropped
  (counted in the source row), then the ``interpolated`` and ``small_face`` filters
  (:mod:`pipeline.stages.quality`) apply. Pass 2 decodes again and cuts each surviving track's
  crops (JPEG-encoded as they come, per track; the decoded video is never held), then
  ``blurry``. With ``speaker``, each track is scored with SyncNet v2 against its own audio span
  (:func:`cals.sync_score.score_clip`, offsets ±15) and only the highest-confidence track of each
  scene with confidence at least ``--min-conf`` is kept; the others fail as ``not_speaking``.
  With ``--max-seconds``, a kept track longer than that is split into consecutive samples at the
  quietest frame of the last quarter before the limit (:func:`split_points`).

A track sample's key is ``KEY-s<scene>t<track>`` (two digits each; ``p<part>`` appended when
``--max-seconds`` split it): letters, digits, ``-`` only, as every key
(:func:`cals.shard_format.is_valid_key`). Its frames ``first .. last`` of the clip (window) go
with audio samples ``640·first .. 640·(last + 1)``. Its ``json.track`` = ``{source_key, scene,
track, part, first_frame, scene_first, scene_end, mode}``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from cals.constants import AUDIO_SAMPLES_PER_FRAME, FPS
from cals.metrics import MouthLandmarker
from cals.shard_format import decode_frames, encode_frames
from pipeline.errors import ClipError
from pipeline.io import read_audio
from pipeline.manifest import ClipSource
from pipeline.prepare_clip import (
    TRUNCATION_RATIO,
    ClipFaces,
    ClipResult,
    PrepParams,
    check_faces,
    clip_faces,
    decoded_frames,
    encode_clip,
    landmarker_or_own,
    measure_lip_top,
    process_clip,
    validate_clip,
)
from pipeline.stages.crop import crop_frame
from pipeline.stages.detect import Detector
from pipeline.stages.face import detected_stream
from pipeline.stages.quality import interpolated_share, interpolation_verdict, sharpness, sharpness_verdict, size_verdict
from pipeline.stages.scenes import SceneSplitter
from pipeline.stages.tracks import FaceTrack, scene_tracks, track_squares

#: Reason counted (source row ``tracks_dropped``) for tracks shorter than ``--min-track``.
SHORT_TRACK = "shorter_than_min_track"


@dataclass
class SourceResult:
    """What one source clip gave.

    Attributes:
        samples: ``(key, result, columns)`` per sample: its :class:`ClipResult` and its
            :data:`pipeline.manifest.TRACK_COLUMNS` values.
        dropped: ``(key, reason, detail, columns)`` per track dropped by a filter.
        source: the source row's fields (None for a one-sample dominant clip, whose row is the
            sample's, keyed by the clip's key).
    """

    samples: list[tuple[str, ClipResult, dict[str, Any]]] = field(default_factory=list)
    dropped: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    source: Optional[dict[str, Any]] = None


def sample_key(source_key: str, scene: int, track: int, part: Optional[int] = None) -> str:
    """``KEY-s<scene>t<track>`` (+ ``p<part>``), two digits each."""
    return f"{source_key}-s{scene:02d}t{track:02d}" + (f"p{part:02d}" if part is not None else "")


class SceneStream:
    """Splits a frame stream at cuts: :meth:`segments` yields one iterator of frames per scene;
    each must be consumed to its end before the next is taken (``face_track`` does)."""

    def __init__(self, frames: Iterable[np.ndarray], splitter: SceneSplitter) -> None:
        self._frames, self._splitter = iter(frames), splitter
        self._head: Optional[np.ndarray] = None
        self._done = False

    def segments(self) -> Iterator[Iterator[np.ndarray]]:
        while not self._done or self._head is not None:
            yield self._segment()

    def _segment(self) -> Iterator[np.ndarray]:
        if self._head is not None:
            frame, self._head = self._head, None
            yield frame
        for frame in self._frames:
            if self._splitter.feed(frame):
                self._head = frame
                return
            yield frame
        self._done = True


def split_points(audio: np.ndarray, num_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """``--max-seconds``: ``[(start, end)]`` frame ranges (end exclusive) covering ``num_frames``,
    each at most ``max_frames``; a split falls on the frame of lowest audio energy (mean square of
    its 640 samples of ``(640·num_frames,)`` ``audio``) in the last quarter before the limit."""
    blocks = np.asarray(audio[: AUDIO_SAMPLES_PER_FRAME * num_frames], dtype=np.float64)
    blocks = np.pad(blocks, (0, AUDIO_SAMPLES_PER_FRAME * num_frames - blocks.shape[0]))
    energy = (blocks.reshape(num_frames, AUDIO_SAMPLES_PER_FRAME) ** 2).mean(axis=1)
    ranges, start = [], 0
    while num_frames - start > max_frames:
        low = start + max_frames - max(1, max_frames // 4)
        end = max(low + int(np.argmin(energy[low : start + max_frames + 1])), start + 1)
        ranges.append((start, end))
        start = end
    ranges.append((start, num_frames))
    return ranges


def _encoder(params: PrepParams):
    return lambda crop: encode_frames(crop[None], params.codec, params.jpeg_quality)[0]


def _check_decoded(num_frames: int, info, expected: int) -> None:
    if num_frames == 0:
        raise ClipError("decode_error", "ffmpeg produced no frames")
    if info.video_duration_s and num_frames < TRUNCATION_RATIO * expected - 1:
        raise ClipError("truncated", f"decoded {num_frames} of {expected} frames promised by the container")


def _dropped_summary(counts: Counter) -> Optional[str]:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items())) or None


def process_source(source: ClipSource, params: PrepParams, detector: Detector, sync_model: Any = None,
                   landmarker: Optional[MouthLandmarker] = None) -> SourceResult:
    """Prepare one clip into its samples (module docstring). ``detector``, ``sync_model`` and
    ``landmarker`` (the lip-top step's FaceMesh) are the worker's, loaded once; a None
    landmarker: one is built for this clip, shared by its samples. Raises ClipError when the
    clip as a whole cannot be used (its reasons as :func:`~pipeline.prepare_clip.process_clip`,
    and ``no_track``); tracks dropped by a filter are in :attr:`SourceResult.dropped`."""
    whole_frame = getattr(detector, "squares", None) is not None  # --detector none: one "track", the frame
    if params.legacy or (whole_frame and not params.scenes and params.max_seconds is None):
        result = process_clip(source, params, detector, landmarker)
        return SourceResult(samples=[(source.key, result, {})])
    with landmarker_or_own(landmarker) as mesh:
        if params.tracks == "dominant" or whole_frame:
            return _dominant_scenes(source, params, detector, mesh)
        return _all_tracks(source, params, detector, sync_model, mesh)


def _track_meta(source: ClipSource, scene: tuple[int, int], scene_index: int, track: int, part: Optional[int], first: int, mode: str) -> dict[str, Any]:
    return dict(source_key=source.key, scene=scene_index, track=track, part=part, first_frame=first,
                scene_first=scene[0], scene_end=scene[1], mode=mode)


def _columns(source: ClipSource, scene: int, track: int, part: Optional[int], first: int, **values: Any) -> dict[str, Any]:
    return dict(source_key=source.key, scene=scene, track=track, part=part if part is not None else 0, first_frame=first, **values)


def _dominant_scenes(source: ClipSource, params: PrepParams, detector: Detector, landmarker: MouthLandmarker) -> SourceResult:
    """``--tracks dominant`` with ``--scenes`` and/or ``--max-seconds``: the streaming dominant
    chain restarted at each cut; a scene longer than ``--max-seconds`` split at its quietest frame
    (:func:`split_points`). One scene, not split: the same one sample as the plain chain."""
    info, window, expected = validate_clip(source, params)
    audio = read_audio(info, window, decoder=params.decoder)
    keep = _encoder(params)
    with closing(decoded_frames(info, window, params)) as frames:
        segments = SceneStream(frames, SceneSplitter(params.scene)).segments() if params.scenes else iter([frames])
        scenes = [clip_faces(info, window, detector, params, keep, frames=segment) for segment in segments]
    scenes = [faces for faces in scenes if faces.num_frames]
    max_frames = int(round(params.max_seconds * FPS)) if params.max_seconds is not None else None
    if len(scenes) <= 1 and (max_frames is None or not scenes or scenes[0].num_frames <= max_frames):
        faces = scenes[0] if scenes else ClipFaces()
        check_faces(faces, info, expected, params)
        result = encode_clip(source, info, audio, faces, detector.name, params, measure_lip_top(faces.crops, landmarker))
        return SourceResult(samples=[(source.key, result, {})])
    total = sum(f.num_frames for f in scenes)
    _check_decoded(total, info, expected)
    out = SourceResult()
    dropped: Counter = Counter()
    first = 0
    for index, scene_faces in enumerate(scenes):
        scene = (first, first + scene_faces.num_frames)
        pieces = [(0, scene_faces.num_frames)]
        if max_frames is not None:
            scene_audio = audio[AUDIO_SAMPLES_PER_FRAME * scene[0] : AUDIO_SAMPLES_PER_FRAME * scene[1]]
            pieces = split_points(scene_audio, scene_faces.num_frames, max_frames)
        for part, (a, b) in enumerate(pieces):
            part_index = part if len(pieces) > 1 else None
            start = scene[0] + a
            key = sample_key(source.key, index, 0, part_index)
            columns = _columns(source, index, 0, part_index, start)
            faces = scene_faces if len(pieces) == 1 else scene_faces.frames(a, b)
            try:
                check_faces(faces, info, faces.num_frames, params)
                piece = audio[AUDIO_SAMPLES_PER_FRAME * start : AUDIO_SAMPLES_PER_FRAME * (start + b - a)]
                result = encode_clip(replace(source, key=key), info, piece, faces, detector.name, params, measure_lip_top(faces.crops, landmarker),
                                     track=_track_meta(source, scene, index, 0, part_index, start, "dominant"))
                out.samples.append((key, result, columns))
            except ClipError as error:
                out.dropped.append((key, error.reason, error.detail[:500], columns))
                dropped[error.reason] += 1
        first = scene[1]
    out.source = _source_fields(info, total, len(scenes), len(scenes), len(out.samples), dropped)
    return out


def _source_fields(info, num_frames: int, scenes: int, found: int, kept: int, dropped: Counter) -> dict[str, Any]:
    return dict(num_frames=num_frames, duration_s=num_frames / FPS, source_duration_s=info.duration_s, source_fps=info.fps,
                source_width=info.width, source_height=info.height, source_codec=info.video_codec,
                scenes=scenes, tracks_found=found, tracks_kept=kept, tracks_dropped=_dropped_summary(dropped))


@dataclass
class _Kept:
    """A track that passed the pass-1 filters, with its squares and (pass 2) its crops."""

    track: FaceTrack
    squares: np.ndarray
    crops: list[bytes] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    conf: Optional[float] = None


def _all_tracks(source: ClipSource, params: PrepParams, detector: Detector, sync_model: Any, landmarker: MouthLandmarker) -> SourceResult:
    """``--tracks all|speaker`` (module docstring)."""
    info, window, expected = validate_clip(source, params)
    audio = read_audio(info, window, decoder=params.decoder)
    splitter = SceneSplitter(params.scene) if params.scenes else None

    def fed(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            if splitter is not None:
                splitter.feed(frame)
            yield frame

    detections, shape = [], (0, 0)
    with closing(decoded_frames(info, window, params)) as frames:
        for frame, dets in detected_stream(fed(frames), detector, params.detect_every):
            detections.append(dets)
            shape = frame.shape[:2]
    num_frames = len(detections)
    scores = [max((d.score for d in dets), default=0.0) if dets else 0.0 for dets in detections]
    check_faces(ClipFaces(crops=[None] * num_frames, scores=scores, examined=sum(d is not None for d in detections)), info, expected, params)
    scenes = splitter.ranges(num_frames) if splitter is not None else [(0, num_frames)]
    height, width = shape
    out, dropped = SourceResult(), Counter()
    found = 0
    kept: list[_Kept] = []
    min_length = max(params.min_track, params.min_frames)
    for index, (first, end) in enumerate(scenes):
        for track in scene_tracks(detections, first, end, index, params.track):
            found += 1
            if track.num_frames < min_length:
                dropped[SHORT_TRACK] += 1
                continue
            share = interpolated_share(track.scores, track.faces)
            columns = _columns(source, index, track.index, None, track.first, face_px=track.face_px, interpolated_share=share)
            verdict = interpolation_verdict(share, params.quality) or size_verdict(track.face_px, params.quality)
            if verdict:
                out.dropped.append((sample_key(source.key, index, track.index), *verdict, columns))
                dropped[verdict[0]] += 1
                continue
            kept.append(_Kept(track, track_squares(track, width, height, params.track, params.crop)))
    if kept:
        _cut_crops(info, window, kept, params)
    survivors = []
    for item in kept:
        track = item.track
        value = float(np.median(item.sharpness))
        verdict = sharpness_verdict(value, params.quality)
        if verdict:
            out.dropped.append((sample_key(source.key, track.scene, track.index), *verdict,
                                _columns(source, track.scene, track.index, None, track.first, face_px=track.face_px, sharpness=value,
                                         interpolated_share=interpolated_share(track.scores, track.faces))))
            dropped[verdict[0]] += 1
            continue
        survivors.append((item, value))
    if params.tracks == "speaker":
        survivors = _speakers(source, audio, survivors, params, sync_model, out, dropped)
    offset_x, offset_y = (window.crop[0], window.crop[1]) if window.crop else (0, 0)
    for item, value in survivors:
        track = item.track
        pieces = [(0, track.num_frames)]
        if params.max_seconds is not None:
            span = audio[AUDIO_SAMPLES_PER_FRAME * track.first : AUDIO_SAMPLES_PER_FRAME * track.end]
            pieces = split_points(span, track.num_frames, int(round(params.max_seconds * FPS)))
        for part, (a, b) in enumerate(pieces):
            part_index = part if len(pieces) > 1 else None
            key = sample_key(source.key, track.scene, track.index, part_index)
            first = track.first + a
            columns = _columns(source, track.scene, track.index, part_index, first, face_px=track.face_px, sharpness=value,
                               interpolated_share=interpolated_share(track.scores, track.faces), track_sync_conf=item.conf)
            if b - a < params.min_frames:
                dropped[SHORT_TRACK] += 1
                continue
            faces_seen = track.faces[a:b]
            faces = ClipFaces(
                crops=item.crops[a:b],
                boxes=[(x0 + offset_x, y0 + offset_y, x1 + offset_x, y1 + offset_y) for x0, y0, x1, y1 in item.squares[a:b].tolist()],
                scores=track.scores[a:b].tolist(),
                examined=int(np.count_nonzero(faces_seen >= 0)),
                faces_seen=int(faces_seen.max(initial=0)),
            )
            piece = audio[AUDIO_SAMPLES_PER_FRAME * first : AUDIO_SAMPLES_PER_FRAME * (first + b - a)]
            meta = _track_meta(source, scenes[track.scene], track.scene, track.index, part_index, first, params.tracks)
            result = encode_clip(replace(source, key=key), info, piece, faces, detector.name, params, measure_lip_top(faces.crops, landmarker),
                                 track=meta)
            out.samples.append((key, result, columns))
    out.source = _source_fields(info, num_frames, len(scenes), found, len(out.samples), dropped)
    if not out.samples and not out.dropped:
        raise ClipError("no_track", f"{found} face tracks in {len(scenes)} scenes, none of at least --min-track {min_length} frames")
    return out


def _cut_crops(info, window, kept: list[_Kept], params: PrepParams) -> None:
    """Pass 2: decode the window again and cut, sharpness-measure and encode each kept track's
    crops as their frames come (raises ClipError ``decode_error`` if fewer frames come back)."""
    keep = _encoder(params)
    last = max(item.track.end for item in kept)
    seen = 0
    with closing(decoded_frames(info, window, params)) as frames:
        for index, frame in enumerate(frames):
            seen = index + 1
            for item in kept:
                offset = index - item.track.first
                if 0 <= offset < item.track.num_frames:
                    crop = crop_frame(frame, tuple(item.squares[offset]), params.crop.size)
                    item.crops.append(keep(crop))
                    item.sharpness.append(sharpness(crop))
    if seen < last:
        raise ClipError("decode_error", f"the second decode gave {seen} frames, the first {last}")


def speaker_verdicts(tracks: list[tuple[int, float]], min_conf: float) -> list[Optional[str]]:
    """``--tracks speaker``'s rule on ``(scene, confidence)`` per track: None for the speaker of
    its scene (the highest confidence there, ties all kept, and at least ``min_conf``), else why not."""
    best: dict[int, float] = {}
    for scene, conf in tracks:
        best[scene] = max(best.get(scene, -np.inf), conf)
    verdicts: list[Optional[str]] = []
    for scene, conf in tracks:
        if conf < min_conf:
            verdicts.append(f"confidence {conf:.3f} < --min-conf {min_conf:g}")
        elif conf < best[scene]:
            verdicts.append(f"confidence {conf:.3f} < {best[scene]:.3f} of another track in its scene")
        else:
            verdicts.append(None)
    return verdicts


def _speakers(source: ClipSource, audio: np.ndarray, survivors: list, params: PrepParams, model: Any, out: SourceResult, dropped: Counter) -> list:
    """``--tracks speaker``: score each track against its audio span; keep the best of each scene
    when its confidence reaches ``min_conf``; record the others as ``not_speaking``."""
    from cals.sync_score import score_clip

    for item, _ in survivors:
        track = item.track
        span = audio[AUDIO_SAMPLES_PER_FRAME * track.first : AUDIO_SAMPLES_PER_FRAME * track.end]
        span = np.pad(span, (0, AUDIO_SAMPLES_PER_FRAME * track.num_frames - span.shape[0]))
        frames = decode_frames(b"".join(item.crops), [len(c) for c in item.crops])
        item.conf = float(score_clip(frames, span, model).conf)
    verdicts = speaker_verdicts([(item.track.scene, item.conf) for item, _ in survivors], params.min_conf)
    speaking = []
    for (item, value), why in zip(survivors, verdicts):
        if why is None:
            speaking.append((item, value))
            continue
        track = item.track
        out.dropped.append((sample_key(source.key, track.scene, track.index), "not_speaking", f"SyncNet {why}",
                            _columns(source, track.scene, track.index, None, track.first, face_px=track.face_px, sharpness=value,
                                     interpolated_share=interpolated_share(track.scores, track.faces), track_sync_conf=item.conf)))
        dropped["not_speaking"] += 1
    return speaking
