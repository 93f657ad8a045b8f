"""``cals-generate``: a face video (or still image) + driving audio → a lip-synced mp4.

The chain, with the prep pipeline's own pieces (so a face is cropped exactly as ``cals-prep``
crops the training data):

1. **Audio** (:func:`pipeline.io.read_audio`): a WAV or a video's audio track, 16 kHz mono. Its
   length N samples fixes the output: ``T = ceil(N / 640)`` frames at 25 fps. The mel
   (:func:`cals.mel.log_mel`) is computed on the audio zero-padded to 640·T samples
   (:func:`pipeline.prepare_clip.fit_audio`); the mp4's audio track is the N samples themselves.
2. **Face, pass 1**: the face video decoded at 25 fps (:func:`pipeline.io.iter_frames`; a still
   image decodes to one frame), at most its first T frames, through prep's face stage
   (:func:`pipeline.stages.face.face_track` with the prep detectors of
   :func:`pipeline.stages.detect.make_detector`): faces detected on every frame, one face
   tracked and smoothed, cropped square and resized to 128x128. Only the crops and boxes are
   kept. No detected face at all → ``ClipError("no_face")``.
3. **Length**: a face video with at least T frames gives its first T; a shorter one is looped
   forwards and backwards (:func:`cals.inference.frame_schedule`); a still image is repeated.
4. **Generate** (:func:`cals.inference.generate_faces`): ``CalsModel.generate`` on the whole clip,
   the first crop as the identity reference.
5. **Face, pass 2 + paste + encode**: each output frame's source frame gets its generated mouth
   (the masked lower face; ``paste="face"``: the whole crop) pasted at its crop box with a
   feathered seam (:func:`cals.inference.paste_face`) and goes
   straight to ffmpeg (:class:`pipeline.io.VideoEncoder`: H.264 yuv420p at the source
   resolution, 25 fps, AAC 16 kHz).

Memory: a face video at least as long as the audio is decoded twice and never held (one frame at
a time in each pass). A shorter one has to be shown out of order (looped backwards), so its
frames are held once, raw, from the first pass (``F x H x W x 3`` bytes for F frames): the
video is then shorter than the audio. Crops and generated faces (48 KB per frame each) are held.
"""

from __future__ import annotations

import math
from contextlib import closing
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cals.constants import AUDIO_SAMPLES_PER_FRAME, PASTE_FEATHER, SAMPLE_RATE
from cals.inference import PASTE_REGIONS, frame_schedule, generate_faces, paste_face
from cals.mel import MEL_PARAMS, log_mel
from pipeline.errors import ClipError
from pipeline.io import ENCODE_CRF, VideoEncoder, iter_frames, probe, read_audio
from pipeline.prepare_clip import fit_audio
from pipeline.progress import frame_progress
from pipeline.stages.crop import CropParams
from pipeline.stages.detect import Detector, make_detector
from pipeline.stages.face import face_track
from pipeline.stages.track import TrackParams


#: One plain phrase per ClipError reason :func:`generate_video` can meet.
_PLAIN = {
    "no_face": "no face found",
    "no_audio": "no audio",
    "empty_file": "empty file",
    "unreadable": "unreadable (not a media file ffmpeg can open)",
    "no_video": "no video or image stream",
    "decode_error": "decoding failed",
}


class InputError(Exception):
    """An input :func:`generate_video` cannot use; one line: ``"<role> <path>: <what>: <detail>"``.

    Attributes:
        role: "face" or "audio".
        path: the input.
        reason: the :class:`~pipeline.errors.ClipError` reason (``no_face``, ``no_audio``, ...).
    """

    def __init__(self, role: str, path: str | Path, error: ClipError) -> None:
        lead = _PLAIN.get(error.reason, error.reason)
        super().__init__(f"{role} {path}: {lead}" + (f": {error.detail}" if error.detail else ""))
        self.role, self.path, self.reason = role, str(path), error.reason


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate_video` wrote.

    Attributes:
        out: the mp4.
        frames: video frames (T, 25 fps).
        audio_samples: samples of the audio track (16 kHz); its duration is ``audio_samples / 16000`` s.
        width, height: size of the encoded video: the face input's (an odd side is padded by
            one pixel in the default yuv420p encode).
        source_frames: face frames used from the input (at most T; 1 for a still image).
        looped: the face video was shorter than the audio and was looped.
        frames_detected: input frames with their own face detection (the others interpolated).
    """

    out: str
    frames: int
    audio_samples: int
    width: int
    height: int
    source_frames: int
    looped: bool
    frames_detected: int

    @property
    def duration_s(self) -> float:
        return self.audio_samples / SAMPLE_RATE

    def to_dict(self) -> dict:
        return {**asdict(self), "duration_s": self.duration_s}


@dataclass(frozen=True)
class GenerateParams:
    """Face handling of ``cals-generate`` (defaults: those of ``cals-prep``); ``paste``: the
    region pasted back (:data:`cals.inference.PASTE_REGIONS`: ``mouth``, the masked lower face, or
    ``face``, the whole crop box); ``feather``: its seam width, share of the box side."""

    detector: str = "mediapipe"
    mediapipe_model: str = "short"
    track: TrackParams = field(default_factory=TrackParams)
    crop: CropParams = field(default_factory=CropParams)
    feather: float = PASTE_FEATHER
    paste: str = "mouth"
    lossless: bool = False
    crf: int = ENCODE_CRF

    def __post_init__(self) -> None:
        if self.paste not in PASTE_REGIONS:
            raise ValueError(f"paste must be one of {', '.join(PASTE_REGIONS)}, got {self.paste!r}")


def _advancing(write, progress, task):
    """``write`` that also advances ``task`` of ``progress`` by one frame."""

    def counted(frame: np.ndarray) -> None:
        write(frame)
        progress.advance(task)

    return counted


def _keep(frames: Iterator[np.ndarray], held: list[np.ndarray]) -> Iterator[np.ndarray]:
    for frame in frames:
        held.append(frame)
        yield frame


def face_crops(frames: Iterable[np.ndarray], detector: Detector, params: GenerateParams) -> tuple[np.ndarray, np.ndarray, int]:
    """Pass 1: every frame through the face stage (:func:`pipeline.stages.face.face_track`,
    detection on every frame) as ``cals-prep`` crops it.

    Returns:
        ``(crops (F, 128, 128, 3) uint8, boxes (F, 4) float64 square crop boxes xyxy in source
        pixels, frames with their own detection)``.
    """
    faces = list(face_track(frames, detector, params.track, params.crop))
    if not faces:
        return np.zeros((0, params.crop.size, params.crop.size, 3), np.uint8), np.zeros((0, 4)), 0
    crops = np.stack([face.crop for face in faces])
    boxes = np.asarray([face.square for face in faces], dtype=np.float64)
    return crops, boxes, sum(face.detected for face in faces)


def load_driving_audio(path: str | Path) -> np.ndarray:
    """``(N,)`` int16 16 kHz mono audio of a WAV or a video's audio track; ClipError
    (``no_audio``, ``unreadable``, ...) when there is none."""
    audio = read_audio(probe(path, require_video=False))
    if audio.size == 0:
        raise ClipError("no_audio", "the audio track holds no samples")
    return audio


def generate_video(
    face: str | Path,
    audio: str | Path,
    ckpt: str | Path,
    out: str | Path,
    params: GenerateParams = GenerateParams(),
    device: str = "cpu",
    model=None,
    show_progress: bool = False,
) -> GenerateResult:
    """Lip-sync ``face`` (video or image) to ``audio`` (WAV or video) with the CALS model at
    ``ckpt`` (a run folder or a .safetensors in one; or pass a loaded ``model``) and write
    ``out`` (mp4). See the module docstring. ``show_progress``: a progress bar per step (face
    crops, model, paste + encode) with frames/s on stderr, when stderr is a terminal.

    Raises:
        InputError: an unusable face or audio input (reasons ``empty_file``, ``unreadable``,
            ``no_video``, ``decode_error``, ``no_audio``, ``no_face``).
        FileNotFoundError / ValueError: the checkpoint (from :func:`load_cals_model`).
        pipeline.io.EncodeError: ffmpeg could not write ``out``.
    """
    try:
        sound = load_driving_audio(audio)
    except ClipError as error:
        raise InputError("audio", audio, error) from None
    try:
        with frame_progress(show_progress) as progress:
            return _generate(face, sound, ckpt, out, params, device, model, progress)
    except ClipError as error:
        raise InputError("face", face, error) from None


def _generate(face, sound: np.ndarray, ckpt, out, params: GenerateParams, device: str, model, progress) -> GenerateResult:
    from cals.models.cals_model import load_cals_model

    face_info = probe(face)
    total = math.ceil(sound.size / AUDIO_SAMPLES_PER_FRAME)
    if model is None:
        model = load_cals_model(ckpt, device=device)

    held: list[np.ndarray] = []
    hold = face_info.expected_frames < total  # promised shorter than the audio: keep its frames
    detector = make_detector(params.detector, params.mediapipe_model)
    try:
        with closing(iter_frames(face_info)) as decoded:
            frames = progress.track(islice(decoded, total), total=total, description="face crops")
            crops, boxes, detected = face_crops(_keep(frames, held) if hold else frames, detector, params)
    finally:
        detector.close()
    source_frames = crops.shape[0]
    if source_frames == 0:
        raise ClipError("decode_error", "ffmpeg produced no frames")
    if detected == 0:
        raise ClipError("no_face", f"the {params.detector} detector found no face in {source_frames} frames")
    if source_frames < total and not held:  # shorter than ffprobe promised: decode it again, once
        with closing(iter_frames(face_info)) as decoded:
            held = list(islice(decoded, source_frames))

    schedule = frame_schedule(source_frames, total)
    padded, _ = fit_audio(sound, total)
    model_step = progress.add_task("model", total=total)
    faces = generate_faces(model, crops[schedule], log_mel(padded, MEL_PARAMS))
    progress.update(model_step, completed=total)
    writing = progress.add_task("paste + encode", total=total)

    with VideoEncoder(out, face_info.width, face_info.height, sound, lossless=params.lossless, crf=params.crf) as encoder:
        encoder.write = _advancing(encoder.write, progress, writing)
        if held:
            for index, source in enumerate(schedule):
                encoder.write(paste_face(held[source], faces[index], boxes[source], params.feather, params.paste))
        else:  # at least as long as the audio: its first T frames, streamed again
            with closing(iter_frames(face_info)) as decoded:
                for index, frame in enumerate(islice(decoded, total)):
                    encoder.write(paste_face(frame, faces[index], boxes[index], params.feather, params.paste))
        if encoder.frames != total:
            raise ClipError("decode_error", f"the second decode of {face} gave {encoder.frames} frames, the first {total}")
    return GenerateResult(
        out=str(out),
        frames=total,
        audio_samples=int(sound.size),
        width=encoder.output_size[0],
        height=encoder.output_size[1],
        source_frames=source_frames,
        looped=source_frames < total,
        frames_detected=detected,
    )


__all__ = ["GenerateParams", "GenerateResult", "InputError", "face_crops", "generate_video", "load_driving_audio"]
