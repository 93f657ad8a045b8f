"""SyncNet v2: the pretrained audio-visual sync network behind LSE-D / LSE-C.

A re-implementation of the network in joonson/syncnet_python (class ``S`` of
``SyncNetModel.py``) whose parameter names and shapes are exactly those of the released
``syncnet_v2.model``, so that file loads with no key renaming (:func:`load_syncnet_v2`).

Streams (both end in a 1024-d embedding; 512-d before the fully connected head):

- audio, ``netcnnaud`` + ``netfcaud``: ``(B, 1, 13, 20)`` MFCC (13 coefficients x 20 rows of
  10 ms = 0.2 s, see :mod:`cals.mfcc`), 2D convolutions → ``(B, 512, 1, 1)`` → ``(B, 1024)``.
- lips, ``netcnnlip`` + ``netfclip``: ``(B, 3, 5, 224, 224)`` = 5 consecutive frames (channels
  first, then time), **BGR** order, raw 0-255 values with no mean/std normalisation, 3D
  convolutions → ``(B, 512, 1, 1, 1)`` → ``(B, 1024)``.

Each ``Sequential`` keeps syncnet_python's module indices (ReLU and pooling layers occupy an
index too), which is what makes the state-dict names match: e.g. ``netcnnaud.0.weight`` is the
first audio convolution and ``netcnnaud.1.running_mean`` its batch norm.

:func:`lip_input_from_crops` turns the shards' ``(T, 128, 128, 3)`` RGB crops into lip windows.
Window ``v`` covers frames ``v .. v+4`` and MFCC rows ``4v .. 4v+19`` (syncnet_python's
convention); the scorer that pairs them is :mod:`cals.sync_score`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from cals.constants import (
    LIP_WINDOW_FRAMES,
    MFCC_N_CEPS,
    SYNCNET_EMBED_DIM,
    SYNCNET_FRAME_SIZE,
    SYNCNET_MFCC_ROWS,
)
from cals.models.weights import read_state_dict

#: Where the released weights come from (syncnet_python's ``download_model.sh``).
SYNCNET_V2_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
#: ``git hash-object`` of the released ``syncnet_v2.model``: check a downloaded copy with it.
SYNCNET_V2_GIT_BLOB = "d714bbf3b30324ced69e3815fc41ae6dc519303c"
#: Width of the convolutional features that feed both fully connected heads.
TRUNK_FEATURES = 512

# One convolution stage: (out_channels, kernel, stride, padding, pool), pool = None or
# (kernel, stride, padding). Each stage becomes Conv, BatchNorm, ReLU[, MaxPool], in that order.
_Stage = tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...], Optional[tuple[tuple[int, ...], ...]]]

#: Audio trunk on (B, 1, 13, 20): 13x20 → pool (3, stride (1, 2)) 11x9 → pool (3, 2) 5x4 → 1x1.
AUDIO_STAGES: tuple[_Stage, ...] = (
    (64, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1), (0, 0))),
    (192, (3, 3), (1, 1), (1, 1), ((3, 3), (1, 2), (0, 0))),
    (384, (3, 3), (1, 1), (1, 1), None),
    (256, (3, 3), (1, 1), (1, 1), None),
    (256, (3, 3), (1, 1), (1, 1), ((3, 3), (2, 2), (0, 0))),
    (TRUNK_FEATURES, (5, 4), (1, 1), (0, 0), None),
)

#: Lip trunk on (B, 3, 5, 224, 224), sizes as (time, height, width): the first convolution
#: spans all 5 frames (→ 1x109x109), pool → 54, conv → 26, pool → 13, three convs, pool → 6,
#: a 6x6 convolution → 1x1x1.
LIP_STAGES: tuple[_Stage, ...] = (
    (96, (5, 7, 7), (1, 2, 2), (0, 0, 0), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
    (256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
    (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
    (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
    (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
    (TRUNK_FEATURES, (1, 6, 6), (1, 1, 1), (0, 0, 0), None),
)


def _trunk(in_channels: int, stages: Sequence[_Stage], dims: int) -> nn.Sequential:
    """Conv/BatchNorm/ReLU[/MaxPool] stages as one flat Sequential (2D or 3D by ``dims``)."""
    conv, norm, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)
    layers: list[nn.Module] = []
    channels = in_channels
    for out_channels, kernel, stride, padding, pooling in stages:
        layers += [conv(channels, out_channels, kernel, stride=stride, padding=padding), norm(out_channels), nn.ReLU()]
        if pooling is not None:
            pool_kernel, pool_stride, pool_padding = pooling
            layers.append(pool(pool_kernel, stride=pool_stride, padding=pool_padding))
        channels = out_channels
    return nn.Sequential(*layers)


def _head(embed_dim: int) -> nn.Sequential:
    """512 → 512 (BatchNorm, ReLU) → ``embed_dim``."""
    return nn.Sequential(
        nn.Linear(TRUNK_FEATURES, TRUNK_FEATURES),
        nn.BatchNorm1d(TRUNK_FEATURES),
        nn.ReLU(),
        nn.Linear(TRUNK_FEATURES, embed_dim),
    )


class SyncNetV2(nn.Module):
    """SyncNet v2 (syncnet_python's ``S``), module names as in the released state dict.

    Args:
        embed_dim: size of both embeddings (1024 in the released weights).

    Attributes are registered in syncnet_python's order (audio trunk, audio head, lip head, lip
    trunk), so ``state_dict()`` lists keys in the same order as the released file.
    """

    def __init__(self, embed_dim: int = SYNCNET_EMBED_DIM) -> None:
        super().__init__()
        self.netcnnaud = _trunk(1, AUDIO_STAGES, dims=2)
        self.netfcaud = _head(embed_dim)
        self.netfclip = _head(embed_dim)
        self.netcnnlip = _trunk(3, LIP_STAGES, dims=3)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 13, 20)`` float MFCC windows → ``(B, embed_dim)`` audio embeddings."""
        features = self.netcnnaud(mfcc)
        return self.netfcaud(features.flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 5, 224, 224)`` float BGR 0-255 windows → ``(B, embed_dim)`` lip embeddings."""
        features = self.netcnnlip(frames)
        return self.netfclip(features.flatten(1))

    def forward_lip_sequence(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 3, N, 224, 224)`` float BGR 0-255 frame sequences (N >= 5) → ``(B, N - 4,
        embed_dim)``: entry v is :meth:`forward_lip` of frames ``v .. v+4``, all in one pass.

        Exact (in eval mode) because only the first lip convolution spans time (kernel 5, stride
        1, no temporal padding): every later convolution and pooling has temporal kernel 1 and
        stride 1 (:data:`LIP_STAGES`), so the trunk maps N frames to N - 4 independent time steps
        of ``(512, 1, 1)``, and the fully connected head (BatchNorm1d with running statistics)
        applies to each step alone. After the first convolution the time steps move to the batch
        axis, so the rest runs exactly as on N - 4 separate windows (bit-identical on CPU).

        Cost: the same convolutions as the N - 4 windows (the first layer already reduces each
        window to one time step, so windows share no work to save); what one pass saves is
        building the windows, 5x the input (60 MB of float input per 20 windows vs 14 MB).
        """
        if frames.ndim != 5 or frames.shape[2] < LIP_WINDOW_FRAMES:
            raise ValueError(f"expected (B, 3, N >= {LIP_WINDOW_FRAMES}, 224, 224) frames, got {tuple(frames.shape)}")
        first, rest = self.netcnnlip[0], self.netcnnlip[1:]
        features = first(frames)  # (B, 96, N - 4, 109, 109)
        batch, channels, steps = features.shape[:3]
        per_step = features.transpose(1, 2).reshape(batch * steps, channels, 1, *features.shape[3:])
        return self.netfclip(rest(per_step).flatten(1)).reshape(batch, steps, -1)

    def forward(self, frames: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both streams: ``(lip embeddings, audio embeddings)``, each ``(B, embed_dim)``."""
        return self.forward_lip(frames), self.forward_aud(mfcc)


#: Input shapes of one window, without the batch axis.
LIP_INPUT_SHAPE = (3, LIP_WINDOW_FRAMES, SYNCNET_FRAME_SIZE, SYNCNET_FRAME_SIZE)
AUDIO_INPUT_SHAPE = (1, MFCC_N_CEPS, SYNCNET_MFCC_ROWS)


def missing_weights_message(path: str | Path) -> str:
    """The one-line explanation of where to get ``syncnet_v2.model``."""
    return (
        f"SyncNet weights not found: {path} does not exist. Get syncnet_v2.model from {SYNCNET_V2_URL} "
        f"(what syncnet_python's download_model.sh fetches; `git hash-object` of the right file is "
        f"{SYNCNET_V2_GIT_BLOB}) and pass its path."
    )


def load_syncnet_v2(path: str | Path, device: str | torch.device = "cpu") -> SyncNetV2:
    """Build :class:`SyncNetV2` and load a state dict saved with ``torch.save(state_dict)``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` and
    loaded under its own names (no renaming). Every key must match by name and shape, except that
    BatchNorm ``num_batches_tracked`` counters may be absent (files saved by PyTorch < 0.4.1 lack
    them; they are unused in eval mode).

    Returns:
        The model in eval mode on ``device``.
    Raises:
        FileNotFoundError: no such file (the message says where to get the weights).
        ValueError: the file is not a plain state dict, or its keys/shapes differ (the message
            lists missing, unexpected and mis-shaped keys).
    """
    path = Path(path)
    state = read_state_dict(path, missing_weights_message(path),
                            refused_note="; a corrupt file, or a pickled model object rather than its state_dict()")
    model = SyncNetV2()
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise ValueError listing every key of ``state`` that does not fit SyncNet v2 (missing,
    unexpected, wrong shape); ``num_batches_tracked`` buffers may be missing."""
    from cals.models.weights import check_state_dict as check

    check(model, state, source, "SyncNet v2", optional_suffix=".num_batches_tracked")


def syncnet_frames(frames: np.ndarray) -> torch.Tensor:
    """Face crops → the frames SyncNet's lip stream reads, before windowing.

    Each ``(H, W, 3)`` uint8 **RGB** crop (the shards' 128x128) is resized to 224x224 with
    OpenCV's bilinear ``INTER_LINEAR`` (``cv2.resize``'s default, which syncnet_python's
    ``run_pipeline.py`` uses for its own 224x224 face crops), then its channels are reversed to
    **BGR** (syncnet_python reads frames with ``cv2.imread``). Values stay 0-255: no
    normalisation.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
    Returns:
        ``(T, 3, 224, 224)`` uint8 BGR, channels first (224x224 = 150 KB per frame).
    """
    import cv2  # local: keeps `import cals` light

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    size = (SYNCNET_FRAME_SIZE, SYNCNET_FRAME_SIZE)
    out = np.empty((frames.shape[0], 3, *size), dtype=np.uint8)
    for index, frame in enumerate(frames):
        resized = frame if frame.shape[:2] == size else cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        out[index] = resized[..., ::-1].transpose(2, 0, 1)
    return torch.from_numpy(out)


def lip_windows(prepared: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """Stack 5-frame windows from :func:`syncnet_frames` output.

    Args:
        prepared: ``(T, 3, 224, 224)`` uint8 BGR.
        starts: window starts v; window v holds frames ``v .. v+4`` (each needs ``v + 5 <= T``).
    Returns:
        ``(len(starts), 3, 5, 224, 224)`` float32, 0-255 (3 MB per window: batch the starts).
    """
    total = prepared.shape[0]
    bad = [v for v in starts if v < 0 or v + LIP_WINDOW_FRAMES > total]
    if bad:
        raise ValueError(f"window starts {bad[:5]} need frames beyond the clip's {total}")
    windows = [prepared[v : v + LIP_WINDOW_FRAMES].permute(1, 0, 2, 3) for v in starts]
    if not windows:
        return torch.zeros((0, *LIP_INPUT_SHAPE), dtype=torch.float32)
    return torch.stack(windows).float()


def lip_input_from_crops(frames: np.ndarray, starts: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Shard crops → SyncNet lip windows (see :func:`syncnet_frames` for resize and colour order).

    Args:
        frames: ``(T, 128, 128, 3)`` uint8 RGB face crops at 25 fps.
        starts: window starts (default every start ``v = 0 .. T-5``: window v covers frames
            ``v .. v+4``, the same time span as MFCC rows ``4v .. 4v+19``).
    Returns:
        ``(N, 3, 5, 224, 224)`` float32 BGR 0-255, N = ``len(starts)`` (default ``T - 4``).
    """
    prepared = syncnet_frames(frames)
    if starts is None:
        starts = range(max(prepared.shape[0] - LIP_WINDOW_FRAMES + 1, 0))
    return lip_windows(prepared, starts)
