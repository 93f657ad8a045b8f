"""Lip-motion units: the one loader contract for the models that make them.

``load_lip_model(path, device)`` returns a :class:`LipUnitModel` with

- ``kind``: ``"syncnet_v2"`` or ``"sync_critic"``;
- ``dim``: the length of one unit (1024 for SyncNet v2);
- ``digest``: SHA-256 (hex) of the model file (for a run folder, of its newest checkpoint);
- ``embed(frames)``: ``(T, 128, 128, 3)`` uint8 RGB face crops at 25 fps → ``(T, dim)``
  float32, one unit per frame.

**Window.** Unit ``t`` is the model's visual embedding of the 5-frame window centred on frame
``t`` (frames ``t-2 .. t+2``; the CALS paper's z_t). At the ends of the clip the window is
completed by **repeating the edge frame**: the clip is padded with 2 copies of its first frame
before it and 2 copies of its last frame after it, so unit 0 reads frames ``0 0 0 1 2`` and unit
``T-1`` reads ``T-3 T-2 T-1 T-1 T-1``. A T-frame clip gets exactly T units, and no unit reads
outside its clip.

**One pass per clip** (``embed(..., mode="clip")``, the default). Both models span time only
with unpadded, stride-1 convolutions whose temporal kernels add up to 5 frames (SyncNet v2: its
first convolution alone, :meth:`SyncNetV2.forward_lip_sequence`; the critic: kernels 1, 3, 3,
:meth:`SyncCritic.embed_video_sequence`), and their heads act on each time step alone. So one
pass over the edge-padded clip (T + 4 frames) yields all T units at once, equal in eval mode to
embedding the T windows one by one (``mode="windows"``, the reference, 5x the convolution work
of the first layers; tests/cals/test_lip_units.py shows max abs difference <= 1e-5). Long clips
run in **chunks** of ``batch_size`` units (default :data:`SYNCNET_BATCH_SIZE` = 20): each pass
reads ``batch_size + 4`` frames, overlapping the previous one by 4, so memory is bounded by the
chunk (never more than one ``batch_size`` batch of windows, which reads ``5 * batch_size``
frames). :meth:`LipUnitModel.embed_many` embeds several clips together: their padded frames are
laid end to end in one stream (the 4 windows that straddle two clips are computed and dropped),
so short clips still fill whole passes. Everything runs under ``torch.no_grad``.

**Which model a path is** (:func:`model_kind`):

- a file holding a torch-pickled state dict (``torch.save(state_dict)``: syncnet_python's
  released ``syncnet_v2.model``) → ``syncnet_v2``: :meth:`SyncNetV2.forward_lip` on SyncNet's lip
  windows (each crop resized to 224x224, BGR, 0-255: :func:`cals.models.syncnet_v2.syncnet_frames`),
  its 1024-d output;
- a sync-critic run folder (``cals-train syncnet``) whose ``config.json`` says
  ``"task": "sync_critic"`` (what :mod:`cals.train` writes; ``"model": "sync_critic"`` is accepted
  too), or a ``.safetensors`` checkpoint inside such a folder → ``sync_critic``, loaded by
  ``cals.models.sync_critic.load_critic(path)`` (imported only then): a module with ``embed_dim``
  and ``embed_video(frames)``, frames ``(N, 5, 3, H, W)`` float RGB in [0, 1] at the shards' crop
  size (the reference), and ``embed_video_sequence(frames)``, ``(1, N, 3, H, W)`` → ``(1, N - 4,
  embed_dim)`` (the one-pass path). A run folder stands for its newest checkpoint (``latest.json``), resolved once when
  loading, so the weights and the digest are those of one file even while training goes on.

Anything else is refused with an error that names what was expected.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from cals.constants import LIP_WINDOW_FRAMES, SYNCNET_BATCH_SIZE
from cals.models.syncnet_v2 import SYNCNET_V2_URL, SyncNetV2, load_syncnet_v2, syncnet_frames

KINDS = ("syncnet_v2", "sync_critic")
#: The module that loads sync-critic checkpoints (written by ``cals-train syncnet``).
CRITIC_MODULE = "cals.models.sync_critic"
#: ``config.json["task"]`` (or ``["model"]``) of a sync-critic run folder.
CRITIC_MODEL_NAME = "sync_critic"
CRITIC_CONFIG = "config.json"
CRITIC_WEIGHTS_SUFFIX = ".safetensors"
#: How the window is completed at the clip's ends (written to ``json.lip_units.padding``).
PADDING = "repeat edge frames"
#: Frames on each side of the centre frame (2 for 5-frame windows).
HALF_WINDOW = LIP_WINDOW_FRAMES // 2
#: ``embed`` modes: one pass over each (chunked) clip, or the reference, one window at a time.
MODES = ("clip", "windows")

EXPECTED = (
    "expected a SyncNet v2 state dict (syncnet_v2.model, saved with torch.save(state_dict)), "
    f'a sync-critic run folder (holding {CRITIC_CONFIG} with "task": "{CRITIC_MODEL_NAME}"), '
    f"or a {CRITIC_WEIGHTS_SUFFIX} file inside such a folder"
)

_CHUNK_BYTES = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def critic_weights(path: str | Path) -> Path:
    """The checkpoint file a sync-critic path stands for: the file itself, or a run folder's
    newest checkpoint (``latest.json``, via :func:`cals.train.checkpoint.latest`)."""
    path = Path(path)
    if not path.is_dir():
        return path
    from cals.train.checkpoint import latest

    info = latest(path)
    if info is None:
        raise FileNotFoundError(f"{path} is a sync-critic run folder without a checkpoint yet (no latest.json)")
    return path / info["weights"]


def model_digest(path: str | Path) -> str:
    """The identity of a model: SHA-256 of its file (a sync-critic run folder: of its newest
    checkpoint, :func:`critic_weights`)."""
    path = Path(path)
    return file_sha256(critic_weights(path) if path.is_dir() else path)


def _is_critic_folder(folder: Path) -> bool:
    config = folder / CRITIC_CONFIG
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and CRITIC_MODEL_NAME in (data.get("task"), data.get("model"))


def model_kind(path: str | Path) -> str:
    """``"syncnet_v2"`` or ``"sync_critic"`` for ``path``, decided by the file (see the module
    docstring); a file that is neither a folder nor a ``.safetensors`` is taken for a SyncNet v2
    state dict, which :func:`load_lip_model` then checks.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a folder or ``.safetensors`` file that is not part of a sync-critic run.
    """
    path = Path(path)
    if path.is_dir():
        if _is_critic_folder(path):
            return "sync_critic"
        raise ValueError(f"{path} is a folder but not a sync-critic run folder: {EXPECTED}")
    if not path.is_file():
        raise FileNotFoundError(
            f"lip-unit model not found: {path} does not exist; {EXPECTED} (syncnet_v2.model comes from {SYNCNET_V2_URL})"
        )
    if path.suffix == CRITIC_WEIGHTS_SUFFIX:
        if _is_critic_folder(path.parent):
            return "sync_critic"
        raise ValueError(f"{path} is a {CRITIC_WEIGHTS_SUFFIX} file outside a sync-critic run folder: {EXPECTED}")
    return "syncnet_v2"


def window_indices(num_frames: int, centres: Iterable[int]) -> np.ndarray:
    """Frame indices of the 5-frame window centred on each of ``centres``, the clip's edge
    frames repeated where the window passes its ends: ``(len(centres), 5)`` int64."""
    centres = np.asarray(list(centres), dtype=np.int64)
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if centres.size and (centres.min() < 0 or centres.max() >= num_frames):
        raise ValueError(f"window centres must lie in 0 .. {num_frames - 1}")
    offsets = np.arange(-HALF_WINDOW, HALF_WINDOW + 1, dtype=np.int64)
    return np.clip(centres[:, None] + offsets[None, :], 0, num_frames - 1)


def stream_indices(lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Clips of ``lengths`` frames laid end to end, each padded with 2 copies of its first and
    last frame: ``(positions, starts)``, both int64.

    ``positions[s]`` is the frame (index into the clips concatenated) at stream position ``s``
    (``len(positions) = sum(T_i + 4)``); ``starts[k]`` is the stream position where the window of
    unit ``k`` begins (units of clip 0 first, ``len(starts) = sum(T_i)``): window ``k`` covers
    positions ``starts[k] .. starts[k] + 4``, so the stream's window v is unit ``k`` where
    ``starts[k] = v`` and straddles two clips otherwise.
    """
    lengths = [int(length) for length in lengths]
    if any(length < 1 for length in lengths):
        raise ValueError("a clip needs at least one frame")
    positions, starts = [], []
    first_frame = stream_start = 0
    for length in lengths:
        positions.append(first_frame + np.clip(np.arange(-HALF_WINDOW, length + HALF_WINDOW), 0, length - 1))
        starts.append(stream_start + np.arange(length))
        first_frame += length
        stream_start += length + 2 * HALF_WINDOW
    if not lengths:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(positions).astype(np.int64), np.concatenate(starts).astype(np.int64)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    return frames


class LipUnitModel:
    """A loaded lip-unit model (built by :func:`load_lip_model`).

    Attributes:
        kind: ``"syncnet_v2"`` or ``"sync_critic"``.
        dim: length of one unit.
        digest: SHA-256 (hex) of the file at ``path``.
        path: the file the weights were read from (for a run folder, its newest checkpoint).
        device: the torch device it runs on.
    """

    kind: str
    dim: int
    digest: str
    path: str
    device: torch.device

    def embed(self, frames: np.ndarray, batch_size: int = SYNCNET_BATCH_SIZE, mode: str = "clip") -> np.ndarray:
        """``(T, H, W, 3)`` uint8 RGB crops (the shards' 128x128) → ``(T, dim)`` float32: unit t
        from the window centred on frame t, edge frames repeated (module docstring).

        ``mode="clip"``: one pass over the padded clip, ``batch_size`` units per chunk;
        ``mode="windows"``: the reference, ``batch_size`` 5-frame windows per forward pass.
        """
        frames = _check_frames(frames)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode == "clip":
            return self.embed_many([frames], batch_size)[0]
        total = frames.shape[0]
        units = np.empty((total, self.dim), dtype=np.float32)
        with torch.no_grad():
            for first in range(0, total, batch_size):
                centres = range(first, min(first + batch_size, total))
                out = self._embed_windows(frames, window_indices(total, centres))
                self._check_out(out, len(centres))
                units[first : first + len(centres)] = out.float().cpu().numpy()
        return units

    def embed_many(self, clips: Sequence[np.ndarray], batch_size: int = SYNCNET_BATCH_SIZE) -> list[np.ndarray]:
        """Several clips (each ``(T_i, H, W, 3)`` uint8 RGB, same H and W) → their ``(T_i, dim)``
        float32 units, as :meth:`embed` gives them, in one stream of passes (:func:`stream_indices`):
        each pass reads ``batch_size + 4`` stream frames and yields ``batch_size`` windows."""
        clips = [_check_frames(clip) for clip in clips]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not clips:
            return []
        if len({clip.shape[1:] for clip in clips}) > 1:
            raise ValueError(f"clips of different frame sizes cannot share a stream: {sorted({clip.shape[1:] for clip in clips})}")
        frames = clips[0] if len(clips) == 1 else np.concatenate(clips)
        positions, starts = stream_indices([clip.shape[0] for clip in clips])
        windows = len(positions) - LIP_WINDOW_FRAMES + 1  # stream windows, straddling ones included
        stream = np.empty((windows, self.dim), dtype=np.float32)
        with torch.no_grad():
            for first in range(0, windows, batch_size):
                count = min(batch_size, windows - first)
                out = self._embed_stream(frames[positions[first : first + count + LIP_WINDOW_FRAMES - 1]])
                self._check_out(out, count)
                stream[first : first + count] = out.float().cpu().numpy()
        units = stream[starts]
        bounds = np.cumsum([0] + [clip.shape[0] for clip in clips])
        return [units[low:high] for low, high in zip(bounds[:-1], bounds[1:])]

    def _check_out(self, out: torch.Tensor, count: int) -> None:
        if tuple(out.shape) != (count, self.dim):
            raise ValueError(f"{self.kind} model returned {tuple(out.shape)} for {count} windows, expected ({count}, {self.dim})")

    def units_meta(self) -> dict[str, Any]:
        """What ``json.lip_units`` records about units made by this model."""
        return {"kind": self.kind, "digest": self.digest, "dim": self.dim, "window": LIP_WINDOW_FRAMES, "padding": PADDING}

    def _embed_windows(self, frames: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """``(B, 5)`` frame indices into ``frames`` → ``(B, dim)``: the reference, window by window."""
        raise NotImplementedError

    def _embed_stream(self, frames: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 RGB consecutive frames (N >= 5) → ``(N - 4, dim)``: row v is
        the unit of the window of frames ``v .. v+4``, in one pass."""
        raise NotImplementedError


class SyncNetLipUnits(LipUnitModel):
    """SyncNet v2's lip stream: :meth:`SyncNetV2.forward_lip` of each window (1024-d), or
    :meth:`SyncNetV2.forward_lip_sequence` of the whole padded clip."""

    kind = "syncnet_v2"

    def __init__(self, net: SyncNetV2, path: str, digest: str, device: torch.device) -> None:
        self.net, self.path, self.digest, self.device = net, path, digest, device
        self.dim = int(net.netfclip[-1].out_features)

    def _embed_windows(self, frames: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        low, high = int(indices.min()), int(indices.max())
        prepared = syncnet_frames(frames[low : high + 1])  # (n, 3, 224, 224) uint8 BGR: only this batch's frames
        windows = prepared[torch.from_numpy(indices - low)]  # (B, 5, 3, 224, 224)
        return self.net.forward_lip(windows.permute(0, 2, 1, 3, 4).float().to(self.device))

    def _embed_stream(self, frames: np.ndarray) -> torch.Tensor:
        prepared = syncnet_frames(frames)  # (N, 3, 224, 224) uint8 BGR
        return self.net.forward_lip_sequence(prepared.permute(1, 0, 2, 3)[None].float().to(self.device))[0]


class CriticLipUnits(LipUnitModel):
    """The sync critic's video encoder: ``embed_video`` of each window (``embed_dim``-d), or
    ``embed_video_sequence`` of the whole padded clip (its trunk spans time only with unpadded,
    stride-1 convolutions of temporal kernels 1, 3, 3: 5 frames of receptive field)."""

    kind = "sync_critic"

    def __init__(self, net: torch.nn.Module, path: str, digest: str, device: torch.device) -> None:
        self.net, self.path, self.digest, self.device = net, path, digest, device
        self.dim = int(net.embed_dim)

    def _embed_windows(self, frames: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        windows = torch.from_numpy(frames[indices])  # (B, 5, H, W, 3) uint8 RGB
        windows = windows.permute(0, 1, 4, 2, 3).to(self.device).float() / 255.0
        return self.net.embed_video(windows)

    def _embed_stream(self, frames: np.ndarray) -> torch.Tensor:
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].to(self.device).float() / 255.0  # (1, N, 3, H, W)
        return self.net.embed_video_sequence(clip)[0]


def load_critic_module() -> Any:
    """``cals.models.sync_critic``, or ImportError saying it is not in this installation."""
    try:
        return importlib.import_module(CRITIC_MODULE)
    except ModuleNotFoundError as error:
        if error.name != CRITIC_MODULE:
            raise
        raise ImportError(
            f"sync-critic checkpoints need {CRITIC_MODULE}, which this installation of cals does not have "
            "(an incomplete installation: reinstall cals); or use a syncnet_v2.model file"
        ) from None


def load_lip_model(path: str | Path, device: str | torch.device = "cpu") -> LipUnitModel:
    """Load the lip-unit model at ``path`` onto ``device`` (kind decided by :func:`model_kind`).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a model this contract knows, or a state dict that is not SyncNet v2's
            (the message says what was expected).
        ImportError: a sync-critic checkpoint without ``cals.models.sync_critic`` installed.
    """
    path = Path(path)
    kind = model_kind(path)
    device = torch.device(device)
    if kind == "syncnet_v2":
        try:
            net = load_syncnet_v2(path, device)
        except ValueError as error:
            raise ValueError(f"{error}; {EXPECTED}") from None
        return SyncNetLipUnits(net, str(path), model_digest(path), device)
    module = load_critic_module()
    weights = critic_weights(path)
    critic = module.load_critic(weights)
    for attribute in ("embed_dim", "embed_video", "embed_video_sequence"):
        if not hasattr(critic, attribute):
            raise ValueError(f"{CRITIC_MODULE}.load_critic({weights}) returned a {type(critic).__name__} without {attribute!r}")
    return CriticLipUnits(critic.to(device).eval(), str(weights), file_sha256(weights), device)


def units_meta_matches(units: Optional[dict[str, Any]], kind: str, digest: str) -> bool:
    """True when ``json.lip_units`` says the units came from the model of that kind and digest."""
    return isinstance(units, dict) and units.get("kind") == kind and units.get("digest") == digest
