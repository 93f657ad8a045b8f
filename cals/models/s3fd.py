"""S3FD face detector with syncnet_python's weights file ``sfd_face.pth``.

The network has syncnet_python's ``detectors/s3fd/nets.py`` layout, so the released state dict
loads under its own names (``vgg.{0..34}``, ``L2Norm3_3/4_3/5_3.weight``, ``extras.{0..3}``,
``loc.{0..5}``, ``conf.{0..5}``): a VGG16 trunk with dilated fc6/fc7 convolutions, two extra
stride-2 stages, and a 4-value box head and a 2-class head on six feature maps (strides 4 ... 128).
The first map's class head has 4 channels: 3 background logits max-pooled into one ("max-out"
background), then the face logit.

:func:`detect` is syncnet_python's ``S3FD.detect_faces`` (its ``__init__.py`` with
``box_utils.Detect``/``PriorBox``/``nms``/``nms_``), written anew:

1. the ``(H, W, 3)`` uint8 **RGB** frame is resized by each scale (``cv2.resize`` bilinear), made
   float, and the per-channel mean (R 123, G 117, B 104) subtracted; the network reads RGB
   channels first (what syncnet_python's two channel reversals around its BGR mean amount to);
2. one square prior box per feature-map cell: centre ``((j + 0.5) step / W_s, (i + 0.5) step / H_s)``,
   side ``min_size / W_s`` by ``min_size / H_s`` (:data:`PRIOR_STEPS`, :data:`PRIOR_MIN_SIZES`;
   ``W_s, H_s`` the scaled frame's size), in 0-1 image units;
3. boxes decoded SSD-style with variances (0.1, 0.2), face probability = softmax over the 2 classes;
4. per scale: boxes with probability above ``conf_th`` (syncnet_python keeps > 0.05, runs NMS at
   IoU 0.3 over the best 5000 and keeps the best 750, then reads detections while they exceed
   ``conf_th``: greedy NMS visits boxes best first, so boxes below ``conf_th`` never suppress one
   above it and filtering first gives the same boxes), NMS at IoU :data:`NMS_PER_SCALE`, at most
   :data:`KEEP_TOP_K`; boxes scaled by the **unscaled** frame's width and height;
5. all scales' boxes together, greedy NMS at IoU :data:`NMS_FINAL` (syncnet_python's ``nms_``).

Weights are read with ``torch.load(weights_only=True)`` and must match the layout key by key and
shape by shape (face-alignment's ``s3fd-619a316812.pth`` uses other names and is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cals.models.weights import read_state_dict, state_dict_mismatch

#: The weights file and where to get it (syncnet_python's ``download_model.sh``).
S3FD_WEIGHTS_FILE = "sfd_face.pth"
S3FD_WEIGHTS_URL = "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/sfd_face.pth"

#: Per-channel mean subtracted from the 0-255 RGB input.
RGB_MEAN = (123.0, 117.0, 104.0)
#: Feature-map strides (pixels of the scaled frame) and prior box sides (pixels), one per head.
PRIOR_STEPS = (4, 8, 16, 32, 64, 128)
PRIOR_MIN_SIZES = (16, 32, 64, 128, 256, 512)
#: SSD box-decoding variances (centre, size).
VARIANCES = (0.1, 0.2)
#: IoU of the per-scale NMS, most boxes it keeps, IoU of the final NMS over all scales.
NMS_PER_SCALE = 0.3
NMS_CANDIDATES = 5000
KEEP_TOP_K = 750
NMS_FINAL = 0.1
#: syncnet_python's ``detect_faces`` default threshold (``run_pipeline.py`` passes 0.9).
DEFAULT_CONF_TH = 0.8

#: The VGG trunk: channel counts, "M" a 2x2 max-pool ("C" the same with ceil_mode, after conv3_3).
_VGG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512, "M")
#: vgg ModuleList indices after which a source map is taken (conv3_3, conv4_3, conv5_3 ReLUs).
_SOURCE_ENDS = (16, 23, 30)
#: Input channels of the six heads (conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2).
_HEAD_CHANNELS = (256, 512, 512, 1024, 512, 256)
#: L2Norm initial scales of the first three sources (overwritten by the weights).
_L2NORM_SCALES = (10.0, 8.0, 5.0)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnt per-channel scale ``weight`` ``(C,)``."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = 1e-10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * (x / norm)


def _vgg() -> nn.ModuleList:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG:
        if item in ("M", "C"):
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=item == "C"))
        else:
            layers += [nn.Conv2d(channels, item, 3, 1, padding=1), nn.ReLU(inplace=True)]
            channels = item
    layers += [nn.Conv2d(512, 1024, 3, 1, padding=6, dilation=6), nn.ReLU(inplace=True),
               nn.Conv2d(1024, 1024, 1, 1), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class S3FDNet(nn.Module):
    """The S3FD network (module docstring). ``forward`` takes ``(N, 3, H, W)`` float RGB minus
    :data:`RGB_MEAN` and returns ``(loc (N, P, 4), face probability (N, P), feature-map sizes)``,
    ``P`` the prior count over the six maps (row-major per map, maps in stride order)."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = _vgg()
        self.L2Norm3_3 = L2Norm(256, _L2NORM_SCALES[0])
        self.L2Norm4_3 = L2Norm(512, _L2NORM_SCALES[1])
        self.L2Norm5_3 = L2Norm(512, _L2NORM_SCALES[2])
        self.extras = nn.ModuleList([nn.Conv2d(1024, 256, 1, 1), nn.Conv2d(256, 512, 3, 2, padding=1),
                                     nn.Conv2d(512, 128, 1, 1), nn.Conv2d(128, 256, 3, 2, padding=1)])
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, 1, padding=1) for c in _HEAD_CHANNELS])
        self.conf = nn.ModuleList([nn.Conv2d(c, 4 if k == 0 else 2, 3, 1, padding=1) for k, c in enumerate(_HEAD_CHANNELS)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        sources = []
        start = 0
        for end, norm in zip(_SOURCE_ENDS, (self.L2Norm3_3, self.L2Norm4_3, self.L2Norm5_3)):
            for layer in self.vgg[start:end]:
                x = layer(x)
            sources.append(norm(x))
            start = end
        for layer in self.vgg[start:]:
            x = layer(x)
        sources.append(x)
        for index, layer in enumerate(self.extras):
            x = F.relu(layer(x))
            if index % 2 == 1:
                sources.append(x)
        locs, logits, sizes = [], [], []
        for index, source in enumerate(sources):
            loc, conf = self.loc[index](source), self.conf[index](source)
            if index == 0:  # max-out background: 3 background logits → 1
                conf = torch.cat((conf[:, :3].max(dim=1, keepdim=True).values, conf[:, 3:]), dim=1)
            sizes.append((int(source.shape[2]), int(source.shape[3])))
            locs.append(loc.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
            logits.append(conf.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 2))
        return torch.cat(locs, 1), torch.cat(logits, 1).softmax(dim=-1)[..., 1], sizes


def prior_boxes(image_hw: tuple[int, int], feature_sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(P, 4)`` float64 prior boxes ``(cx, cy, w, h)`` in 0-1 units of an ``image_hw`` input,
    one per cell of each ``(rows, cols)`` feature map (row-major, maps in order)."""
    height, width = image_hw
    priors = []
    for (rows, cols), step, size in zip(feature_sizes, PRIOR_STEPS, PRIOR_MIN_SIZES):
        i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cx = (j.ravel() + 0.5) / (width / step)
        cy = (i.ravel() + 0.5) / (height / step)
        priors.append(np.stack([cx, cy, np.full_like(cx, size / width), np.full_like(cy, size / height)], axis=1))
    return np.concatenate(priors)


def decode(loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """SSD decoding: ``(P, 4)`` offsets and ``(P, 4)`` priors ``(cx, cy, w, h)`` → ``(P, 4)``
    ``(x0, y0, x1, y1)`` in the priors' units (variances :data:`VARIANCES`)."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCES[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept ``(K, 4)`` xyxy ``boxes``, best
    ``scores`` first; a box is dropped when its IoU (areas without +1) with a kept one exceeds
    ``threshold``. ``limit``: at most this many kept."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
        height = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
        inter = width * height
        order = rest[inter / (areas[best] + areas[rest] - inter) <= threshold]
    return np.asarray(keep, dtype=np.intp)


class S3FD:
    """A loaded :class:`S3FDNet` and syncnet_python's detection post-processing."""

    def __init__(self, net: S3FDNet, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    @torch.no_grad()
    def detect(self, frame: np.ndarray, conf_th: float = DEFAULT_CONF_TH, scales: Sequence[float] = (1.0,)) -> np.ndarray:
        """Faces in one ``(H, W, 3)`` uint8 RGB frame (module docstring, steps 1-5).

        Returns:
            ``(K, 5)`` float64 rows ``x0, y0, x1, y1, score``: pixels of ``frame`` (not of the
            scaled copy), score the face probability (> ``conf_th``), best first.
        """
        import cv2

        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
        height, width = frame.shape[:2]
        found = []
        for scale in scales:
            scaled = cv2.resize(frame, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            image = scaled.astype(np.float32) - np.asarray(RGB_MEAN, dtype=np.float32)
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device)
            loc, prob, sizes = self.net(x)
            loc, prob = loc[0].double().cpu().numpy(), prob[0].double().cpu().numpy()
            mask = prob > conf_th
            if not mask.any():
                continue
            priors = prior_boxes(scaled.shape[:2], sizes)[mask]
            boxes, scores = decode(loc[mask], priors), prob[mask]
            top = np.argsort(-scores, kind="stable")[:NMS_CANDIDATES]
            kept = top[nms(boxes[top], scores[top], NMS_PER_SCALE, KEEP_TOP_K)]
            found.append(np.concatenate([boxes[kept] * [width, height, width, height], scores[kept, None]], axis=1))
        if not found:
            return np.empty((0, 5))
        rows = np.concatenate(found)
        return rows[nms(rows[:, :4], rows[:, 4], NMS_FINAL)]


def layout_problems(net: nn.Module, state: Mapping[str, torch.Tensor], shown: int = 3) -> str:
    """What in ``state`` does not fit ``net`` by name and shape, summarised on one line (counts and
    the first ``shown`` names of each kind); empty when it fits."""
    missing, unexpected, misshaped = state_dict_mismatch(net, state)
    parts = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped)):
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts)


def missing_weights_message(path: str | Path) -> str:
    """The one-line explanation of where to get ``sfd_face.pth``."""
    return (f"S3FD weights not found: {path} does not exist. Get {S3FD_WEIGHTS_FILE} from {S3FD_WEIGHTS_URL} "
            "(what syncnet_python's download_model.sh fetches into detectors/s3fd/weights/) and pass its path.")


def load_s3fd(path: str | Path, device: str | torch.device = "cpu") -> S3FD:
    """Load syncnet_python's ``sfd_face.pth`` (a plain state dict) with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file (the message says where to get it).
        ValueError: not a state dict, or its keys/shapes differ from :class:`S3FDNet`'s (the
            message names the file, what does not fit and where to get the right one).
    """
    path = Path(path)
    state = read_state_dict(path, missing_weights_message(path), advice=f"; get {S3FD_WEIGHTS_FILE} from {S3FD_WEIGHTS_URL}")
    net = S3FDNet()
    problems = layout_problems(net, state)
    if problems:
        raise ValueError(f"{path} does not match syncnet_python's S3FD layout ({problems}); "
                         f"get {S3FD_WEIGHTS_FILE} from {S3FD_WEIGHTS_URL}")
    net.load_state_dict(state)
    return S3FD(net, device)
