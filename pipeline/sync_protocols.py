"""What a SyncNet scorer is fed, as the papers feed it: the ``syncnet_python`` and ``precropped``
protocols of ``cals-sync score`` (the third, ``shards``, is :mod:`pipeline.sync_report`'s prep
chain).

``syncnet_python`` reproduces joonson/syncnet_python's ``run_pipeline.py`` followed by
``run_syncnet.py`` (the LSE-D / LSE-C of HDTF-style raw videos; every constant is a field of
:class:`SyncnetPythonParams`, default = syncnet_python's):

1. frames at 25 fps (our decoder, :func:`pipeline.io.iter_frames`), audio 16 kHz mono;
2. face detection on each frame downscaled by ``facedet_scale`` (0.25, bilinear, as S3FD's
   ``detect_faces``) keeping scores above ``det_conf`` (0.9). The detector is syncnet_python's
   S3FD (:mod:`cals.models.s3fd`) when ``sfd_face.pth`` is given, else our MediaPipe
   FaceDetection with that downscale and threshold (the report says which detector ran);
3. scene split with PySceneDetect's ``ContentDetector`` at its defaults (threshold 27, 15-frame
   minimum scene), scene times mapped to 25 fps frame indices; scenes shorter than
   ``min_track`` frames are skipped;
4. per scene, greedy IoU tracking (:func:`track_shot`: IoU > 0.5, at most 25 frames between
   detections), tracks of more than ``min_track`` detections whose mean box side exceeds
   ``min_face_size`` (100 px) kept, boxes linearly interpolated across missed frames;
5. per track, box half-size ``s = max(w, h) / 2`` and centre median-filtered with kernel 13
   (:func:`smooth_track`, zero-padded at the ends as ``scipy.signal.medfilt`` is), then
   :func:`crop_frame`: rows ``y - s .. y + 1.8 s``, columns ``x - 1.4 s .. x + 1.4 s`` (for
   crop_scale 0.4) of the frame padded with value 110, resized to 224x224 (bilinear);
6. the track's crops make one JPEG round trip at ffmpeg's default MJPEG quality, read back with
   OpenCV (:func:`ffmpeg_jpeg_roundtrip`, what ``SyncNetInstance.evaluate`` does;
   ``jpeg=False`` turns it off), and the track is scored with its audio span
   ``640·first .. 640·(last + 1)``. One sample per track.

Known differences from syncnet_python, all before the crop: it decodes from an MPEG-4
``-qscale:v 2`` transcode and detects on ``-qscale:v 2`` JPEG frames (near-lossless), and it
writes each track as an XVID ``.avi`` before ``evaluate`` re-reads it; those two lossy
re-encodings are not reproduced.

``precropped`` is Wav2Lip's LRS2/LRS3 evaluation and ``demo_syncnet.py`` on ``example.avi``:
no detection, every frame as it is (:func:`ffmpeg_jpeg_frames`: ffmpeg decodes the file at
25 fps straight to default-quality JPEG, OpenCV reads it back), resized to 224x224 by the
scorer.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from cals.constants import AUDIO_SAMPLES_PER_FRAME, FPS, SYNCNET_FRAME_SIZE
from pipeline.errors import ClipError
from pipeline.io import MediaInfo, ffmpeg_input, iter_frames, probe, read_audio
from pipeline.stages.detect import Detection, Detector

#: ffmpeg's image2 muxer pattern for the JPEG round trip (the pattern syncnet_python uses).
JPEG_PATTERN = "%06d.jpg"


@dataclass(frozen=True)
class SyncnetPythonParams:
    """syncnet_python's ``run_pipeline.py`` settings (its argparse defaults and literals).

    Attributes:
        facedet_scale: detection runs on frames resized by this factor (bilinear).
        det_conf: detections scoring below this are dropped (S3FD ``conf_th``).
        iou_threshold: a detection joins a track when its IoU with the track's last box exceeds this.
        num_failed_det: most frames between two detections of one track.
        min_track: frames; shorter scenes are skipped, and a track needs more detections than this
            (LatentSync uses 50).
        min_face_size: pixels; a track's mean box width or height must exceed this.
        smooth_kernel: median-filter kernel (frames) on box half-size and centre.
        crop_scale: crop margin: rows ``y - s .. y + s (1 + 2 c)``, columns ``x ± s (1 + c)``.
        pad_value: grey level of the frame padding the crop may reach into.
        jpeg: make the crops' JPEG round trip at ffmpeg's default quality before scoring.
    """

    facedet_scale: float = 0.25
    det_conf: float = 0.9
    iou_threshold: float = 0.5
    num_failed_det: int = 25
    min_track: int = 100
    min_face_size: float = 100.0
    smooth_kernel: int = 13
    crop_scale: float = 0.4
    pad_value: int = 110
    jpeg: bool = True


@dataclass(frozen=True)
class Track:
    """One face track: ``frames`` ``(n,)`` consecutive 25 fps frame indices, ``boxes`` ``(n, 4)``
    float64 xyxy in source pixels (interpolated across missed detections)."""

    frames: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class TrackInput:
    """What one track scores: ``crops`` ``(n, 224, 224, 3)`` uint8 RGB, ``audio`` ``(640 n,)``
    int16 16 kHz, ``first_frame`` its first 25 fps frame in the video."""

    crops: np.ndarray
    audio: np.ndarray
    first_frame: int


def iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (pixels; 0 area gives a division by zero, as in
    syncnet_python, so callers pass detector boxes)."""
    width = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    height = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    inter = width * height
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return inter / float(area_a + area_b - inter)


def track_shot(faces: Sequence[tuple[int, Sequence[Detection]]], params: SyncnetPythonParams) -> list[Track]:
    """syncnet_python's ``track_shot`` on one scene.

    Args:
        faces: ``(frame index, detections)`` per frame of the scene, in order.
    Returns:
        The kept tracks, in the order found. Each pass over the scene builds one track greedily
        (the first unused detection seeds it; a later one joins when it is at most
        ``num_failed_det`` frames after the track's last box with IoU > ``iou_threshold``) and
        removes its detections. As in the original (a list mutated while iterated), the detection
        right after one taken from a frame is not looked at in that pass.
    """
    remaining = [(frame, [d.box for d in dets]) for frame, dets in faces]
    tracks: list[Track] = []
    while True:
        track: list[tuple[int, tuple[float, ...]]] = []
        for frame, boxes in remaining:
            index = 0
            while index < len(boxes):
                box = boxes[index]
                if not track:
                    track.append((frame, box))
                    boxes.pop(index)
                elif frame - track[-1][0] <= params.num_failed_det:
                    if iou(box, track[-1][1]) > params.iou_threshold:
                        track.append((frame, box))
                        boxes.pop(index)
                else:
                    break
                index += 1
        if not track:
            return tracks
        if len(track) <= params.min_track:
            continue
        frame_numbers = np.array([frame for frame, _ in track])
        boxes_seen = np.array([box for _, box in track], dtype=np.float64)
        frames = np.arange(frame_numbers[0], frame_numbers[-1] + 1)
        boxes = np.stack([np.interp(frames, frame_numbers, boxes_seen[:, k]) for k in range(4)], axis=1)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        if max(widths.mean(), heights.mean()) > params.min_face_size:
            tracks.append(Track(frames=frames, boxes=boxes))


def smooth_track(boxes: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 4)`` xyxy boxes → ``(s, x, y)``, each ``(n,)`` float64: half of the larger box side
    and the box centre, each median-filtered with ``kernel`` (``scipy.signal.medfilt``: zero
    padding, so the first and last ``kernel // 2`` values lean towards 0, as in syncnet_python)."""
    from scipy.signal import medfilt

    boxes = np.asarray(boxes, dtype=np.float64)
    half = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    return tuple(medfilt(values, kernel_size=kernel) for values in (half, centre_x, centre_y))


def crop_frame(frame: np.ndarray, half: float, centre_x: float, centre_y: float, params: SyncnetPythonParams) -> np.ndarray:
    """syncnet_python's ``crop_video`` arithmetic on one ``(H, W, 3)`` uint8 frame (any channel
    order): pad by ``p = int(s (1 + 2c))`` with ``pad_value``, take rows
    ``int(y + p - s) .. int(y + p + s (1 + 2c))`` and columns ``int(x + p - s (1 + c)) ..
    int(x + p + s (1 + c))``, resize to 224x224 with ``cv2.resize``'s default bilinear.
    Returns ``(224, 224, 3)`` uint8."""
    import cv2

    scale = params.crop_scale
    pad = int(half * (1 + 2 * scale))
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), "constant", constant_values=(params.pad_value, params.pad_value))
    my, mx = centre_y + pad, centre_x + pad
    face = padded[int(my - half) : int(my + half * (1 + 2 * scale)), int(mx - half * (1 + scale)) : int(mx + half * (1 + scale))]
    return cv2.resize(face, (SYNCNET_FRAME_SIZE, SYNCNET_FRAME_SIZE))


def _read_jpegs(folder: Path) -> np.ndarray:
    """The numbered JPEGs of ``folder`` read with ``cv2.imread`` (BGR), returned as ``(T, H, W, 3)`` RGB."""
    import cv2

    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise ClipError("decode_error", "ffmpeg wrote no JPEG frame")
    return np.stack([cv2.imread(str(f))[..., ::-1] for f in files])


def _run_ffmpeg(args: list[str], stdin: Optional[bytes] = None) -> None:
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *args], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ClipError("decode_error", "JPEG round trip: " + (message[-1] if message else f"ffmpeg exit {result.returncode}"))


def ffmpeg_jpeg_roundtrip(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB → the same frames written by ffmpeg as JPEG at its default MJPEG
    settings (``-f image2``, no quality flag) and read back with ``cv2.imread``: what
    ``SyncNetInstance.evaluate`` does to a track video. Raises ClipError("decode_error")."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    count, height, width, _ = frames.shape
    with tempfile.TemporaryDirectory(prefix="cals-jpeg-") as tmp:
        _run_ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(FPS), "-i", "pipe:",
                     "-threads", "1", "-f", "image2", str(Path(tmp) / JPEG_PATTERN)], stdin=frames.tobytes())
        out = _read_jpegs(Path(tmp))
    if out.shape[0] != count:
        raise ClipError("decode_error", f"JPEG round trip gave {out.shape[0]} frames for {count}")
    return out


def ffmpeg_jpeg_frames(info: MediaInfo) -> np.ndarray:
    """A video's frames at exactly 25 fps, decoded by ffmpeg straight to default-quality JPEG and
    read with ``cv2.imread`` (the ``precropped`` protocol): ``(T, H, W, 3)`` uint8 RGB."""
    with tempfile.TemporaryDirectory(prefix="cals-jpeg-") as tmp:
        _run_ffmpeg(["-i", ffmpeg_input(info.path), "-vf", f"fps={FPS}:start_time=0", "-threads", "1",
                     "-f", "image2", str(Path(tmp) / JPEG_PATTERN)])
        return _read_jpegs(Path(tmp))


class ScaledDetector:
    """Runs ``inner`` on each frame resized by ``scale`` (bilinear, as S3FD's ``detect_faces``)
    and keeps detections scoring at least ``min_score``; boxes come back in full-frame pixels."""

    def __init__(self, inner: Detector, scale: float, min_score: float) -> None:
        self.inner, self.scale, self.min_score = inner, scale, min_score
        self.name = f"{inner.name} x{scale:g} conf {min_score:g}"

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        import cv2

        small = [cv2.resize(f, (0, 0), fx=self.scale, fy=self.scale, interpolation=cv2.INTER_LINEAR) for f in frames]
        return [
            [Detection(tuple(v / self.scale for v in d.box), d.score) for d in dets if d.score >= self.min_score]
            for dets in self.inner(small)
        ]

    def close(self) -> None:
        self.inner.close()


def syncnet_python_detector(params: SyncnetPythonParams, mediapipe_model: str = "short",
                            s3fd: Optional[Path] = None, device: str = "cpu") -> Detector:
    """The detector of step 2 (module docstring): syncnet_python's S3FD from ``s3fd``
    (``sfd_face.pth``) at ``scales=[facedet_scale]``, ``conf_th=det_conf``; without it MediaPipe
    FaceDetection behind :class:`ScaledDetector` with the same downscale and threshold
    (MediaPipe's own threshold is set to the same ``det_conf``; it sees the already downscaled
    frame, which it does not shrink again).

    Raises:
        FileNotFoundError / ValueError: ``s3fd`` missing or not syncnet_python's S3FD layout.
    """
    from pipeline.stages.detect import MediapipeDetector, SyncnetS3fdDetector

    if s3fd is not None:
        return SyncnetS3fdDetector(s3fd, conf_th=params.det_conf, scales=(params.facedet_scale,), device=device)
    inner = MediapipeDetector(model=mediapipe_model, min_confidence=params.det_conf, max_side=np.iinfo(np.int32).max)
    return ScaledDetector(inner, params.facedet_scale, params.det_conf)


def scene_ranges(path: Path, num_frames: int) -> list[tuple[int, int]]:
    """PySceneDetect ``ContentDetector()`` (its defaults, auto downscale) on the source video →
    ``[(first, end)]`` 25 fps frame ranges (end exclusive) covering ``0 .. num_frames``; one range
    when it finds no cut (as syncnet_python's ``scene_detect``)."""
    from scenedetect import ContentDetector, detect

    try:
        scenes = detect(str(path), ContentDetector())
    except Exception as error:  # scenedetect raises its own and OpenCV's types; reported per clip
        raise ClipError("decode_error", f"scene detection: {error}") from None
    cuts = sorted({min(max(round(start.get_seconds() * FPS), 0), num_frames) for start, _ in scenes[1:]})
    bounds = [0, *[c for c in cuts if 0 < c < num_frames], num_frames]
    return list(zip(bounds[:-1], bounds[1:]))


def find_tracks(info: MediaInfo, detector: Detector, params: SyncnetPythonParams) -> tuple[list[Track], int]:
    """Detect on every 25 fps frame, split scenes, track each scene: ``(tracks, frame count)``."""
    faces = [(index, dets) for index, frame in enumerate(iter_frames(info)) for dets in detector([frame])]
    tracks: list[Track] = []
    for first, end in scene_ranges(Path(info.path), len(faces)):
        if end - first >= params.min_track:
            tracks.extend(track_shot(faces[first:end], params))
    return tracks, len(faces)


def crop_tracks(info: MediaInfo, tracks: Sequence[Track], params: SyncnetPythonParams) -> list[np.ndarray]:
    """Second pass over the frames: each track's ``(n, 224, 224, 3)`` uint8 RGB crops (:func:`crop_frame`
    on the smoothed boxes)."""
    smoothed = [smooth_track(t.boxes, params.smooth_kernel) for t in tracks]
    crops: list[list[np.ndarray]] = [[] for _ in tracks]
    for index, frame in enumerate(iter_frames(info)):
        for k, track in enumerate(tracks):
            offset = index - int(track.frames[0])
            if 0 <= offset < len(track.frames):
                half, cx, cy = (values[offset] for values in smoothed[k])
                crops[k].append(crop_frame(frame, half, cx, cy, params))
    return [np.stack(c) for c in crops]


def syncnet_python_inputs(video: Path, detector: Detector, params: SyncnetPythonParams) -> Iterator[TrackInput]:
    """The ``syncnet_python`` protocol on one video (module docstring): one :class:`TrackInput`
    per face track. Raises ClipError (unreadable file, no audio, ``no_face`` when no track is kept)."""
    info = probe(video)
    audio = read_audio(info)
    tracks, num_frames = find_tracks(info, detector, params)
    if not tracks:
        raise ClipError("no_face", f"no face track of more than {params.min_track} detections and {params.min_face_size:g} px in {num_frames} frames")
    for track, crops in zip(tracks, crop_tracks(info, tracks, params)):
        first = int(track.frames[0])
        span = audio[AUDIO_SAMPLES_PER_FRAME * first : AUDIO_SAMPLES_PER_FRAME * (first + len(crops))]
        span = np.pad(span, (0, AUDIO_SAMPLES_PER_FRAME * len(crops) - span.shape[0]))
        yield TrackInput(crops=ffmpeg_jpeg_roundtrip(crops) if params.jpeg else crops, audio=span, first_frame=first)


def precropped_input(video: Path) -> TrackInput:
    """The ``precropped`` protocol on one video: every 25 fps frame as JPEG-decoded by
    :func:`ffmpeg_jpeg_frames` and its 16 kHz audio fit to ``640 T`` samples (zeros pad, extra is
    cut). The scorer resizes the frames to 224x224. Raises ClipError."""
    info = probe(video)
    audio = read_audio(info)
    frames = ffmpeg_jpeg_frames(info)
    needed = AUDIO_SAMPLES_PER_FRAME * frames.shape[0]
    audio = np.pad(audio[:needed], (0, needed - min(needed, audio.shape[0])))
    return TrackInput(crops=frames, audio=audio, first_frame=0)
