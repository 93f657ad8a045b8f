"""Face quality of a track (``--tracks all|speaker``): size, sharpness, interpolated share.

Each filter drops a track with its own reason (:data:`pipeline.errors.REASONS`) and a detail that
gives the measured value and the limit:

- ``small_face``: the median larger side of the track's own detection boxes, in *source* pixels,
  is below ``min_face_px`` (default 64: a smaller face is enlarged more than 2x into the
  128x128 crop, whose square is 1.8x the box; syncnet_python keeps boxes over 100 px at 224²).
- ``blurry``: the median over the track's crops of the variance of the Laplacian (OpenCV
  ``cv2.Laplacian``, 3x3 kernel, float64) of the 128x128 grey crop is below ``min_sharpness``
  (default 20. Measured on the crops of three fixture clips, every 5th frame, median per clip:
  talk_man_mapbg 110.5, talk_man_suit 306.8, talk_aoc2 533.8 as prepared; 3.5, 5.7, 14.8 after a
  9x9 Gaussian blur (sigma 3); 9.9, 22.1, 56.2 after a 5x5 one (sigma 1.5). So 20 keeps every
  prepared clip with a 5x margin and drops the strongly blurred ones).
- ``interpolated``: the share of the track's examined frames without their own detection (their
  box interpolated between two detections) exceeds ``max_interpolated`` (default 0.5, the
  complement of ``--min-face-ratio``'s 0.5 for the dominant track).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class QualityParams:
    """Limits of the three track filters (module docstring); 0 / 1 turns one off."""

    min_face_px: float = 64.0
    min_sharpness: float = 20.0
    max_interpolated: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_interpolated <= 1.0:
            raise ValueError(f"max_interpolated must be in 0..1, got {self.max_interpolated}")
        if self.min_face_px < 0 or self.min_sharpness < 0:
            raise ValueError("min_face_px and min_sharpness must be >= 0")


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of one ``(H, W, 3)`` uint8 RGB crop in grey (higher = sharper)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def interpolated_share(scores: np.ndarray, faces: np.ndarray) -> float:
    """Share of the examined frames (``faces >= 0``) whose ``scores`` is 0 (no own detection)."""
    examined = np.asarray(faces) >= 0
    if not examined.any():
        return 1.0
    return float(np.count_nonzero(np.asarray(scores)[examined] == 0) / np.count_nonzero(examined))


def size_verdict(face_px: float, params: QualityParams) -> Optional[tuple[str, str]]:
    """``("small_face", detail)`` when the face is too small, else None."""
    if face_px < params.min_face_px:
        return "small_face", f"median face box {face_px:.0f} px < --min-face-px {params.min_face_px:g}"
    return None


def interpolation_verdict(share: float, params: QualityParams) -> Optional[tuple[str, str]]:
    """``("interpolated", detail)`` when too many examined frames have no own detection, else None."""
    if share > params.max_interpolated:
        return "interpolated", f"{share:.0%} of examined frames interpolated > --max-interpolated {params.max_interpolated:g}"
    return None


def sharpness_verdict(value: float, params: QualityParams) -> Optional[tuple[str, str]]:
    """``("blurry", detail)`` when the crops are too blurred, else None."""
    if value < params.min_sharpness:
        return "blurry", f"median Laplacian variance {value:.1f} < --min-sharpness {params.min_sharpness:g}"
    return None
