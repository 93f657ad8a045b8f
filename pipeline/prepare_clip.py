"""One source clip → one encoded shard sample (or a ClipError with a reason).

The chain: probe → audio (16 kHz mono, fit to 640·T) → stream frames at 25 fps → detect (every
k-th frame, in batches) → track one face → crop 128x128 → JPEG, frame by frame → log-mel.
Memory holds the encoded crops and the audio, never the decoded video.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, Iterator, Optional

import numpy as np

from cals.constants import AUDIO_SAMPLES_PER_FRAME, FPS
from cals.mel import MEL_PARAMS, log_mel
from cals.shard_format import JPEG_QUALITY_DEFAULT, encode_frames, pack_sample
from pipeline import PIPELINE_VERSION
from pipeline.errors import ClipError
from pipeline.io import MediaInfo, Window, iter_frames, probe, read_audio
from pipeline.manifest import ClipSource
from pipeline.stages.crop import CropParams, crop_frame, crop_square
from pipeline.stages.detect import Detection, Detector
from pipeline.stages.track import TrackParams, track_faces

#: Frames handed to the detector at once.
DETECT_BATCH = 16
#: A decode shorter than this share of the promised frames is reported as truncated.
TRUNCATION_RATIO = 0.9


@dataclass(frozen=True)
class PrepParams:
    """Everything that decides a sample's bytes (written to prep.json)."""

    detector: str = "mediapipe"
    mediapipe_model: str = "short"
    detect_every: int = 1
    min_frames: int = 25
    min_face_ratio: float = 0.5
    codec: str = "jpeg"
    jpeg_quality: int = JPEG_QUALITY_DEFAULT
    track: TrackParams = field(default_factory=TrackParams)
    crop: CropParams = field(default_factory=CropParams)

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if not 90 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 90..100, got {self.jpeg_quality}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrepParams":
        data = dict(data)
        data["track"] = TrackParams(**data["track"])
        data["crop"] = CropParams(**data["crop"])
        return cls(**data)


def fit_audio(audio: np.ndarray, num_frames: int) -> tuple[np.ndarray, int]:
    """Pad with zeros or trim ``(N,)`` audio to exactly 640·T samples.

    Returns ``(audio, pad)`` where pad > 0 is the number of zeros appended, < 0 samples cut.
    """
    target = AUDIO_SAMPLES_PER_FRAME * num_frames
    pad = target - audio.shape[0]
    if pad > 0:
        audio = np.concatenate([audio, np.zeros(pad, dtype=np.int16)])
    return audio[:target], int(pad)


def detected_stream(
    frames: Iterator[np.ndarray], detector: Detector, every: int
) -> Iterator[tuple[np.ndarray, Optional[list[Detection]]]]:
    """Attach detections to every ``every``-th frame (None on the others), batching the detector."""
    index = 0
    while True:
        batch = list(islice(frames, DETECT_BATCH))
        if not batch:
            return
        wanted = [i for i in range(len(batch)) if (index + i) % every == 0]
        found = detector([batch[i] for i in wanted]) if wanted else []
        results: list[Optional[list[Detection]]] = [None] * len(batch)
        for i, dets in zip(wanted, found):
            results[i] = dets
        yield from zip(batch, results)
        index += len(batch)


@dataclass
class ClipResult:
    """An encoded sample (WebDataset dict of bytes) plus the manifest fields it fills."""

    sample: dict[str, Any]
    fields: dict[str, Any]


def process_clip(source: ClipSource, params: PrepParams, detector: Detector) -> ClipResult:
    """Prepare one clip. Raises ClipError with a reason for any input it cannot use."""
    info: MediaInfo = probe(source.path)
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
    audio = read_audio(info, window)

    offset_x, offset_y = (window.crop[0], window.crop[1]) if window.crop else (0, 0)  # boxes in source pixels
    crops_encoded: list[bytes] = []
    boxes: list[tuple[float, float, float, float]] = []
    scores: list[float] = []
    faces_seen = 0
    examined = 0
    stream = detected_stream(iter_frames(info, window), detector, params.detect_every)
    if detector.name == "none":
        tracked = (
            (frame, dets[0].box if dets else None, 1.0, 1) for frame, dets in stream
        )
    else:
        tracked = ((t.frame, t.box, t.score, t.faces) for t in track_faces(stream, params.track))
    for frame, box, score, faces in tracked:
        height, width = frame.shape[:2]
        square = box if detector.name == "none" else crop_square(box, width, height, params.crop)
        crop = crop_frame(frame, square, params.crop.size)
        crops_encoded.extend(encode_frames(crop[None], params.codec, params.jpeg_quality))
        boxes.append((square[0] + offset_x, square[1] + offset_y, square[2] + offset_x, square[3] + offset_y))
        scores.append(score)
        if faces >= 0:
            examined += 1
            faces_seen = max(faces_seen, faces)

    num_frames = len(crops_encoded)
    if num_frames == 0:
        raise ClipError("decode_error", "ffmpeg produced no frames")
    if info.video_duration_s and num_frames < TRUNCATION_RATIO * expected - 1:
        raise ClipError("truncated", f"decoded {num_frames} of {expected} frames promised by the container")
    if num_frames < params.min_frames:
        raise ClipError("too_short", f"{num_frames} frames < --min-frames {params.min_frames}")
    detected = int(np.count_nonzero(scores))
    if detected == 0:
        raise ClipError("no_face", f"no face in {examined} examined frames")
    if detected / max(examined, 1) < params.min_face_ratio:
        raise ClipError("low_face_coverage", f"face in {detected} of {examined} examined frames < --min-face-ratio {params.min_face_ratio}")

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
        faces_seen=faces_seen,
        detect_ratio=detected / max(examined, 1),
        mean_score=float(np.mean([s for s in scores if s > 0])),
        audio_pad_samples=pad,
    )
    meta = dict(
        pipeline_version=PIPELINE_VERSION,
        source=source.path,
        dataset=source.dataset,
        split=source.split,
        speaker=source.speaker,
        transcript=source.transcript,
        extra=source.extra,
        source_start_s=source.start_s,
        source_end_s=source.end_s,
        source_crop=list(source.crop) if source.crop else None,
        source_fps=info.fps,
        source_width=info.width,
        source_height=info.height,
        source_duration_s=info.duration_s,
        source_codec=info.video_codec,
        detector=detector.name if detector.name != "mediapipe" else f"mediapipe-{params.mediapipe_model}",
        detect_every=params.detect_every,
        frames_examined=examined,
        frames_detected=detected,
        faces_seen=faces_seen,
        audio_pad_samples=pad,
        mel_params=MEL_PARAMS.to_dict(),
        crop_params=asdict(params.crop),
        track_params=asdict(params.track),
    )
    sample = pack_sample(
        source.key,
        crops_encoded,
        params.codec,
        mel,
        audio,
        np.asarray(boxes, dtype=np.float32),
        np.asarray(scores, dtype=np.float32),
        meta,
        params.jpeg_quality,
    )
    return ClipResult(sample=sample, fields=fields)
