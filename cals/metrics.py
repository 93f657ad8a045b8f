"""Visual-quality and lip-shape metrics of generated face crops: PSNR, SSIM and LMD.

All three compare a generated clip with its ground truth frame by frame, on the same
``(T, H, W, 3)`` uint8 RGB crops (the shards' 128x128): the generator redraws the crop it was
given, so the two are aligned pixel for pixel and no registration is done.

**Averaging.** Every function returns per-frame values; a clip's value is their mean, and a
corpus value (:mod:`cals.eval`) is the mean over all frames of all clips (frame-pooled), as the
common lip-sync evaluation scripts do (e.g. TalkLip's ``evaluation/visual_quality.py``, which
appends one value per frame and averages at the end).

**PSNR** (:func:`psnr_frames`, :func:`psnr`): ``10·log10(255² / MSE)``, MSE over every pixel and
channel of one frame. Identical frames (MSE 0) give ``+inf`` per frame; before averaging, each
frame is capped at :data:`~cals.constants.PSNR_CAP_DB` (100 dB, what TalkLip's script returns for
MSE 0). The cap changes only identical frames: the largest finite PSNR of two different
128x128x3 uint8 frames is 95.05 dB. So a clip identical to its ground truth scores 100 dB, and
a single identical frame cannot make a clip's mean infinite.

**SSIM** (:func:`ssim_frames`, :func:`ssim`): Wang, Bovik, Sheikh & Simoncelli 2004, with their
constants: an 11x11 Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, population
(not sample) variances. Computed **per RGB channel and averaged over the channels**, the choice of
the lip-sync evaluations this project compares with (scikit-image's ``structural_similarity(...,
channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)``, as in TalkLip's script), not on luminance only. The SSIM map is averaged over
the "valid" region, the pixels whose whole window lies inside the frame (the 5-pixel border is
left out), which is what scikit-image's cropping of the filtered maps amounts to.

**LMD** (:class:`MouthLandmarker`, :func:`landmark_distance`): mouth landmarks of MediaPipe
FaceMesh (0.10.21, shipped in the wheel; ``static_image_mode=True``, ``refine_landmarks=False``,
one face) on the generated and on the real crop. Per frame, LMD is the mean over the landmarks
of the Euclidean distance between generated and real positions. Two sets:

- **LMD** (the usual definition, Chen et al. 2018/2019, ATVGnet): the 20 mouth points 48-67 of
  the 68-point (dlib / FAN) scheme, read off FaceMesh through :data:`MOUTH68_FACEMESH` (outer lip
  48-59 from the left corner over the upper lip, inner lip 60-67 likewise). The table is the
  mouth part of the MediaPipe → 68-point correspondence in public use (e.g.
  ``mediapipe_lm478_to_face_alignment_lm68`` in GeneFace++/Real3D-Portrait's landmark code), each
  entry checked against FaceMesh's canonical face model: 61/291 the outer mouth corners, 0/17 the
  outer lip centres, 78/308 the inner corners, 13/14 the inner lip centres, 40 37 | 267 270 and
  321 314 | 84 91 the upper and lower outer lip either side, 81 | 311 and 402 | 178 the inner.
  Normalisation as Chen et al.: landmarks of faces **aligned and resized to a fixed size**
  (ATVGnet: 128x128), in pixels of that size; here the shards' aligned 128x128 crops, so the value
  is in pixels of the 128x128 crop. Raw source-pixel LMD (as some papers print) scales with the
  face size in the video and is not given.
- **LMD-40**: the 40 points of FaceMesh's ``FACEMESH_LIPS`` contour set (:data:`LIP_LANDMARKS`:
  outer and inner lip contours), same pixels: the project's earlier column.

A frame on which FaceMesh finds no face in either image is **excluded** and counted
(:class:`LandmarkDistance`); a clip with no usable frame has no LMD (None). Published LMD values
use other landmark detectors (dlib's or FAN's 68 points), so they are comparable with each other,
not with these to the digit.

**Lower-half PSNR and L1** (:func:`lower_psnr_frames`, :func:`lower_l1_frames`): the same
measures on the rows the generator's pose prior hides (:func:`mask_top_row` down), where the mouth
is and the only place where the driving audio can matter. Upper rows are given to the model, so a
whole-frame PSNR mostly measures how well it copies them.

**Mouth aperture** (:meth:`MouthLandmarker.measure`, :func:`aperture_correlation`): per frame,
the distance between FaceMesh's inner-lip points 13 and 14 divided by the distance between the
outer eye corners 33 and 263 (:data:`~cals.constants.APERTURE_LANDMARKS`,
:data:`~cals.constants.EYE_CORNER_LANDMARKS`): a unitless mouth opening that ignores face size
and needs no SyncNet weights. Its Pearson correlation between generated and real frames of a clip
(frames with a face in both) says whether the generated mouth opens and closes when the real one
does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from cals.constants import (
    APERTURE_LANDMARKS,
    EYE_CORNER_LANDMARKS,
    PIXEL_MAX,
    PSNR_CAP_DB,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
)

#: The 40 FaceMesh landmark indices of ``mediapipe.solutions.face_mesh.FACEMESH_LIPS`` (the
#: vertices of its edges), sorted: the outer and inner contours of both lips.
LIP_LANDMARKS: tuple[int, ...] = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
    185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415,
)  # fmt: skip


#: FaceMesh landmark index of each of the 68-point scheme's 20 mouth points 48..67, in that order
#: (module docstring, LMD): outer lip 48-59 (48 the image-left corner, 51 the upper centre, 54
#: the image-right corner, 57 the lower centre), inner lip 60-67 (60 and 64 the corners, 62 the
#: upper and 66 the lower centre).
MOUTH68_FACEMESH: tuple[int, ...] = (
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # 48-59, outer
    78, 81, 13, 311, 308, 402, 14, 178,  # 60-67, inner
)  # fmt: skip
#: The 68-point scheme's numbers of :data:`MOUTH68_FACEMESH`'s points.
MOUTH68_POINTS: tuple[int, ...] = tuple(range(48, 68))


def _as_clips(generated: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as ``(T, H, W, C)`` uint8 arrays of the same shape (a single ``(H, W, C)``
    frame becomes a clip of one)."""
    generated, real = np.asarray(generated), np.asarray(real)
    if generated.shape != real.shape:
        raise ValueError(f"generated {generated.shape} and real {real.shape} frames differ in shape")
    if generated.dtype != np.uint8 or real.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {generated.dtype} and {real.dtype}")
    if generated.ndim == 3:
        generated, real = generated[None], real[None]
    if generated.ndim != 4:
        raise ValueError(f"expected (T, H, W, C) or (H, W, C) frames, got {generated.shape}")
    return generated, real


# --- PSNR ---


def psnr_frames(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """PSNR of each frame, dB: ``(T,)`` float64, ``+inf`` where the frames are identical.

    Args:
        generated, real: ``(T, H, W, C)`` (or one ``(H, W, C)``) uint8 frames.
    """
    generated, real = _as_clips(generated, real)
    diff = generated.astype(np.float64) - real.astype(np.float64)
    mse = (diff**2).reshape(diff.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(float(PIXEL_MAX) ** 2 / mse)


def psnr(generated: np.ndarray, real: np.ndarray, cap: float = PSNR_CAP_DB) -> float:
    """Mean over frames of the per-frame PSNR, each capped at ``cap`` dB (identical frames count
    as ``cap``; see the module docstring)."""
    return float(np.minimum(psnr_frames(generated, real), cap).mean())


# --- lower half: the rows the pose prior hides ---


def mask_top_row(height: int) -> int:
    """First row of a ``height``-row crop that the pose prior hides (rows ``mask_top_row .. height``
    are the generated mouth region): :func:`cals.models.l2f.mask_row`, the line of
    :func:`cals.models.l2f.pose_prior` (:data:`~cals.constants.MASK_TOP_ROW` of 128 rows). The one
    place the lower-half measures take it from."""
    from cals.models.l2f import mask_row

    return mask_row(height)


def lower_psnr_frames(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """PSNR of each frame's masked rows (:func:`mask_top_row` down), dB: ``(T,)`` float64,
    ``+inf`` where those rows are identical.

    Args:
        generated, real: ``(T, H, W, C)`` (or one ``(H, W, C)``) uint8 frames.
    """
    generated, real = _as_clips(generated, real)
    top = mask_top_row(generated.shape[1])
    return psnr_frames(generated[:, top:], real[:, top:])


def lower_l1_frames(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each frame's masked rows, in [0, 1] (255 = 1): ``(T,)`` float64.

    Args:
        generated, real: ``(T, H, W, C)`` (or one ``(H, W, C)``) uint8 frames.
    """
    generated, real = _as_clips(generated, real)
    top = mask_top_row(generated.shape[1])
    diff = np.abs(generated[:, top:].astype(np.float64) - real[:, top:].astype(np.float64)) / PIXEL_MAX
    return diff.reshape(diff.shape[0], -1).mean(axis=1)


# --- SSIM ---


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """``(size,)`` float64 1-D Gaussian, normalised to sum 1 (the 2-D window is its outer
    product)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable correlation of ``(H, W)`` float64 with ``window`` on both axes, keeping only the
    positions where the window lies inside the image: ``(H - k + 1, W - k + 1)``."""
    rows = np.lib.stride_tricks.sliding_window_view(image, window.size, axis=0) @ window
    return np.lib.stride_tricks.sliding_window_view(rows, window.size, axis=1) @ window


def ssim_frames(
    generated: np.ndarray,
    real: np.ndarray,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> np.ndarray:
    """SSIM of each frame: ``(T,)`` float64, the valid-region mean of the SSIM map of each
    channel, averaged over the channels (see the module docstring).

    Args:
        generated, real: ``(T, H, W, C)`` (or one ``(H, W, C)``) uint8 frames, H and W at least
            ``window``.
    """
    generated, real = _as_clips(generated, real)
    if min(generated.shape[1:3]) < window:
        raise ValueError(f"frames of {generated.shape[1]}x{generated.shape[2]} are smaller than the {window}x{window} SSIM window")
    kernel = gaussian_window(window, sigma)
    c1, c2 = (k1 * PIXEL_MAX) ** 2, (k2 * PIXEL_MAX) ** 2
    out = np.empty(generated.shape[0])
    for index in range(generated.shape[0]):
        channels = []
        for channel in range(generated.shape[3]):
            x = generated[index, :, :, channel].astype(np.float64)
            y = real[index, :, :, channel].astype(np.float64)
            mean_x, mean_y = _filter_valid(x, kernel), _filter_valid(y, kernel)
            var_x = _filter_valid(x * x, kernel) - mean_x**2
            var_y = _filter_valid(y * y, kernel) - mean_y**2
            cov = _filter_valid(x * y, kernel) - mean_x * mean_y
            numerator = (2 * mean_x * mean_y + c1) * (2 * cov + c2)
            denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
            channels.append(float((numerator / denominator).mean()))
        out[index] = np.mean(channels)
    return out


def ssim(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean over frames of :func:`ssim_frames`."""
    return float(ssim_frames(generated, real).mean())


# --- LMD ---


@dataclass(frozen=True)
class MouthShape:
    """FaceMesh's mouth measurements of a clip (NaN on frames without a face).

    Attributes:
        lips: ``(T, 40, 2)`` float64 ``(x, y)`` pixel positions of :data:`LIP_LANDMARKS`.
        mouth68: ``(T, 20, 2)`` float64 pixel positions of the 68-point scheme's mouth points
            48-67 (:data:`MOUTH68_FACEMESH`).
        aperture: ``(T,)`` float64 inner-lip distance (13-14) / inter-ocular distance (33-263),
            unitless.
    """

    lips: np.ndarray
    aperture: np.ndarray
    mouth68: Optional[np.ndarray] = None


class MouthLandmarker:
    """MediaPipe FaceMesh lip landmarks of face crops (a callable class: the graph is built once
    in ``__init__``; not thread-safe, one per worker).

    ``landmarker(frames)`` with ``(T, H, W, 3)`` uint8 RGB → ``(T, 40, 2)`` float64 ``(x, y)``
    pixel positions of :data:`LIP_LANDMARKS` in each frame, rows of NaN where FaceMesh found no
    face; :meth:`measure` adds the mouth aperture from the same FaceMesh pass. Use as a context
    manager or call :meth:`close`.
    """

    def __init__(self) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        from cals.native_logs import WARM_UP_SIDE, native_stderr_quiet

        with native_stderr_quiet():  # the graph's native start-up lines, printed on build and first run
            self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)
            self._mesh.process(np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8))  # static_image_mode: no state kept

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.measure(frames).lips

    def measure(self, frames: np.ndarray) -> MouthShape:
        """Lip landmarks and mouth aperture of ``(T, H, W, 3)`` uint8 RGB frames (one FaceMesh
        pass per frame)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
        height, width = frames.shape[1:3]
        lips = np.full((frames.shape[0], len(LIP_LANDMARKS), 2), np.nan)
        mouth68 = np.full((frames.shape[0], len(MOUTH68_FACEMESH), 2), np.nan)
        aperture = np.full(frames.shape[0], np.nan)
        for index, frame in enumerate(frames):
            found = self._mesh.process(np.ascontiguousarray(frame)).multi_face_landmarks
            if not found:
                continue
            points = found[0].landmark

            def xy(i: int) -> np.ndarray:
                return np.array((points[i].x * width, points[i].y * height))

            lips[index] = [xy(i) for i in LIP_LANDMARKS]
            mouth68[index] = [xy(i) for i in MOUTH68_FACEMESH]
            eyes = np.linalg.norm(xy(EYE_CORNER_LANDMARKS[0]) - xy(EYE_CORNER_LANDMARKS[1]))
            if eyes > 0:
                aperture[index] = np.linalg.norm(xy(APERTURE_LANDMARKS[0]) - xy(APERTURE_LANDMARKS[1])) / eyes
        return MouthShape(lips=lips, aperture=aperture, mouth68=mouth68)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "MouthLandmarker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class LandmarkDistance:
    """LMD of one clip.

    Attributes:
        value: mean over the usable frames of the per-frame LMD, pixels; None when no frame was
            usable.
        per_frame: ``(T,)`` mean landmark distance per frame, NaN on excluded frames.
        frames: frames compared (T).
        used: frames with a face in both images (the ones averaged).
        no_face_generated, no_face_real: frames where FaceMesh found no face in the generated /
            the real image (a frame may count in both).
    """

    value: Optional[float]
    per_frame: np.ndarray
    frames: int
    used: int
    no_face_generated: int
    no_face_real: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "lmd": self.value,
            "frames": self.frames,
            "lmd_frames": self.used,
            "no_face_generated": self.no_face_generated,
            "no_face_real": self.no_face_real,
        }


def landmark_distance(generated: np.ndarray, real: np.ndarray) -> LandmarkDistance:
    """LMD from landmark arrays.

    Args:
        generated, real: ``(T, L, 2)`` landmark positions (pixels); a frame whose landmarks are
            NaN (no face found) is excluded and counted.
    """
    generated, real = np.asarray(generated, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if generated.shape != real.shape or generated.ndim != 3 or generated.shape[-1] != 2:
        raise ValueError(f"expected two (T, L, 2) landmark arrays of one shape, got {generated.shape} and {real.shape}")
    missing_generated = np.isnan(generated).any(axis=(1, 2))
    missing_real = np.isnan(real).any(axis=(1, 2))
    per_frame = np.linalg.norm(generated - real, axis=2).mean(axis=1)
    usable = ~(missing_generated | missing_real)
    per_frame[~usable] = np.nan
    used = int(usable.sum())
    return LandmarkDistance(
        value=float(per_frame[usable].mean()) if used else None,
        per_frame=per_frame,
        frames=int(generated.shape[0]),
        used=used,
        no_face_generated=int(missing_generated.sum()),
        no_face_real=int(missing_real.sum()),
    )


@dataclass(frozen=True)
class ApertureCorrelation:
    """Pearson correlation of generated and real mouth apertures over one clip's frames.

    Attributes:
        value: the correlation in [-1, 1]; None with fewer than 2 usable frames or a constant
            aperture on either side (correlation undefined).
        used: frames with an aperture in both (a face found in both images).
    """

    value: Optional[float]
    used: int


def aperture_correlation(generated: np.ndarray, real: np.ndarray) -> ApertureCorrelation:
    """Pearson correlation of two ``(T,)`` aperture series (:attr:`MouthShape.aperture`), over the
    frames where both are finite."""
    generated, real = np.asarray(generated, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if generated.shape != real.shape or generated.ndim != 1:
        raise ValueError(f"expected two (T,) aperture series of one length, got {generated.shape} and {real.shape}")
    usable = np.isfinite(generated) & np.isfinite(real)
    used = int(usable.sum())
    if used < 2:
        return ApertureCorrelation(value=None, used=used)
    x, y = generated[usable] - generated[usable].mean(), real[usable] - real[usable].mean()
    scale = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return ApertureCorrelation(value=float((x * y).sum() / scale) if scale > 0 else None, used=used)


__all__ = [
    "LIP_LANDMARKS",
    "MOUTH68_FACEMESH",
    "MOUTH68_POINTS",
    "ApertureCorrelation",
    "LandmarkDistance",
    "MouthLandmarker",
    "MouthShape",
    "aperture_correlation",
    "gaussian_window",
    "landmark_distance",
    "lower_l1_frames",
    "lower_psnr_frames",
    "mask_top_row",
    "psnr",
    "psnr_frames",
    "ssim",
    "ssim_frames",
]
