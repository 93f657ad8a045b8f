"""The discriminative sync critic (F_v, F_a) of CALS: VGG-M-style video and audio encoders that
map a t_s = 5-frame mouth window and its 0.2 s of audio to L2-normalised embeddings, close for
in-sync pairs (Park et al. MM'23, Sec. 3.3; trained with the multi-way matching loss of Chung,
Kang & Chung 2020, see :mod:`cals.losses` and :mod:`cals.train.sync_critic`).

Inputs (what the shards hold, no other preprocessing):

- **video**: face crops as float RGB in [0, 1]. The encoder keeps the *mouth region*, the lower
  half of the crop (rows ``mouth_top * H .. H``: rows 64..128 of the shards' 128x128 crops, as
  Wav2Lip's expert discriminator does with the lower half of its 96x96 faces), resizes it to
  ``mouth_size`` (default 64x128: no resize for 128x128 crops; bilinear with antialiasing
  otherwise) and maps pixels to ``(x - pixel_mean) / pixel_std``.
- **audio**: the shards' log10 mel (:mod:`cals.mel`), 80 bins, 4 rows per video frame; window v
  (frames v..v+4) reads rows 4v..4v+19. The encoder normalises with the fixed affine map
  ``(mel - mel_mean) / mel_std`` (default -3.5 / 1.0, measured on fixture speech: silence, the
  log10 floor -5, maps to -1.5, loud speech to about +2).

Both trunks are *fully convolutional in time*: no temporal padding, temporal receptive field
exactly t_s frames (video) / 4·t_s mel rows with a stride of 4 rows (audio). So one pass over a
``T``-frame sequence yields the embeddings of all ``T - t_s + 1`` windows, identical (in eval
mode) to embedding each window on its own, at 1/t_s of the video cost. Training uses the
sequence form (:meth:`SyncCritic.forward`); inference callers use :meth:`embed_video` /
:meth:`embed_audio` on single windows, or :func:`embed_clip` on a whole clip.

Video trunk, input ``(B, 3, T, 64, 128)`` (sizes for the default ``mouth_size``)::

    conv (1,5,5)/2 → 32x64, pool 3/2 → 16x32        [frame-wise]
    conv (3,3,3)   → T-2, pool 3/2 → 8x16           [time 3]
    conv (3,3,3)   → T-4                             [time 3: receptive field 5 frames]
    conv (1,3,3), pool 3/2 → 4x8; conv (1,3,3)
    conv (1,4,8) valid → 1x1 (SyncNet's "fc6" convolution), head 1x1: C → C → embed_dim

Audio trunk, input ``(B, 1, 80, 4T)`` (mel bins x rows)::

    conv 3x5 (time valid), pool (3,2)/(2,2) → 40 bins, time stride 2 (receptive field 6 rows)
    conv 3x3, pool (3,2)/(2,2) → 20 bins, time stride 4 (receptive field 12 rows)
    conv 3x(t_s-2) → receptive field 4·t_s rows; conv 3x1, pool freq 3/2 → 10 bins
    conv (10,1) valid → 1 bin, head: C → C → embed_dim

Every convolution is followed by BatchNorm and ReLU. Widths are :class:`SyncCriticConfig`
fields (SyncNet/VGG-M-like by default; small ones for CPU tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cals.constants import CROP_SIZE, LIP_WINDOW_FRAMES, MEL_ROWS_PER_FRAME, N_MELS
from cals.errors import require_positive
from cals.settings import from_checked_dict, json_ready

#: ``config.json`` ``"task"`` of a sync-critic run folder.
TASK_NAME = "sync_critic"
#: Convolutions per trunk (the widths tuples must have this length).
TRUNK_CONVS = 5


@dataclass(frozen=True)
class SyncCriticConfig:
    """Architecture and input conventions of the sync critic (saved in the run's config.json).

    Attributes:
        embed_dim: size of both L2-normalised embeddings.
        t_s: frames per window (the paper's segment length, 5); the audio window is
            ``4 * t_s`` mel rows. At least 3.
        mouth_top: where the mouth region starts, as a fraction of the crop height (0.5: the
            lower half, rows 64..128 of a 128x128 crop).
        mouth_size: ``(height, width)`` the mouth region is resized to (64x128 = no resize for
            128x128 crops; smaller is faster). Both must be multiples of 16.
        video_channels, audio_channels: widths of the five convolutions of each trunk; the last
            is also the width of the head's hidden layer.
        pixel_mean, pixel_std: pixel normalisation ``(x - mean) / std`` of [0, 1] RGB.
        mel_mean, mel_std: log10-mel normalisation ``(mel - mean) / std``.
    """

    embed_dim: int = 512
    t_s: int = LIP_WINDOW_FRAMES
    mouth_top: float = 0.5
    mouth_size: tuple[int, int] = (CROP_SIZE // 2, CROP_SIZE)
    video_channels: tuple[int, ...] = (96, 256, 256, 256, 512)
    audio_channels: tuple[int, ...] = (64, 128, 256, 256, 512)
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    mel_mean: float = -3.5
    mel_std: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mouth_size", tuple(int(v) for v in self.mouth_size))
        object.__setattr__(self, "video_channels", tuple(int(v) for v in self.video_channels))
        object.__setattr__(self, "audio_channels", tuple(int(v) for v in self.audio_channels))
        require_positive(self, "embed_dim", "video_channels", "audio_channels", "pixel_std", "mel_std")
        if self.t_s < 3:
            raise ValueError(f"t_s must be >= 3 frames, got {self.t_s}")
        if len(self.video_channels) != TRUNK_CONVS or len(self.audio_channels) != TRUNK_CONVS:
            raise ValueError(f"video_channels and audio_channels need {TRUNK_CONVS} widths each")
        if len(self.mouth_size) != 2 or any(v < 16 or v % 16 for v in self.mouth_size):
            raise ValueError(f"mouth_size must be (height, width), multiples of 16, got {self.mouth_size}")
        if not 0.0 <= self.mouth_top < 1.0:
            raise ValueError(f"mouth_top must be in [0, 1), got {self.mouth_top}")

    @property
    def mel_rows(self) -> int:
        """Mel rows of one audio window (4 * t_s = 20)."""
        return MEL_ROWS_PER_FRAME * self.t_s

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SyncCriticConfig":
        return from_checked_dict(cls, data, "sync critic")


def _block(conv: type, norm: type, cin: int, cout: int, kernel, padding) -> list[nn.Module]:
    return [conv(cin, cout, kernel, padding=padding), norm(cout), nn.ReLU(inplace=True)]


def _head(width: int, embed_dim: int) -> nn.Sequential:
    """Per-window head on ``(B, C, N)``: C → C (BatchNorm, ReLU) → embed_dim."""
    return nn.Sequential(nn.Conv1d(width, width, 1), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Conv1d(width, embed_dim, 1))


class SyncCritic(nn.Module):
    """Video encoder F_v (3D convolutions) and audio encoder F_a (2D convolutions).

    Attributes:
        config: the :class:`SyncCriticConfig`.
        embed_dim: size of the embeddings.
    """

    def __init__(self, config: SyncCriticConfig = SyncCriticConfig()) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        t2 = (config.t_s + 1) // 2  # temporal kernels of the 2nd and 3rd video convolutions:
        t3 = config.t_s + 1 - t2  # t2 + t3 - 1 = t_s frames of receptive field
        c = config.video_channels
        h, w = config.mouth_size
        conv3, bn3 = nn.Conv3d, nn.BatchNorm3d
        self.video = nn.Sequential(
            conv3(3, c[0], (1, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2)), bn3(c[0]), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_block(conv3, bn3, c[0], c[1], (t2, 3, 3), (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_block(conv3, bn3, c[1], c[2], (t3, 3, 3), (0, 1, 1)),
            *_block(conv3, bn3, c[2], c[3], (1, 3, 3), (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_block(conv3, bn3, c[3], c[4], (1, 3, 3), (0, 1, 1)),
            # the 16x downsampled map → 1x1 (SyncNet's fc6 as a valid convolution)
            *_block(conv3, bn3, c[4], c[4], (1, h // 16, w // 16), 0),
        )
        self.video_head = _head(c[4], config.embed_dim)
        a = config.audio_channels
        conv2, bn2 = nn.Conv2d, nn.BatchNorm2d
        self.audio = nn.Sequential(
            *_block(conv2, bn2, 1, a[0], (3, 5), (1, 0)), nn.MaxPool2d((3, 2), (2, 2), (1, 0)),
            *_block(conv2, bn2, a[0], a[1], (3, 3), (1, 0)), nn.MaxPool2d((3, 2), (2, 2), (1, 0)),
            *_block(conv2, bn2, a[1], a[2], (3, config.t_s - 2), (1, 0)),
            *_block(conv2, bn2, a[2], a[3], (3, 1), (1, 0)), nn.MaxPool2d((3, 1), (2, 1), (1, 0)),
            *_block(conv2, bn2, a[3], a[4], (N_MELS // 8, 1), 0),
        )
        self.audio_head = _head(a[4], config.embed_dim)

    # --- input conventions ---

    def mouth(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` float [0, 1] RGB crops → ``(B, 3, T, h, w)`` normalised mouth
        regions (lower part from ``mouth_top``, resized to ``mouth_size``)."""
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected (B, T, 3, H, W) RGB frames, got {tuple(frames.shape)}")
        batch, time, _, height, width = frames.shape
        region = frames[:, :, :, int(round(self.config.mouth_top * height)) :]
        size = tuple(self.config.mouth_size)
        if tuple(region.shape[-2:]) != size:
            flat = region.reshape(batch * time, 3, *region.shape[-2:])
            region = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True).reshape(batch, time, 3, *size)
        region = (region - self.config.pixel_mean) / self.config.pixel_std
        return region.transpose(1, 2)

    def normalise_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, R, 80)`` log10 mel → ``(B, 1, 80, R)`` normalised (bins x rows)."""
        if mel.ndim != 3 or mel.shape[-1] != N_MELS:
            raise ValueError(f"expected (B, rows, {N_MELS}) log-mel, got {tuple(mel.shape)}")
        return ((mel - self.config.mel_mean) / self.config.mel_std).transpose(1, 2)[:, None]

    # --- sequences: every window of a clip in one pass ---

    def embed_video_sequence(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` float [0, 1] RGB crops → ``(B, T - t_s + 1, D)`` unit embeddings;
        entry v is the window of frames ``v .. v + t_s - 1``."""
        if frames.shape[1] < self.config.t_s:
            raise ValueError(f"{frames.shape[1]} frames: a window needs {self.config.t_s}")
        features = self.video(self.mouth(frames))  # (B, C, N, 1, 1)
        return F.normalize(self.video_head(features.flatten(2)).transpose(1, 2), dim=-1)

    def embed_audio_sequence(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, 4T, 80)`` log10 mel → ``(B, T - t_s + 1, D)`` unit embeddings; entry v reads mel
        rows ``4v .. 4v + 4 t_s - 1``. Rows beyond a whole number of frames are ignored."""
        rows = mel.shape[1] - mel.shape[1] % MEL_ROWS_PER_FRAME
        if rows < self.config.mel_rows:
            raise ValueError(f"{mel.shape[1]} mel rows: a window needs {self.config.mel_rows}")
        features = self.audio(self.normalise_mel(mel[:, :rows]))  # (B, C, 1, N)
        return F.normalize(self.audio_head(features.flatten(2)).transpose(1, 2), dim=-1)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both streams over sequences: ``(video, audio)`` embeddings, each ``(B, N, D)``."""
        return self.embed_video_sequence(frames), self.embed_audio_sequence(mel)

    # --- single windows: the inference contract ---

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, t_s, 3, H, W)`` float [0, 1] RGB full face crops → ``(N, D)`` unit embeddings
        (the mouth crop is done here)."""
        if frames.ndim != 5 or frames.shape[1] != self.config.t_s:
            raise ValueError(f"expected (N, {self.config.t_s}, 3, H, W) windows, got {tuple(frames.shape)}")
        return self.embed_video_sequence(frames)[:, 0]

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """``(N, 4 t_s, 80)`` log10 mel windows (the shards' mel rows 4v..4v+19) → ``(N, D)``."""
        if mel.ndim != 3 or mel.shape[1] != self.config.mel_rows:
            raise ValueError(f"expected (N, {self.config.mel_rows}, {N_MELS}) mel windows, got {tuple(mel.shape)}")
        return self.embed_audio_sequence(mel)[:, 0]


def load_critic(path: str | Path, device: str | torch.device = "cpu") -> SyncCritic:
    """A trained critic from a ``cals-train syncnet`` run folder (its newest checkpoint) or one of
    its ``.safetensors`` checkpoints (config.json is read from the same folder).

    Returns:
        The critic in eval mode on ``device``.
    Raises:
        FileNotFoundError: no checkpoint or no config.json.
        ValueError: the run is not a sync critic run, or the weights do not fit its config.
    """
    from cals.models.weights import check_state_dict
    from cals.train.checkpoint import load_weights, run_config

    config = run_config(path)
    if config.get("task") != TASK_NAME:
        raise ValueError(f"{path} is a {config.get('task')!r} run, not a {TASK_NAME!r} run")
    critic = SyncCritic(SyncCriticConfig.from_dict(config["task_config"]["model"]))
    weights = load_weights(path)
    check_state_dict(critic, weights, str(path), "the sync critic config")
    critic.load_state_dict(weights)
    return critic.to(device).eval()


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.inference_mode()
def embed_clip(frames: np.ndarray, mel: np.ndarray, critic: SyncCritic, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embed every window of one clip.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB crops (the shards' 128x128).
        mel: ``(4T, 80)`` log10 mel (the shards' ``mel.npy``).
        critic: put in eval mode and run on its own device.
        chunk: windows per forward pass (each pass reads ``chunk + t_s - 1`` frames).
    Returns:
        ``(video, audio)`` embeddings, each ``(T - t_s + 1, D)`` float32; row v is window v
        (frames v..v+4, mel rows 4v..4v+19), the layout :func:`cals.sync_score.score_embeddings`
        takes.
    """
    frames, mel = np.asarray(frames), np.asarray(mel, dtype=np.float32)
    total, t_s = frames.shape[0], critic.config.t_s
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    if mel.shape != (MEL_ROWS_PER_FRAME * total, N_MELS):
        raise ValueError(f"mel {mel.shape} does not fit {total} frames (expected ({MEL_ROWS_PER_FRAME * total}, {N_MELS}))")
    if total < t_s:
        raise ValueError(f"a clip of {total} frames is too short (a window needs {t_s})")
    critic.eval()
    device = _device(critic)
    windows = total - t_s + 1
    video, audio = [], []
    for first in range(0, windows, chunk):
        last = min(first + chunk, windows)  # windows first..last-1
        clip = torch.from_numpy(frames[first : last + t_s - 1]).to(device)
        clip = clip.permute(0, 3, 1, 2)[None].float() / 255.0
        sound = torch.from_numpy(mel[MEL_ROWS_PER_FRAME * first : MEL_ROWS_PER_FRAME * (last + t_s - 1)])[None].to(device)
        v, a = critic(clip, sound)
        video.append(v[0].float().cpu())
        audio.append(a[0].float().cpu())
    return torch.cat(video).numpy(), torch.cat(audio).numpy()


def score_clip(frames: np.ndarray, mel: np.ndarray, critic: SyncCritic, vshift: Optional[int] = None):
    """AV offset, min distance and confidence of one clip with the critic's embeddings, by
    :func:`cals.sync_score.score_embeddings` (SyncNet's shifted mean distances; same offset sign:
    k > 0 = the sound comes k frames before the matching lips). Embeddings are unit vectors, so
    distances lie in [0, 2]; outside the clip the audio is a zero vector (distance 1), as in
    syncnet_python. ``vshift`` defaults to SyncNet's 15."""
    from cals.constants import SYNCNET_VSHIFT
    from cals.sync_score import score_embeddings

    video, audio = embed_clip(frames, mel, critic)
    return score_embeddings(video, audio, SYNCNET_VSHIFT if vshift is None else vshift)


def score_samples(samples, critic: SyncCritic, vshift: Optional[int] = None):
    """The critic's counterpart of :func:`cals.sync_score.score_samples`: score
    ``(key, frames, audio)`` triples (``(T, H, W, 3)`` uint8 RGB crops, ``(640 T,)`` int16 audio)
    one by one, yielding :class:`cals.sync_score.ClipScore`; a clip that cannot be scored is
    yielded with its error (never dropped). The mel is computed as the shards store it
    (:func:`cals.mel.log_mel`, rounded to float16)."""
    from cals.mel import log_mel
    from cals.sync_score import ClipScore

    for key, frames, audio in samples:
        count = int(np.asarray(frames).shape[0])
        try:
            mel = log_mel(np.asarray(audio)).astype(np.float16).astype(np.float32)
            score = score_clip(frames, mel, critic, vshift)
        except ValueError as error:
            yield ClipScore(key=key, num_frames=count, error=str(error))
            continue
        yield ClipScore(key=key, num_frames=count, score=score)


__all__ = ["SyncCritic", "SyncCriticConfig", "TASK_NAME", "embed_clip", "load_critic", "score_clip", "score_samples"]
