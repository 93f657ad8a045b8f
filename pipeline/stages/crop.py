"""Square face crop from a detection box, resized to 128x128.

The crop square is centred on the detection box's centre moved down by ``shift_down`` x box height
(negative: up), with side ``margin`` x max(box width, box height). The defaults (margin 1.8, centre
0.2 box heights *above* the box centre) put the mouth in the crop's lower half, below the pose
prior's mask line (:data:`cals.constants.MASK_TOP_ROW`, row 64 of 128), with the chin inside:
measured with FaceMesh on 60 sampled crops of every fixture clip, the 1st percentile of the
upper lip's top row is 69.3..84.9 (the old 1.6 / +0.1 gave 46.1..71.1, most clips above row 64);
the detection box's bottom edge lands at row ~114. The margin 1.8 also keeps the square larger
than small frames (224x224 ``syncnet_example``), where clamping it inside the frame would move
the face off the measured rows. A square that
fits in the frame is shifted inside it (clamp: real pixels, face slightly off-centre); one larger
than the frame is padded with black. Resizing to ``size``² uses OpenCV's INTER_AREA when the
square is larger than ``size`` pixels (shrinking, no aliasing) and INTER_CUBIC otherwise
(enlarging a small face, or a square of exactly ``size``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cals.constants import CROP_SIZE

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CropParams:
    """Crop geometry (see the module docstring).

    Attributes:
        margin: crop side / the detection box's larger side.
        shift_down: crop centre below the box centre, box heights (negative: above).
        size: side of the resized crop, pixels.
    """

    margin: float = 1.8
    shift_down: float = -0.2
    size: int = CROP_SIZE


def crop_square(box: Box, width: int, height: int, params: CropParams = CropParams()) -> Box:
    """Integer-aligned square crop box (xyxy, source pixels) for a detection box in a
    ``width x height`` frame, clamped inside the frame when it fits."""
    x0, y0, x1, y1 = box
    side = max(1.0, round(params.margin * max(x1 - x0, y1 - y0)))
    cx = (x0 + x1) / 2
    cy = (y0 + y1) / 2 + params.shift_down * (y1 - y0)
    left, top = round(cx - side / 2), round(cy - side / 2)
    if side <= width:
        left = min(max(left, 0), width - side)
    if side <= height:
        top = min(max(top, 0), height - side)
    return (float(left), float(top), float(left + side), float(top + side))


def crop_frame(frame: np.ndarray, square: Box, size: int = CROP_SIZE) -> np.ndarray:
    """Cut ``square`` (integer xyxy, may exceed the frame: black padding) out of an ``(H, W, 3)``
    uint8 frame and resize to ``(size, size, 3)`` uint8 (INTER_AREA down, INTER_CUBIC up)."""
    import cv2

    height, width = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in square)
    patch = frame[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    pad = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interpolation = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interpolation)
