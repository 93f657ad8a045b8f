"""Audio-to-Lip (A2L): a transformer encoder that predicts a lip-motion unit per video frame from
the audio around it (CALS, Park et al. MM'23, Sec. 3.1).

Input: one *audio unit* per 25 fps frame, its 4 mel rows x 80 bins = 320 values, projected to
``d_model``, plus sinusoidal positions; output: a ``unit_dim`` vector per frame. Pre-training
masks contiguous spans of audio units (zeroes them) and regresses the lip units of the masked
frames (loss: :func:`cals.losses.masked_unit_loss`); at inference and inside CALS nothing is masked.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import nn

from cals.constants import MEL_ROWS_PER_FRAME, N_MELS
from cals.errors import require_fraction, require_positive


@dataclass(frozen=True)
class A2LConfig:
    """The paper's sizes by default: 6 layers, d_model 512, FFN 2048, 8 heads.

    Attributes:
        unit_dim: lip-unit size (from the shards: ``json.lip_units.dim``).
        mask_span: frames per masked span (t_m = 5).
        mask_ratio: share of frames masked (p = 0.5).
        max_frames: longest sequence the positional table covers, frames.
    """

    unit_dim: int = 1024
    layers: int = 6
    d_model: int = 512
    ffn: int = 2048
    heads: int = 8
    dropout: float = 0.1
    mask_span: int = 5
    mask_ratio: float = 0.5
    max_frames: int = 1000

    def __post_init__(self) -> None:
        require_positive(self, "unit_dim", "layers", "d_model", "ffn", "heads", "mask_span", "max_frames")
        if self.d_model % self.heads:
            raise ValueError(f"--heads {self.heads} must divide --d-model {self.d_model} (each head gets d_model / heads dims)")
        if self.d_model % 2:
            raise ValueError(f"--d-model must be even (sine/cosine position pairs), got {self.d_model}")
        require_fraction(self, "dropout")
        require_fraction(self, "mask_ratio", closed=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` sine/cosine position table (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale)
    return table


def audio_units(mel: torch.Tensor) -> torch.Tensor:
    """``(B, 4T, 80)`` mel → ``(B, T, 320)`` audio units (frame t = rows 4t..4t+3, flattened)."""
    batch, rows, bins = mel.shape
    return mel.reshape(batch, rows // MEL_ROWS_PER_FRAME, MEL_ROWS_PER_FRAME * bins)


def span_mask(length: int, span: int, ratio: float, rng: random.Random) -> torch.Tensor:
    """``(length,)`` bool: ``round(ratio * length / span)`` (at least 1) non-overlapping spans of
    ``span`` frames, placed uniformly at random. Spans may touch; they never overlap.

    Placement: with n spans the free frames are ``length - n * span``; n sorted draws ``u_i`` from
    ``0..free`` put span i at ``u_i + i * span``.
    """
    count = max(1, round(ratio * length / span))
    count = min(count, length // span) if length >= span else 0
    mask = torch.zeros(length, dtype=torch.bool)
    if count == 0:
        mask[: max(1, round(ratio * length))] = True  # shorter than one span: mask a prefix share
        return mask
    free = length - count * span
    offsets = sorted(rng.randint(0, free) for _ in range(count))
    for index, offset in enumerate(offsets):
        start = offset + index * span
        mask[start : start + span] = True
    return mask


class AudioToLip(nn.Module):
    """``forward(mel (B, 4T, 80), padding (B, T) bool True = real frame, masked (B, T) bool or
    None) -> (B, T, unit_dim)``: masked frames' audio units are zeroed before the encoder."""

    def __init__(self, config: A2LConfig) -> None:
        super().__init__()
        self.config = config
        self.project = nn.Linear(MEL_ROWS_PER_FRAME * N_MELS, config.d_model)
        self.norm_in = nn.LayerNorm(config.d_model)
        self.register_buffer("positions", sinusoidal_positions(config.max_frames, config.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(config.d_model, config.heads, config.ffn, config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.unit_dim)

    def forward(self, mel: torch.Tensor, padding: torch.Tensor, masked: Optional[torch.Tensor] = None) -> torch.Tensor:
        units = audio_units(mel)
        if masked is not None:
            units = units.masked_fill(masked[..., None], 0.0)
        length = units.shape[1]
        if length > self.config.max_frames:
            raise ValueError(f"{length} frames exceed max_frames {self.config.max_frames}")
        hidden = self.norm_in(self.project(units)) + self.positions[:length]
        hidden = self.encoder(hidden, src_key_padding_mask=~padding)
        return self.head(self.norm_out(hidden))

