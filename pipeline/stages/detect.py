"""Face detectors as callable classes: load once in ``__init__``, then
``detector(frames) -> detections per frame``. Boxes are in the input frame's pixels.

A detector whose boxes already are the crop squares also provides ``squares(frames)``, which
:func:`pipeline.stages.face.face_track` uses instead of tracking and squaring its detections.

- ``mediapipe`` (default): MediaPipe 0.10.21 FaceDetection; its model ships inside the wheel.
  Frames are downscaled to at most ``max_side`` pixels before detection (boxes are scaled back).
- ``sfd``: face-alignment's S3FD, weights read from the torch hub cache (never downloaded).
- :class:`SyncnetS3fdDetector`: syncnet_python's S3FD (:mod:`cals.models.s3fd`, ``sfd_face.pth``
  from a user path) with its ``detect_faces`` scales and threshold; what the ``syncnet_python``
  scoring protocol detects with when the weights are given.
- ``none``: the whole frame's centre square, for corpora that already are face crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

#: Weights face-alignment's S3FD detector loads, and where users get them.
SFD_WEIGHTS_FILE = "s3fd-619a316812.pth"
SFD_WEIGHTS_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` x0, y0, x1, y1 in source pixels (float), ``score`` in [0, 1]."""

    box: tuple[float, float, float, float]
    score: float


class Detector(Protocol):
    name: str

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]: ...


def _downscale(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    height, width = frame.shape[:2]
    scale = max(height, width) / max_side
    if scale <= 1.0:
        return frame, 1.0
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale


class MediapipeDetector:
    """MediaPipe FaceDetection. ``model`` "short" (faces within ~2 m, 1-3 ms/frame here) or
    "full" (small/distant faces, ~2x slower)."""

    name = "mediapipe"

    def __init__(self, model: str = "short", min_confidence: float = 0.5, max_side: int = 640) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        from cals.native_logs import WARM_UP_SIDE, native_stderr_quiet

        if model not in ("short", "full"):
            raise ValueError(f"mediapipe model must be 'short' or 'full', got {model!r}")
        self.max_side = max_side
        with native_stderr_quiet():  # the graph's native start-up lines, printed on build and first run
            self._solution = mp.solutions.face_detection.FaceDetection(
                model_selection=0 if model == "short" else 1, min_detection_confidence=min_confidence
            )
            self._solution.process(np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8))  # stateless: no effect on later frames

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        results = []
        for frame in frames:
            small, scale = _downscale(frame, self.max_side)
            height, width = small.shape[:2]
            found = self._solution.process(np.ascontiguousarray(small)).detections or []
            faces = []
            for detection in found:
                rel = detection.location_data.relative_bounding_box
                x0, y0 = rel.xmin * width * scale, rel.ymin * height * scale
                x1, y1 = x0 + rel.width * width * scale, y0 + rel.height * height * scale
                faces.append(Detection((x0, y0, x1, y1), float(detection.score[0])))
            results.append(faces)
        return results

    def close(self) -> None:
        self._solution.close()


def sfd_weights_path() -> Path:
    """Where face-alignment looks for S3FD weights: ``$TORCH_HOME/hub/checkpoints/``."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints" / SFD_WEIGHTS_FILE


class SfdDetector:
    """face-alignment's S3FD on CPU (or ``device``). Needs ``pip install face-alignment`` and the
    weights file in the torch hub cache; both are checked with a clear error."""

    name = "sfd"

    def __init__(self, device: str = "cpu", min_confidence: float = 0.5) -> None:
        weights = sfd_weights_path()
        if not weights.is_file():
            raise FileNotFoundError(
                f"S3FD weights not found: {SFD_WEIGHTS_FILE} is missing from {weights.parent}. "
                f"Download it from {SFD_WEIGHTS_URL} into that folder (or set TORCH_HOME), "
                "or use --detector mediapipe."
            )
        try:
            from face_alignment.detection.sfd.sfd_detector import SFDDetector
        except ImportError as error:
            raise ImportError("--detector sfd needs face-alignment: pip install 'cals[sfd]'") from error
        self.min_confidence = min_confidence
        self._model = SFDDetector(device=device, path_to_detector=str(weights))

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        results = []
        for frame in frames:
            boxes = self._model.detect_from_image(np.ascontiguousarray(frame[..., ::-1]))
            results.append(
                [Detection(tuple(float(v) for v in b[:4]), float(b[4])) for b in boxes if b[4] >= self.min_confidence]
            )
        return results

    def close(self) -> None:
        pass


class SyncnetS3fdDetector:
    """syncnet_python's S3FD: :meth:`cals.models.s3fd.S3FD.detect` on each ``(H, W, 3)`` uint8
    RGB frame at ``scales`` (resizing inside, boxes in the frame's pixels), scores > ``conf_th``.

    Raises (at construction):
        FileNotFoundError / ValueError: ``weights`` missing or not syncnet_python's layout (one
        line naming the file and where to get ``sfd_face.pth``).
    """

    def __init__(self, weights: str | Path, conf_th: float, scales: Sequence[float] = (1.0,), device: str = "cpu") -> None:
        from cals.models.s3fd import load_s3fd

        self.weights, self.conf_th, self.scales = Path(weights), conf_th, tuple(scales)
        self._model = load_s3fd(self.weights, device=device)
        self.name = f"s3fd ({self.weights.name}) x{'/'.join(f'{s:g}' for s in self.scales)} conf > {conf_th:g}"

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        return [
            [Detection(tuple(float(v) for v in row[:4]), float(row[4])) for row in self._model.detect(frame, self.conf_th, self.scales)]
            for frame in frames
        ]

    def close(self) -> None:
        pass


class WholeFrameDetector:
    """No detection: the centre square of every frame (for already-cropped faces, e.g. LRS2)."""

    name = "none"

    def __call__(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        return [[Detection(centre_square(frame.shape[1], frame.shape[0]), 1.0)] for frame in frames]

    def squares(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, tuple[float, float, float, float], float, int]]:
        """``(frame, centre square xyxy, score 1.0, 1 face)`` per ``(H, W, 3)`` frame: the crop
        square itself (not tracked, not enlarged)."""
        for frame in frames:
            yield frame, centre_square(frame.shape[1], frame.shape[0]), 1.0, 1

    def close(self) -> None:
        pass


def centre_square(width: int, height: int) -> tuple[float, float, float, float]:
    """Largest centred square of a width x height frame, xyxy."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)


DETECTORS = ("mediapipe", "sfd", "none")


def make_detector(name: str, mediapipe_model: str = "short") -> Detector:
    """Build a detector by CLI name (``mediapipe``, ``sfd``, ``none``), or a plugin given as
    ``"package.module:ClassName"`` (constructed with no arguments; it must provide ``name``,
    ``__call__(frames) -> list[list[Detection]]`` and ``close()``)."""
    if ":" in name:
        import importlib

        module_name, _, class_name = name.partition(":")
        return getattr(importlib.import_module(module_name), class_name)()
    if name == "mediapipe":
        return MediapipeDetector(model=mediapipe_model)
    if name == "sfd":
        return SfdDetector()
    if name == "none":
        return WholeFrameDetector()
    raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
