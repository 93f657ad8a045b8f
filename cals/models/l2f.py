"""Lip-to-Face (L2F) generator f_φ of CALS (Park et al. MM'23, Sec. 3.1.2 and 4.1.4): a U-Net-like
network that paints a target identity's lower face to match a lip-motion unit per frame.

**Inputs** (per frame; every frame of a window is generated in parallel: time is folded into the
batch, ``(B, T, ...) → (B·T, ...)``, and unfolded at the end):

- ``units`` ``(B, T, D)``: the contextualised lip-motion units e_t from the Audio-to-Lip module
  (the context lives in the units: A2L attended over the whole window).
- ``reference`` ``(B, 3, H, W)`` (one per window, shared by its frames) or ``(B, T, 3, H, W)``:
  a frame of the same clip, float RGB in [0, 1], giving the identity and the mouth's appearance.
- ``pose_prior`` ``(B, T, 3, H, W)``: the target frame with rows from the mask line down set to
  zero (:func:`pose_prior`), giving head pose and the upper face but not the mouth.

**Architecture** (sizes for 128x128 crops and the default ``widths``)::

    identity encoder E_I on [reference, pose prior] (6 channels, mapped to [-1, 1]):
      stage 0: conv 3x3 → widths[0] @128          (skip 0)
      stage k: conv 3x3 /2 → widths[k] @128/2^k   (skip k), k = 1..5 → 512 @4x4
      each stage: conv → GroupNorm → ReLU, then a residual conv block
    lip conditioning: e_t → MLP (Linear, ReLU, Linear) → l_t ∈ R^lip_channels
      bottleneck: l_t broadcast over the 4x4 map and concatenated to it, fused by a conv
      every decoder scale: FiLM, x · (1 + γ_k(l_t)) + β_k(l_t)  (γ, β zero-initialised)
    decoder: for k = 5..1: upsample x2 (nearest) → conv → concat skip k-1 → conv block → FiLM
    head: conv 3x3 on [decoder output, the 6 input channels] → 3 channels → sigmoid: RGB in [0, 1]
      (the raw inputs are the finest skip: the upper half can be passed straight through)

The skip connections carry the identity encoder's multi-scale features into the decoder (the
paper's "multi-scale intermediate features concatenated with those from the identity encoder").
The paper does not give the conditioning; the choice here (broadcast-concatenate at the
bottleneck, as Wav2Lip does with its audio embedding, plus FiLM at every scale so the lips can
steer fine detail too) is documented and switchable (``film=False``: bottleneck only).

Normalisation is GroupNorm (per frame, no batch statistics), so a frame's output does not depend
on the other frames of its batch and train/eval modes behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cals.constants import CROP_SIZE, MASK_TOP_ROW, SYNCNET_EMBED_DIM
from cals.errors import require_positive
from cals.settings import from_checked_dict, json_ready

#: Channels of the identity encoder's input: reference RGB + pose-prior RGB.
IDENTITY_CHANNELS = 6
#: Channel groups of every GroupNorm (fewer when a width is not divisible).
NORM_GROUPS = 8


@dataclass(frozen=True)
class LipToFaceConfig:
    """Sizes of the Lip-to-Face generator (saved in the run's config.json).

    Attributes:
        unit_dim: lip-unit size D (A2L's ``unit_dim``).
        widths: channels of the encoder stages; stage 0 keeps the crop size, each later stage
            halves it, so ``crop_size / 2^(len(widths) - 1)`` is the bottleneck side (4 for
            128 and six stages). The decoder mirrors them.
        lip_channels: size of the projected lip code l_t.
        film: FiLM-condition every decoder scale on l_t (False: the bottleneck only).
        unit_norm: layer-normalise the units before the lip MLP and use LeakyReLU(0.2) in it
            (False: raw units and ReLU, the first version). Measured: with raw units the MLP's
            ReLUs were all off on every frame after 60 CPU steps (A2L units vary by 0.02-0.05 per
            dimension over a clip), so nothing of the audio reached the generator; False stays
            the default so saved runs load as they were trained.
        crop_size: side of the square frames (the shards' 128).
    """

    unit_dim: int = SYNCNET_EMBED_DIM
    widths: tuple[int, ...] = (32, 64, 128, 256, 512, 512)
    lip_channels: int = 256
    film: bool = True
    crop_size: int = CROP_SIZE
    unit_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least 2 stages, got {self.widths}")
        require_positive(self, "unit_dim", "widths", "lip_channels", "crop_size")
        if self.crop_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"crop_size {self.crop_size} is not divisible by 2^{len(self.widths) - 1} ({len(self.widths)} stages)")

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LipToFaceConfig":
        return from_checked_dict(cls, data, "lip-to-face")


def mask_row(height: int) -> int:
    """First masked row of an ``height``-row crop: :data:`~cals.constants.MASK_TOP_ROW` of the
    shards' 128 rows, scaled to ``height`` (rounded down)."""
    return MASK_TOP_ROW * height // CROP_SIZE


def pose_prior(frames: torch.Tensor) -> torch.Tensor:
    """The pose prior of target frames ``(..., C, H, W)``: a copy with rows ``mask_row(H) .. H-1``
    (from the mask line down: the mouth, see :data:`~cals.constants.MASK_TOP_ROW`) set to zero."""
    prior = frames.clone()
    prior[..., mask_row(frames.shape[-2]) :, :] = 0
    return prior


def group_norm(channels: int) -> nn.GroupNorm:
    groups = NORM_GROUPS
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def conv_norm_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), group_norm(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + conv-norm-relu-conv-norm(x), then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), group_norm(channels), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, 1, 1), group_norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class FiLM(nn.Module):
    """``x · (1 + γ(l)) + β(l)``; zero-initialised so it starts as the identity."""

    def __init__(self, lip_channels: int, channels: int) -> None:
        super().__init__()
        self.project = nn.Linear(lip_channels, 2 * channels)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor, lip: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.project(lip)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta


class LipToFace(nn.Module):
    """``forward(units (B, T, D), reference (B, 3, H, W) or (B, T, 3, H, W), pose_prior
    (B, T, 3, H, W)) -> (B, T, 3, H, W)`` float RGB in [0, 1] (module docstring)."""

    def __init__(self, config: LipToFaceConfig = LipToFaceConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.encoder = nn.ModuleList(
            [nn.Sequential(conv_norm_relu(IDENTITY_CHANNELS, w[0]), Residual(w[0]))]
            + [nn.Sequential(conv_norm_relu(w[k - 1], w[k], stride=2), Residual(w[k])) for k in range(1, len(w))]
        )
        activation = nn.LeakyReLU(0.2, inplace=True) if config.unit_norm else nn.ReLU(inplace=True)
        self.lip = nn.Sequential(nn.Linear(config.unit_dim, config.lip_channels), activation,
                                 nn.Linear(config.lip_channels, config.lip_channels))
        self.fuse = nn.Sequential(conv_norm_relu(w[-1] + config.lip_channels, w[-1]), Residual(w[-1]))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.film = nn.ModuleList()
        for k in range(len(w) - 1, 0, -1):  # from stage k up to stage k-1's resolution
            self.up.append(conv_norm_relu(w[k], w[k - 1]))
            self.merge.append(nn.Sequential(conv_norm_relu(2 * w[k - 1], w[k - 1]), Residual(w[k - 1])))
            self.film.append(FiLM(config.lip_channels, w[k - 1]) if config.film else nn.Identity())
        self.head = nn.Conv2d(w[0] + IDENTITY_CHANNELS, 3, 3, 1, 1)  # the inputs themselves are the finest skip

    def forward(self, units: torch.Tensor, reference: torch.Tensor, pose_prior: torch.Tensor) -> torch.Tensor:
        if units.ndim != 3 or units.shape[-1] != self.config.unit_dim:
            raise ValueError(f"expected units (B, T, {self.config.unit_dim}), got {tuple(units.shape)}")
        batch, time = units.shape[:2]
        size = self.config.crop_size
        if pose_prior.shape != (batch, time, 3, size, size):
            raise ValueError(f"expected pose_prior {(batch, time, 3, size, size)}, got {tuple(pose_prior.shape)}")
        if reference.ndim == 4:
            reference = reference[:, None].expand(batch, time, *reference.shape[1:])
        if reference.shape != pose_prior.shape:
            raise ValueError(f"expected reference (B, 3, H, W) or {tuple(pose_prior.shape)}, got {tuple(reference.shape)}")
        inputs = torch.cat([reference, pose_prior], dim=2).reshape(batch * time, IDENTITY_CHANNELS, size, size) * 2 - 1
        x, skips = inputs, []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        flat = units.reshape(batch * time, -1)
        lip = self.lip(F.layer_norm(flat, flat.shape[-1:]) if self.config.unit_norm else flat)
        x = self.fuse(torch.cat([x, lip[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1))
        for up, merge, film, skip in zip(self.up, self.merge, self.film, reversed(skips[:-1])):
            x = up(F.interpolate(x, scale_factor=2, mode="nearest"))
            x = merge(torch.cat([x, skip], dim=1))
            x = film(x, lip) if self.config.film else film(x)
        return torch.sigmoid(self.head(torch.cat([x, inputs], dim=1))).reshape(batch, time, 3, size, size)


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["LipToFace", "LipToFaceConfig", "mask_row", "pose_prior", "parameter_count"]
