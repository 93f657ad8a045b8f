"""The lip teacher of CALS training (``CalsTask.lip_teacher="mouth"``; not the paper's, a
training aid): a small CNN that reads a target frame's *own* lower face (the rows the pose prior
hides) and squeezes it through a ``code_dim``-number bottleneck into a lip unit of A2L's size.

Why: in a bounded run the generator learns to copy the reference's mouth and ignore the units A2L
makes from the audio (measured: held-out lower-half L1 with the true audio = with shifted audio),
because at the start A2L's units say nothing about the mouth, so the cheapest way down the L1 is
the reference. Units that come from the mouth itself do say it, so a generator fed them on part
of the windows (teacher forcing) learns to paint the mouth the units describe; A2L is pulled
towards the teacher's units (an MSE on the detached teacher units), so at inference, where only
A2L runs, the generator gets units of the kind it learnt to follow. The bottleneck (``code_dim``
numbers, layer-normalised) keeps the teacher from passing the whole lower face (skin tone, lighting),
which A2L could never predict from audio.

Shapes: ``forward(frames (N, 3, H, W) float RGB in [0, 1]) -> (N, unit_dim)``; only rows
``mask_row(H) .. H-1`` are read. Used only in training; never part of a saved CALS model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cals.errors import require_positive
from cals.models.l2f import conv_norm_relu, mask_row
from cals.settings import json_ready

#: Rows x columns of the feature map the CNN's output is pooled to before the bottleneck.
POOLED = (4, 8)


@dataclass(frozen=True)
class MouthEncoderConfig:
    """Sizes of the lip teacher (saved in the CALS run's config.json).

    Attributes:
        unit_dim: size of the units it makes (A2L's ``unit_dim``).
        code_dim: numbers in the bottleneck (layer-normalised) between the CNN and the unit.
        widths: channels of the stride-2 conv stages (the lower face, 64x128 for 128 crops,
            halves at each).
    """

    unit_dim: int = 512
    code_dim: int = 16
    widths: tuple[int, ...] = (16, 32, 64, 64)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        require_positive(self, "unit_dim", "code_dim", "widths")

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self)


class MouthEncoder(nn.Module):
    """Lower face of a frame → lip unit (module docstring)."""

    def __init__(self, config: MouthEncoderConfig) -> None:
        super().__init__()
        self.config = config
        stages, channels = [], 3
        for width in config.widths:
            stages.append(conv_norm_relu(channels, width, stride=2))
            channels = width
        # pooled to a fixed 4x8 map and flattened: where the lips are (open, closed) is spatial
        self.body = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(POOLED), nn.Flatten())
        # LayerNorm, not tanh: a tanh bottleneck saturated in a 300-step run (|code| = 1.0000, std
        # over frames 5e-8: a constant teacher); a normalised code cannot be constant unless its input is
        self.code = nn.Sequential(nn.Linear(channels * POOLED[0] * POOLED[1], config.code_dim), nn.LayerNorm(config.code_dim, elementwise_affine=False))
        self.unit = nn.Linear(config.code_dim, config.unit_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(frames.shape)}")
        lower = frames[:, :, mask_row(frames.shape[-2]) :] * 2 - 1
        return self.unit(self.code(self.body(lower)))


__all__ = ["MouthEncoder", "MouthEncoderConfig"]
