"""SyncNet scoring: AV offset, LSE-D (min dist) and LSE-C (confidence), as syncnet_python does.

The arithmetic follows ``SyncNetInstance.evaluate()`` and ``calc_pdist()`` of
joonson/syncnet_python:

- Per-window embeddings: video ``V`` ``(N, D)`` from lip windows v = 0 .. N-1, audio ``A``
  ``(N, D)`` from the MFCC windows of the same starts.
- ``A`` is zero-padded by ``vshift`` rows at both ends (``Ap``), and for every window i and
  shift column j = 0 .. 2·vshift: ``d[i, j] = || V[i] - Ap[i + j] + 1e-6 ||₂`` (the eps is what
  ``torch.nn.functional.pairwise_distance`` adds). Column j compares video window i with audio
  window ``i + j - vshift`` (a zero vector outside the clip, as in the original).
- ``mean[j]`` = mean over windows; ``min_dist`` (LSE-D) = ``min(mean)``; ``offset = vshift -
  argmin(mean)`` (first minimum on ties); ``conf`` (LSE-C) = ``median(mean) - min_dist``, the
  lower median as ``torch.median`` takes it (the same as the median here: 2·vshift+1 is odd).
- Frame-wise confidence (what ``evaluate()`` prints): per window i, ``median(mean) - d[i, best]``,
  median-filtered over windows with a 9-tap kernel (``scipy.signal.medfilt``, zero-padded ends).

Offset sign: offset k > 0 means video window i matches audio window ``i - k`` best, i.e. the
sound comes k frames (40 ms each) before the matching lips; k < 0, the sound comes late.

Distances are computed in float64 (syncnet_python uses float32); the difference is float32
rounding, far below the three decimals scores are reported with.

:func:`score_clip` runs the model on one clip. Like ``evaluate()`` it scores windows
v = 0 .. T-6 (``T - 5`` windows): the MFCC of ``640 T`` samples has ``4T - 1`` rows, so window
T-5 would lack its last row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch

from cals.constants import (
    AUDIO_SAMPLES_PER_FRAME,
    LIP_WINDOW_FRAMES,
    MFCC_ROWS_PER_FRAME,
    SYNCNET_BATCH_SIZE,
    SYNCNET_FRAMEWISE_MEDIAN,
    SYNCNET_MFCC_ROWS,
    SYNCNET_PAIRWISE_EPS,
    SYNCNET_VSHIFT,
)
from cals.mfcc import MFCC_PARAMS, mfcc
from cals.models.syncnet_v2 import SyncNetV2, lip_windows, syncnet_frames


@dataclass(frozen=True)
class SyncScore:
    """SyncNet's verdict on one clip.

    Attributes:
        offset: AV offset, video frames (see the module docstring for the sign).
        min_dist: LSE-D, the smallest mean distance over the shifts (lower is better).
        conf: LSE-C, median minus minimum of the mean distances (higher is better).
        dists: ``(N, 2·vshift + 1)`` float64 distance of every window at every shift (what
            ``evaluate()`` returns as ``dists_npy``, transposed to windows x shifts).
    """

    offset: int
    min_dist: float
    conf: float
    dists: np.ndarray = field(repr=False)

    @property
    def vshift(self) -> int:
        return (self.dists.shape[1] - 1) // 2

    @property
    def mean_dists(self) -> np.ndarray:
        """``(2·vshift + 1,)`` mean distance per shift; entry j is offset ``vshift - j``."""
        return self.dists.mean(axis=0)

    @property
    def num_windows(self) -> int:
        return int(self.dists.shape[0])

    @property
    def framewise_conf(self) -> np.ndarray:
        """``(N,)`` float64 per-window confidence at the best shift, 9-tap median-filtered: the
        ``Framewise conf`` syncnet_python prints (module docstring)."""
        import warnings

        from scipy.signal import medfilt

        best = self.vshift - self.offset
        with warnings.catch_warnings():  # fewer windows than taps: zero-padded, as in syncnet_python
            warnings.simplefilter("ignore", UserWarning)
            return medfilt(self.min_dist + self.conf - self.dists[:, best], kernel_size=SYNCNET_FRAMEWISE_MEDIAN)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the per-shift mean curve, not the per-window matrix)."""
        return {
            "offset": self.offset,
            "min_dist": self.min_dist,
            "conf": self.conf,
            "num_windows": self.num_windows,
            "vshift": self.vshift,
            "mean_dists": [float(d) for d in self.mean_dists],
            "framewise_conf": [float(c) for c in self.framewise_conf],
        }


def shifted_distances(video: np.ndarray, audio: np.ndarray, vshift: int = SYNCNET_VSHIFT) -> np.ndarray:
    """``calc_pdist``: distance of every video window to the audio windows ``-vshift .. +vshift``
    around it.

    Args:
        video, audio: ``(N, D)`` embeddings of the same N windows.
        vshift: largest shift, windows (= video frames).
    Returns:
        ``(N, 2·vshift + 1)`` float64; column j compares video i with audio ``i + j - vshift``
        (a zero vector where that is outside 0 .. N-1).
    """
    video = np.asarray(video, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    if video.ndim != 2 or video.shape != audio.shape:
        raise ValueError(f"video {video.shape} and audio {audio.shape} embeddings must both be (N, D)")
    if vshift < 0:
        raise ValueError(f"vshift must be >= 0, got {vshift}")
    count, dim = video.shape
    padded = np.zeros((count + 2 * vshift, dim))
    padded[vshift : vshift + count] = audio
    dists = np.empty((count, 2 * vshift + 1))
    for column in range(2 * vshift + 1):
        dists[:, column] = np.linalg.norm(video - padded[column : column + count] + SYNCNET_PAIRWISE_EPS, axis=1)
    return dists


def score_embeddings(video: np.ndarray, audio: np.ndarray, vshift: int = SYNCNET_VSHIFT) -> SyncScore:
    """AV offset, LSE-D and LSE-C from per-window embeddings ``(N, D)`` (``evaluate()``'s maths)."""
    if np.asarray(video).shape[0] == 0:
        raise ValueError("no windows to score (the clip needs at least 6 frames)")
    dists = shifted_distances(video, audio, vshift)
    mean = dists.mean(axis=0)
    best = int(np.argmin(mean))
    min_dist = float(mean[best])
    lower_median = float(np.sort(mean)[(mean.shape[0] - 1) // 2])
    return SyncScore(offset=vshift - best, min_dist=min_dist, conf=lower_median - min_dist, dists=dists)


def num_scored_windows(num_frames: int) -> int:
    """Windows ``evaluate()`` scores on a T-frame clip with 640·T samples: ``T - 5``."""
    return max(num_frames - LIP_WINDOW_FRAMES, 0)


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def embed_clip(
    frames: np.ndarray,
    audio: np.ndarray,
    model: SyncNetV2,
    batch_size: int = SYNCNET_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Run SyncNet on every scored window of one clip.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB face crops at 25 fps (the shards' 128x128).
        audio: ``(640 T,)`` int16 mono at 16 kHz.
        model: SyncNet v2; it is put in eval mode and run on its own device.
        batch_size: windows per forward pass (memory: ~3 MB of lip input per window).
    Returns:
        ``(video, audio)`` embeddings, each ``(T - 5, D)`` float32.
    """
    frames = np.asarray(frames)
    audio = np.asarray(audio)
    num_frames = frames.shape[0]
    if audio.shape != (AUDIO_SAMPLES_PER_FRAME * num_frames,):
        raise ValueError(
            f"audio has shape {audio.shape}, expected ({AUDIO_SAMPLES_PER_FRAME * num_frames},) for {num_frames} frames"
        )
    windows = num_scored_windows(num_frames)
    if windows == 0:
        raise ValueError(f"a clip of {num_frames} frames is too short to score (at least {LIP_WINDOW_FRAMES + 1})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prepared = syncnet_frames(frames)
    cepstra = torch.from_numpy(mfcc(audio, MFCC_PARAMS).T.astype(np.float32))  # (13, 4T - 1)
    device = _model_device(model)
    model.eval()
    video_out, audio_out = [], []
    with torch.inference_mode():
        for first in range(0, windows, batch_size):
            starts = range(first, min(first + batch_size, windows))
            lips = lip_windows(prepared, starts).to(device)
            rows = [MFCC_ROWS_PER_FRAME * v for v in starts]
            sound = torch.stack([cepstra[:, r : r + SYNCNET_MFCC_ROWS] for r in rows])[:, None].to(device)
            video_out.append(model.forward_lip(lips).float().cpu())
            audio_out.append(model.forward_aud(sound).float().cpu())
    return torch.cat(video_out).numpy(), torch.cat(audio_out).numpy()


def score_clip(
    frames: np.ndarray,
    audio: np.ndarray,
    model: SyncNetV2,
    vshift: int = SYNCNET_VSHIFT,
    batch_size: int = SYNCNET_BATCH_SIZE,
) -> SyncScore:
    """SyncNet score of one clip: ``(T, 128, 128, 3)`` uint8 RGB crops and ``(640 T,)`` int16
    audio → :class:`SyncScore` (see :func:`embed_clip` for the arguments)."""
    video, sound = embed_clip(frames, audio, model, batch_size)
    return score_embeddings(video, sound, vshift)


@dataclass(frozen=True)
class ClipScore:
    """A scored (or failed) clip or face track: ``score`` is None and ``error`` says why when it
    failed; ``num_frames`` is None when the clip could not even be decoded. ``track`` /
    ``first_frame`` (25 fps frame of the video) are set for the face tracks of the
    ``syncnet_python`` protocol, one ClipScore each."""

    key: str
    num_frames: Optional[int]
    score: Optional[SyncScore] = None
    error: Optional[str] = None
    track: Optional[int] = None
    first_frame: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"clip": self.key, "num_frames": self.num_frames, "error": self.error,
                               "track": self.track, "first_frame": self.first_frame}
        row.update(self.score.to_dict() if self.score else {"offset": None, "min_dist": None, "conf": None})
        return row


@dataclass(frozen=True)
class CorpusSummary:
    """Means over the clips that were scored; ``failed`` counts the others."""

    clips: int
    failed: int
    mean_offset: Optional[float]
    mean_abs_offset: Optional[float]
    mean_min_dist: Optional[float]
    mean_conf: Optional[float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarise(results: Iterable[ClipScore]) -> CorpusSummary:
    """Corpus means of offset, |offset|, LSE-D and LSE-C over the scored clips."""
    results = list(results)
    scored = [r.score for r in results if r.score is not None]

    def mean(values: list[float]) -> Optional[float]:
        return float(np.mean(values)) if values else None

    return CorpusSummary(
        clips=len(scored),
        failed=len(results) - len(scored),
        mean_offset=mean([s.offset for s in scored]),
        mean_abs_offset=mean([abs(s.offset) for s in scored]),
        mean_min_dist=mean([s.min_dist for s in scored]),
        mean_conf=mean([s.conf for s in scored]),
    )


def score_samples(
    samples: Iterable[tuple[str, np.ndarray, np.ndarray]],
    model: SyncNetV2,
    vshift: int = SYNCNET_VSHIFT,
    batch_size: int = SYNCNET_BATCH_SIZE,
) -> Iterator[ClipScore]:
    """Score ``(key, frames, audio)`` triples one by one; a clip too short to score is yielded
    with its error (never dropped)."""
    for key, frames, audio in samples:
        try:
            score = score_clip(frames, audio, model, vshift, batch_size)
        except ValueError as error:
            yield ClipScore(key=key, num_frames=int(np.asarray(frames).shape[0]), error=str(error))
            continue
        yield ClipScore(key=key, num_frames=int(np.asarray(frames).shape[0]), score=score)
