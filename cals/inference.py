"""Generation helpers shared by ``cals-eval`` and ``cals-generate``: run a CALS model on a clip's
crops, loop a short face video to the audio's length, and paste generated faces back.

Pure NumPy/torch on arrays; the ffmpeg, detection and tracking side of ``cals-generate`` is in
:mod:`pipeline.lipsync_video` (imports point cli → pipeline → cals).

**Paste-back** (:func:`paste_face`, region ``mouth`` or ``face``): the generated 128x128 face is resized to its crop box
(square, source pixels, as :func:`pipeline.stages.crop.crop_square` made it; INTER_AREA when
shrinking, INTER_CUBIC when enlarging, as the crop stage) and blended into the frame with a
feathered mask: the weight of the generated face is ``min(ramp(x), ramp(y))`` with
``ramp(i) = min(1, (d_i + 0.5) / f)``, ``d_i`` the pixel's distance in pixels to the nearest box
edge and ``f = feather x box side`` (:data:`~cals.constants.PASTE_FEATHER` = 0.1: a 10 % band, 59 px
for a 590 px box). So the seam fades over ``f`` pixels inside the box, and no pixel outside the
box changes. A box that leaves the frame is clipped at the frame edge (its out-of-frame part,
which the crop stage padded with black, is dropped); the ramp is measured from the box's own
edges, so there is no seam along the frame edge.

Region ``mouth`` (``cals-generate``'s default, :func:`paste_mask`) pastes only what the model
painted: the masked lower face, rows from the mask line (:data:`~cals.constants.MASK_TOP_ROW`
of 128, ``m`` in box pixels) down. Its weight is ``min(ramp(x), ramp(y), up(y))`` with
``up(y) = clip((y - (m - f) + 0.5) / f, 0, 1)``: 0 above the band ``[m - f, m)``, rising across it
to 1 at the mask line, so the model's own rows just above the line (which it made from the pose
prior's real pixels, and which match the frame closely) carry the seam, and every masked row
below it is the model's. Every pixel above the band keeps the frame's value: eyes, skin, hair and
background stay the source's. Region ``face`` pastes the whole box (:func:`feather_mask`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from cals.constants import CROP_SIZE, MASK_TOP_ROW, PASTE_FEATHER

#: What :func:`paste_face` blends into the frame: the masked lower face, or the whole crop box.
PASTE_REGIONS = ("mouth", "face")

if TYPE_CHECKING:
    from cals.models.cals_model import CalsModel


def frame_schedule(num_source: int, num_out: int) -> np.ndarray:
    """Which source frame each output frame shows: ``(num_out,)`` int64.

    A source at least as long as the output is used from its start (its first ``num_out``
    frames); a shorter one is looped forwards and backwards (0, 1, …, F-1, F-2, …, 1, 0, 1, …),
    which never jumps; a single frame (a still image) is repeated.
    """
    if num_source < 1 or num_out < 0:
        raise ValueError(f"need at least one source frame and a non-negative length, got {num_source} and {num_out}")
    steps = np.arange(num_out, dtype=np.int64)
    if num_source >= num_out or num_source == 1:
        return np.minimum(steps, num_source - 1)
    period = 2 * (num_source - 1)
    phase = steps % period
    return np.where(phase < num_source, phase, period - phase)


def feather_mask(side: int, feather: float = PASTE_FEATHER) -> np.ndarray:
    """``(side, side)`` float32 blend weight of a pasted face (see the module docstring):
    1 inside, falling to ``0.5 / f`` on the box's outermost pixels, ``f = feather x side``;
    ``feather = 0`` gives a hard paste (all ones)."""
    if side < 1:
        raise ValueError(f"box side must be >= 1 pixel, got {side}")
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    width = feather * side
    if width <= 0:
        return np.ones((side, side), np.float32)
    index = np.arange(side, dtype=np.float64)
    ramp = np.minimum(1.0, (np.minimum(index, side - 1 - index) + 0.5) / width)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def paste_mask(side: int, feather: float = PASTE_FEATHER, region: str = "face") -> np.ndarray:
    """``(side, side)`` float32 blend weight of a pasted crop (see the module docstring):
    :func:`feather_mask` for region ``face``; for ``mouth`` also 0 above the band ``[m - f, m)``
    (``m``: the mask line in box pixels, ``f = feather x side``), rising across it to 1 at ``m``
    (``feather = 0``: a hard edge at ``m``)."""
    if region not in PASTE_REGIONS:
        raise ValueError(f"paste region must be one of {', '.join(PASTE_REGIONS)}, got {region!r}")
    weight = feather_mask(side, feather)
    if region == "face":
        return weight
    line, width = MASK_TOP_ROW * side / CROP_SIZE, feather * side
    rows = np.arange(side, dtype=np.float64)
    up = (rows >= line).astype(np.float64) if width <= 0 else np.clip((rows - (line - width) + 0.5) / width, 0.0, 1.0)
    return np.minimum(weight, up[:, None]).astype(np.float32)


def paste_face(
    frame: np.ndarray, face: np.ndarray, box: tuple[float, float, float, float], feather: float = PASTE_FEATHER, region: str = "face"
) -> np.ndarray:
    """Blend a generated face into a copy of its frame.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB source frame (not modified).
        face: ``(S, S, 3)`` uint8 RGB generated crop (the shards' 128x128).
        box: the square crop box the face was cut from, xyxy source pixels (integer-aligned;
            may leave the frame).
        feather: seam width as a share of the box side.
        region: ``face`` (the whole box) or ``mouth`` (the masked lower face; see
            :func:`paste_mask`).
    Returns:
        ``(H, W, 3)`` uint8: the frame with the face pasted; pixels outside the box (and, for
        ``mouth``, above the seam band) are the frame's own.
    """
    import cv2

    out = np.array(frame, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    side = x1 - x0
    if side < 1 or y1 - y0 != side:
        raise ValueError(f"crop box {box} is not a square of at least one pixel")
    left, top, right, bottom = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if right <= left or bottom <= top:
        return out  # the box lies outside the frame
    interpolation = cv2.INTER_AREA if side < face.shape[0] else cv2.INTER_CUBIC
    resized = cv2.resize(np.ascontiguousarray(face), (side, side), interpolation=interpolation)
    rows, cols = slice(top - y0, bottom - y0), slice(left - x0, right - x0)
    alpha = paste_mask(side, feather, region)[rows, cols, None]
    region = out[top:bottom, left:right].astype(np.float32)
    blended = region + alpha * (resized[rows, cols].astype(np.float32) - region)
    out[top:bottom, left:right] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 RGB → ``(T, 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` float in [0, 1] → ``(T, H, W, 3)`` uint8 RGB (rounded, clipped)."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def generate_faces(model: "CalsModel", crops: np.ndarray, mel: np.ndarray, reference: int = 0) -> np.ndarray:
    """Generate every frame of one clip with :meth:`CalsModel.generate`.

    Args:
        model: the CALS model (run on its own device).
        crops: ``(T, 128, 128, 3)`` uint8 RGB target crops (their rows above the mask line are
            the pose priors).
        mel: ``(4T, 80)`` log10 mel of the driving audio (float16 or float32).
        reference: index of the identity reference frame (the paper's inference: the first).
    Returns:
        ``(T, 128, 128, 3)`` uint8 RGB generated crops.
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
        raise ValueError(f"expected (T, {CROP_SIZE}, {CROP_SIZE}, 3) uint8 crops, got {crops.shape} {crops.dtype}")
    targets = to_tensor(crops)
    sound = torch.from_numpy(np.asarray(mel, dtype=np.float32))[None]
    return to_uint8(model.generate(sound, targets[reference], targets))


__all__ = ["PASTE_REGIONS", "feather_mask", "frame_schedule", "generate_faces", "paste_face", "paste_mask", "to_tensor", "to_uint8"]
