"""One source clip → one encoded shard sample (or a ClipError with a reason).

The chain, one small function per step (:func:`process_clip` runs them in order):

1. validate (:func:`validate_clip`): probe, window, audio present, long enough on paper;
2. audio (:func:`pipeline.io.read_audio`): 16 kHz mono int16;
3. face (:func:`clip_faces`): frames streamed at 25 fps through the face stage
   (:func:`pipeline.stages.face.face_track`: detect every k-th frame, track one face, square,
   crop 128x128), each crop JPEG-encoded as it comes;
4. checks (:func:`check_faces`): decoded length, face coverage;
5. lip top (:func:`measure_lip_top`): FaceMesh on :func:`lip_top_samples` of the encoded crops
   (one per second, 4 to 16; one FaceMesh graph per worker, passed in as ``landmarker``), the row of the upper lip's top edge (median, 1st percentile), so a clip whose
   mouth shows above the pose prior's mask line is visible in the manifest and ``cals-prep verify``;
6. encode (:func:`encode_clip`): audio fit to 640·T, log-mel, manifest fields, packed sample.

Memory holds the encoded crops and the audio, never the decoded video.
"""

from __future__ import annotations

from contextlib import closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from cals.constants import (
    AUDIO_SAMPLES_PER_FRAME,
    FPS,
    LIP_TOP_FRAMES_PER_SAMPLE,
    LIP_TOP_MAX_SAMPLES,
    LIP_TOP_MIN_SAMPLES,
    MASK_TOP_ROW,
    SYNC_MIN_CONF,
    UPPER_LIP_TOP_LANDMARKS,
)
from cals.mel import MEL_PARAMS, log_mel
from cals.metrics import LIP_LANDMARKS, MouthLandmarker
from cals.shard_format import JPEG_QUALITY_DEFAULT, decode_frames, encode_frames, pack_sample
from pipeline import PIPELINE_VERSION
from pipeline.errors import ClipError
from pipeline.io import DECODERS, DEFAULT_DECODER, MediaInfo, Window, iter_frames, probe, read_audio
from pipeline.manifest import ClipSource
from pipeline.overlap import InThread, prefetch
from pipeline.stages.crop import CropParams
from pipeline.stages.detect import Detector
from pipeline.stages.face import face_track
from pipeline.stages.quality import QualityParams
from pipeline.stages.scenes import SceneParams
from pipeline.stages.track import TrackParams

#: A decode shorter than this share of the promised frames is reported as truncated.
TRUNCATION_RATIO = 0.9


#: ``--tracks``: one dominant track per clip (the pre-cropped corpora), every track, the speakers.
TRACK_MODES = ("dominant", "all", "speaker")
#: ``--min-track`` default, 25 fps frames: 2 s, as LatentSync's data pipeline (syncnet_python
#: keeps tracks of more than 100 detections for scoring whole videos; 2 s is already 10 of
#: SyncNet's 5-frame windows either side of the ±15 offset search and 4 of the trainers' windows).
MIN_TRACK_FRAMES = 50
#: The decode path of runs before ``--decoder`` existed (a prep.json without ``decoder``).
LEGACY_DECODER = "ffmpeg"
#: PrepParams fields of the scene/track steps; left out of :meth:`PrepParams.to_dict` while at
#: their defaults, so a dominant run without scenes keeps the digest (and prep.json) it had.
TRACK_FIELDS = ("tracks", "scenes", "scene", "min_track", "quality", "sync_model", "sync_digest", "min_conf", "max_seconds")


@dataclass(frozen=True)
class PrepParams:
    """Everything that decides a sample's bytes (written to prep.json).

    The scene/track fields (:data:`TRACK_FIELDS`, see :mod:`pipeline.prepare_tracks`):
    ``tracks`` one of :data:`TRACK_MODES`; ``scenes`` split at shot changes (``scene``: the
    detector's settings); ``min_track`` frames a kept track needs at least; ``quality`` the track
    filters; ``sync_model`` / ``sync_digest`` / ``min_conf`` the SyncNet v2 file (path, SHA-256)
    and confidence of ``--tracks speaker``; ``max_seconds`` longest sample (None: no limit).
    """

    detector: str = "mediapipe"
    mediapipe_model: str = "short"
    detect_every: int = 3  # fastest k under 1 px mean crop deviation on every fixture clip (bench/detect_stride.py, BENCHMARKS.md)
    min_frames: int = 25
    min_face_ratio: float = 0.5
    codec: str = "jpeg"
    jpeg_quality: int = JPEG_QUALITY_DEFAULT
    track: TrackParams = field(default_factory=TrackParams)
    crop: CropParams = field(default_factory=CropParams)
    tracks: str = "dominant"
    scenes: bool = False
    scene: SceneParams = field(default_factory=SceneParams)
    min_track: int = MIN_TRACK_FRAMES
    quality: QualityParams = field(default_factory=QualityParams)
    sync_model: Optional[str] = None
    sync_digest: Optional[str] = None
    min_conf: float = SYNC_MIN_CONF
    max_seconds: Optional[float] = None
    #: decode path (pipeline.io.DECODERS); a prep.json without it was decoded with "ffmpeg"
    decoder: str = DEFAULT_DECODER

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"--decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if not 90 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 90..100, got {self.jpeg_quality}")
        if self.tracks not in TRACK_MODES:
            raise ValueError(f"--tracks must be one of {', '.join(TRACK_MODES)}, got {self.tracks!r}")
        if self.tracks == "speaker" and not self.sync_model:
            raise ValueError("--tracks speaker needs --sync-model (a syncnet_v2.model file)")
        if self.min_track < 1:
            raise ValueError(f"--min-track must be >= 1, got {self.min_track}")
        if self.max_seconds is not None and self.max_seconds * FPS < self.min_frames:
            raise ValueError(f"--max-seconds {self.max_seconds:g} is shorter than --min-frames {self.min_frames} frames")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        defaults = asdict(PrepParams())
        kept = {k: v for k, v in data.items() if k not in TRACK_FIELDS or v != defaults[k]}
        if kept["decoder"] == LEGACY_DECODER:  # the digest (and prep.json) of a run before --decoder
            del kept["decoder"]
        return kept

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrepParams":
        data = dict(data)
        data.setdefault("decoder", LEGACY_DECODER)
        data["track"] = TrackParams(**data["track"])
        data["crop"] = CropParams(**data["crop"])
        if "scene" in data:
            data["scene"] = SceneParams(**data["scene"])
        if "quality" in data:
            data["quality"] = QualityParams(**data["quality"])
        return cls(**data)

    @property
    def legacy(self) -> bool:
        """One dominant track per clip, no scene split, no ``--max-seconds``: today's one sample
        per clip."""
        return self.tracks == "dominant" and not self.scenes and self.max_seconds is None


def fit_audio(audio: np.ndarray, num_frames: int) -> tuple[np.ndarray, int]:
    """Pad with zeros or trim ``(N,)`` audio to exactly 640·T samples.

    Returns ``(audio, pad)`` where pad > 0 is the number of zeros appended, < 0 samples cut.
    """
    target = AUDIO_SAMPLES_PER_FRAME * num_frames
    pad = target - audio.shape[0]
    if pad > 0:
        audio = np.concatenate([audio, np.zeros(pad, dtype=np.int16)])
    return audio[:target], int(pad)


@dataclass
class ClipResult:
    """An encoded sample (WebDataset dict of bytes) plus the manifest fields it fills."""

    sample: dict[str, Any]
    fields: dict[str, Any]


def validate_clip(source: ClipSource, params: PrepParams) -> tuple[MediaInfo, Window, int]:
    """Validate step: probe ``source`` and check its window, audio and promised length.

    Returns ``(info, window, expected)``: the probed file, the window to decode (crop in source
    pixels) and the 25 fps frames the container promises for it. Raises ClipError
    (``bad_window``, ``no_audio``, ``too_short`` and the reasons of :func:`pipeline.io.probe`).
    """
    info: MediaInfo = probe(source.path, decoder=params.decoder)
    window = Window(source.start_s, source.end_s, tuple(source.crop) if source.crop else None)
    try:
        info.check(window)
    except ValueError as error:
        raise ClipError("bad_window", str(error)) from None
    if not info.has_audio:
        raise ClipError("no_audio", "the file has no audio stream")
    expected = info.frames_in(window)
    if info.video_duration_s and expected < params.min_frames:
        raise ClipError("too_short", f"{expected} frames at {FPS} fps < --min-frames {params.min_frames}")
    return info, window, expected


@dataclass
class ClipFaces:
    """The face step's output for one clip, one entry per 25 fps frame.

    Attributes:
        crops: what ``keep`` made of each ``(128, 128, 3)`` uint8 crop (JPEG bytes in prep).
        boxes: square crop boxes xyxy in *source* pixels (the window's crop offset added back).
        scores: the frame's own detection score; 0 = filled in by the tracker.
        examined: frames the detector looked at.
        faces_seen: most detections on one examined frame.
        faces_per_frame: detections on each frame, -1 = not examined (what :meth:`frames` slices by).
    """

    crops: list[Any] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    examined: int = 0
    faces_seen: int = 0
    faces_per_frame: list[int] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.crops)

    def frames(self, start: int, end: int) -> "ClipFaces":
        """Frames ``start .. end`` (end exclusive), with their own examined and faces-seen counts
        (from :attr:`faces_per_frame`, which :func:`clip_faces` fills)."""
        seen = self.faces_per_frame[start:end]
        return ClipFaces(crops=self.crops[start:end], boxes=self.boxes[start:end], scores=self.scores[start:end],
                         examined=sum(1 for n in seen if n >= 0), faces_seen=max(seen, default=0), faces_per_frame=list(seen))

    @property
    def detected(self) -> int:
        """Frames with their own detection."""
        return int(np.count_nonzero(self.scores))


def decoded_frames(info: MediaInfo, window: Window, params: PrepParams) -> Iterator[np.ndarray]:
    """The window's ``(H, W, 3)`` uint8 RGB frames at 25 fps by ``params.decoder``, decoded
    ahead in a thread (:func:`pipeline.overlap.prefetch`); close it when stopping early."""
    return prefetch(iter_frames(info, window, decoder=params.decoder))


def clip_faces(
    info: MediaInfo, window: Window, detector: Detector, params: PrepParams, keep: Callable[[np.ndarray], Any],
    frames: Optional[Iterable[np.ndarray]] = None,
) -> ClipFaces:
    """Face step: stream the window's frames (or ``frames``, some of them: one scene) through
    :func:`pipeline.stages.face.face_track` and keep ``keep(crop)`` of every ``(128, 128, 3)``
    uint8 crop, never the decoded frames."""
    offset_x, offset_y = (window.crop[0], window.crop[1]) if window.crop else (0, 0)
    faces = ClipFaces()
    decoded = None
    if frames is None:  # decode runs ahead in a thread (pipeline.overlap), keep (JPEG) behind in another
        frames = decoded = decoded_frames(info, window, params)
    with closing(decoded) if decoded is not None else nullcontext(), InThread(keep) as kept:
        for face in face_track(frames, detector, params.track, params.crop, params.detect_every):
            x0, y0, x1, y1 = face.square
            kept.submit(face.crop)
            faces.boxes.append((x0 + offset_x, y0 + offset_y, x1 + offset_x, y1 + offset_y))
            faces.scores.append(face.score)
            faces.faces_per_frame.append(face.faces)
            if face.examined:
                faces.examined += 1
                faces.faces_seen = max(faces.faces_seen, face.faces)
        faces.crops = kept.results()
    return faces


def check_faces(faces: ClipFaces, info: MediaInfo, expected: int, params: PrepParams) -> None:
    """Raise ClipError (``decode_error``, ``truncated``, ``too_short``, ``no_face``,
    ``low_face_coverage``) when the decoded clip is too short or shows too little face."""
    num_frames = faces.num_frames
    if num_frames == 0:
        raise ClipError("decode_error", "ffmpeg produced no frames")
    if info.video_duration_s and num_frames < TRUNCATION_RATIO * expected - 1:
        raise ClipError("truncated", f"decoded {num_frames} of {expected} frames promised by the container")
    if num_frames < params.min_frames:
        raise ClipError("too_short", f"{num_frames} frames < --min-frames {params.min_frames}")
    detected, examined = faces.detected, faces.examined
    if detected == 0:
        raise ClipError("no_face", f"no face in {examined} examined frames")
    if detected / max(examined, 1) < params.min_face_ratio:
        raise ClipError("low_face_coverage", f"face in {detected} of {examined} examined frames < --min-face-ratio {params.min_face_ratio}")


@dataclass(frozen=True)
class LipTop:
    """Where the top of the upper lip sits in a clip's crops (FaceMesh, crop rows of 128).

    Attributes:
        median, p1: median and 1st percentile (linear interpolation) of the lip-top row over the
            measured crops; None when FaceMesh found no face on any sampled crop.
        measured: sampled crops on which FaceMesh found a face.
        sampled: crops sampled (:func:`lip_top_samples` of the clip's frames).
    """

    median: Optional[float]
    p1: Optional[float]
    measured: int
    sampled: int

    def to_dict(self) -> dict[str, Any]:
        """The ``json.lip_top`` record (adds the mask line the rows are judged against)."""
        return {**asdict(self), "mask_top_row": MASK_TOP_ROW}


def lip_top_rows(landmarker: MouthLandmarker, crops: np.ndarray) -> np.ndarray:
    """``(N,)`` float64 row (pixels from the top) of the upper lip's top edge in each ``(N, H, W,
    3)`` uint8 RGB crop: the smallest y of :data:`~cals.constants.UPPER_LIP_TOP_LANDMARKS`; NaN
    where FaceMesh finds no face."""
    columns = [LIP_LANDMARKS.index(i) for i in UPPER_LIP_TOP_LANDMARKS]
    return landmarker(crops)[:, columns, 1].min(axis=1)  # a NaN row (no face) stays NaN


def lip_top_samples(num_frames: int) -> int:
    """Crops the lip-top step measures in a clip of ``num_frames`` frames: one per
    :data:`~cals.constants.LIP_TOP_FRAMES_PER_SAMPLE` (rounded up), at least
    :data:`~cals.constants.LIP_TOP_MIN_SAMPLES`, at most :data:`~cals.constants.LIP_TOP_MAX_SAMPLES`,
    never more than ``num_frames`` (why, and what it costs in accuracy: the constants' docstring)."""
    per_second = -(-num_frames // LIP_TOP_FRAMES_PER_SAMPLE)
    return min(num_frames, max(LIP_TOP_MIN_SAMPLES, min(LIP_TOP_MAX_SAMPLES, per_second)))


def lip_top_indices(num_frames: int, count: int) -> np.ndarray:
    """``(count,)`` int indices of ``count`` evenly spaced frames of ``num_frames``, first and
    last included (fewer when rounding repeats one)."""
    return np.unique(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int))


@contextmanager
def landmarker_or_own(landmarker: Optional[MouthLandmarker]) -> Iterator[MouthLandmarker]:
    """``landmarker`` as is (a worker's, kept open), or a FaceMesh graph of this block's own
    (~30 ms to build; closed at its end) when None."""
    if landmarker is not None:
        yield landmarker
        return
    with MouthLandmarker() as own:
        yield own


def measure_lip_top(encoded: list[bytes], landmarker: Optional[MouthLandmarker] = None, samples: Optional[int] = None) -> LipTop:
    """Lip-top step: decode ``samples`` (default :func:`lip_top_samples`) evenly spaced crops of
    the encoded frames (first and last included) and measure :func:`lip_top_rows` on them with
    ``landmarker`` (the worker's; None builds one for this call)."""
    indices = lip_top_indices(len(encoded), lip_top_samples(len(encoded)) if samples is None else samples).tolist()
    crops = decode_frames(b"".join(encoded[i] for i in indices), [len(encoded[i]) for i in indices])
    with landmarker_or_own(landmarker) as mesh:
        rows = lip_top_rows(mesh, crops)
    found = rows[~np.isnan(rows)]
    if not found.size:
        return LipTop(None, None, 0, len(indices))
    return LipTop(float(np.median(found)), float(np.percentile(found, 1)), int(found.size), len(indices))


def encode_clip(
    source: ClipSource, info: MediaInfo, audio: np.ndarray, faces: ClipFaces, detector_name: str, params: PrepParams, lip_top: LipTop,
    track: Optional[dict[str, Any]] = None,
) -> ClipResult:
    """Encode step: audio fit to 640·T samples, its log-mel, the manifest fields and the packed
    sample (``faces.crops`` are the encoded frames; ``lip_top`` from :func:`measure_lip_top`;
    ``track``: the ``json.track`` record of a tracked sample, see :mod:`pipeline.prepare_tracks`)."""
    num_frames, detected, examined = faces.num_frames, faces.detected, faces.examined
    audio, pad = fit_audio(audio, num_frames)
    mel = log_mel(audio, MEL_PARAMS)
    fields = dict(
        num_frames=num_frames,
        duration_s=num_frames / FPS,
        source_duration_s=info.duration_s,
        source_fps=info.fps,
        source_width=info.width,
        source_height=info.height,
        source_codec=info.video_codec,
        frames_examined=examined,
        frames_detected=detected,
        faces_seen=faces.faces_seen,
        detect_ratio=detected / max(examined, 1),
        mean_score=float(np.mean([s for s in faces.scores if s > 0])),
        audio_pad_samples=pad,
        lip_top_median=lip_top.median,
        lip_top_p1=lip_top.p1,
    )
    meta = dict(
        pipeline_version=PIPELINE_VERSION,
        **source.provenance(),
        extra=source.extra,
        source_fps=info.fps,
        source_width=info.width,
        source_height=info.height,
        source_duration_s=info.duration_s,
        source_codec=info.video_codec,
        detector=detector_name if detector_name != "mediapipe" else f"mediapipe-{params.mediapipe_model}",
        detect_every=params.detect_every,
        frames_examined=examined,
        frames_detected=detected,
        faces_seen=faces.faces_seen,
        audio_pad_samples=pad,
        mel_params=MEL_PARAMS.to_dict(),
        crop_params=asdict(params.crop),
        track_params=asdict(params.track),
        lip_top=lip_top.to_dict(),
    )
    if track is not None:
        meta["track"] = track
    sample = pack_sample(
        source.key,
        faces.crops,
        params.codec,
        mel,
        audio,
        np.asarray(faces.boxes, dtype=np.float32),
        np.asarray(faces.scores, dtype=np.float32),
        meta,
        params.jpeg_quality,
    )
    return ClipResult(sample=sample, fields=fields)


def process_clip(source: ClipSource, params: PrepParams, detector: Detector, landmarker: Optional[MouthLandmarker] = None) -> ClipResult:
    """Prepare one clip: validate → audio → face (crops JPEG-encoded as they come) → checks →
    lip top → encode. ``detector`` and ``landmarker`` are the worker's, loaded once (None
    landmarker: one is built for this clip). Raises ClipError with a reason for any input it
    cannot use."""
    info, window, expected = validate_clip(source, params)
    audio = read_audio(info, window, decoder=params.decoder)
    faces = clip_faces(info, window, detector, params, keep=lambda crop: encode_frames(crop[None], params.codec, params.jpeg_quality)[0])
    check_faces(faces, info, expected, params)
    return encode_clip(source, info, audio, faces, detector.name, params, measure_lip_top(faces.crops, landmarker))
