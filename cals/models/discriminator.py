"""Frame discriminator D of CALS training (Park et al. MM'23, Eq. 6-7).

The paper cites only the original GAN for D and gives no architecture. This is a PatchGAN
(Isola et al. 2017, pix2pix's 70x70 discriminator): a stack of 4x4 convolutions, each but the
last two of stride 2, that scores overlapping patches of a whole frame as real or generated.
A patch critic judges local texture (teeth, lip edges, blending seams at the mouth), which is
where a mouth-inpainting generator fails, and it works on any crop size.

``forward(frames (N, 3, H, W) float RGB in [0, 1]) -> (N, 1, h, w)`` patch *logits* (apply a
sigmoid for D(I)); for 128x128 crops and four widths: 14x14 patches, each seeing 70x70 pixels.
Layers: conv /2 → LeakyReLU(0.2); then per further width conv (/2, the last /1) → GroupNorm →
LeakyReLU(0.2); then a 4x4 conv to one channel. GroupNorm (per frame), not BatchNorm, so real and
generated batches are normalised alike and D's train and eval modes agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cals.models.l2f import group_norm
from cals.errors import require_positive
from cals.settings import from_checked_dict, json_ready

#: Slope of the LeakyReLUs (pix2pix's).
LEAKY_SLOPE = 0.2
KERNEL = 4


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Attributes:
        widths: channels of the convolutions (pix2pix: 64, 128, 256, 512).
    """

    widths: tuple[int, ...] = (64, 128, 256, 512)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least 2 layers, got {self.widths}")
        require_positive(self, "widths")

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiscriminatorConfig":
        return from_checked_dict(cls, data, "discriminator")


class PatchDiscriminator(nn.Module):
    """PatchGAN frame critic (module docstring)."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        layers: list[nn.Module] = [nn.Conv2d(3, w[0], KERNEL, 2, 1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        for k in range(1, len(w)):
            stride = 1 if k == len(w) - 1 else 2
            layers += [nn.Conv2d(w[k - 1], w[k], KERNEL, stride, 1), group_norm(w[k]), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        layers.append(nn.Conv2d(w[-1], 1, KERNEL, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(frames.shape)}")
        return self.net(frames * 2 - 1)


__all__ = ["DiscriminatorConfig", "PatchDiscriminator"]
