"""The whole CALS generator for inference: Audio-to-Lip cascaded with Lip-to-Face.

The contract other code (metrics, ``cals-eval``, ``cals-generate``) relies on:

- :class:`CalsConfig` ``(a2l: A2LConfig, l2f: LipToFaceConfig, window: int)``;
- :class:`CalsModel` with ``a2l`` (:class:`~cals.models.a2l.AudioToLip`), ``generator``
  (:class:`~cals.models.l2f.LipToFace`), ``config`` and :meth:`CalsModel.generate`;
- :func:`load_cals_model` (a ``cals-train cals`` run folder or a ``.safetensors`` inside one);
- :func:`save_random_cals_model` (a run folder exactly like a real run's, with random weights).

A run folder's ``config.json`` has ``"task": "cals"`` and ``task_config["model"]`` =
:meth:`CalsConfig.to_dict`; its ``.safetensors`` checkpoints hold exactly
``CalsModel.state_dict()`` (``a2l.*``, ``generator.*``). The discriminator, the optimizers and
the loss schedule are resume state (``.state.pt``), not model weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cals.constants import MEL_ROWS_PER_FRAME, N_MELS
from cals.models.a2l import A2LConfig, AudioToLip
from cals.models.l2f import LipToFace, LipToFaceConfig, pose_prior
from cals.settings import from_checked_dict, reject_unknown

#: ``config.json`` ``"task"`` of a CALS run folder.
TASK_NAME = "cals"
#: Frames per generated window by default: ±12 frames around the centre, about 1 s at 25 fps
#: (the paper found a context of about 1.2 s, ±13 frames, best on LRS2; it gives no L2F window).
DEFAULT_WINDOW = 25


@dataclass(frozen=True)
class CalsConfig:
    """The architecture of a CALS model.

    Attributes:
        a2l: the Audio-to-Lip transformer.
        l2f: the Lip-to-Face generator (``l2f.unit_dim`` must equal ``a2l.unit_dim``).
        window: frames generated together (training window, and the inference chunk).
    """

    a2l: A2LConfig = field(default_factory=A2LConfig)
    l2f: LipToFaceConfig = field(default_factory=LipToFaceConfig)
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.a2l.unit_dim != self.l2f.unit_dim:
            raise ValueError(f"A2L makes {self.a2l.unit_dim}-d units but L2F reads {self.l2f.unit_dim}-d units")
        if self.window < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window}")

    def to_dict(self) -> dict[str, Any]:
        return {"a2l": self.a2l.to_dict(), "l2f": self.l2f.to_dict(), "window": self.window}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CalsConfig":
        reject_unknown(data, ("a2l", "l2f", "window"), "CALS")
        return cls(a2l=from_checked_dict(A2LConfig, dict(data["a2l"]), "A2L"), l2f=LipToFaceConfig.from_dict(data["l2f"]),
                   window=int(data["window"]))


class CalsModel(nn.Module):
    """Audio-to-Lip → Lip-to-Face.

    Attributes:
        a2l: the :class:`AudioToLip` transformer (run unmasked).
        generator: the :class:`LipToFace` generator.
        config: the :class:`CalsConfig`.
    """

    def __init__(self, config: CalsConfig) -> None:
        super().__init__()
        self.config = config
        self.a2l = AudioToLip(config.a2l)
        self.generator = LipToFace(config.l2f)

    def lip_units(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, 4T, 80)`` mel → ``(B, T, D)`` units, unmasked. Audio longer than A2L's
        ``max_frames`` is cut into consecutive chunks of ``max_frames`` frames."""
        frames = mel.shape[1] // MEL_ROWS_PER_FRAME
        chunk = self.config.a2l.max_frames
        parts = []
        for first in range(0, frames, chunk):
            piece = mel[:, MEL_ROWS_PER_FRAME * first : MEL_ROWS_PER_FRAME * min(first + chunk, frames)]
            real = torch.ones(mel.shape[0], piece.shape[1] // MEL_ROWS_PER_FRAME, dtype=torch.bool, device=mel.device)
            parts.append(self.a2l(piece, real))
        return torch.cat(parts, dim=1)

    def window_units(self, mel: torch.Tensor, real: torch.Tensor, offset: Optional[torch.Tensor], frames: int) -> torch.Tensor:
        """The lip units of a window of ``frames`` frames: A2L run unmasked over ``mel (B, 4U, 80)``
        with ``real (B, U)`` bool (True = real frame), then sliced at ``offset (B,)`` int64 (the
        window's first frame in the utterance; None: the mel is the window's own, U = frames)
        → ``(B, frames, D)``. Positions past an utterance's end (padding) repeat its last unit."""
        units = self.a2l(mel, real)
        if offset is None:
            return units
        index = (offset.to(units.device)[:, None] + torch.arange(frames, device=units.device)[None]).clamp(max=units.shape[1] - 1)
        return units.gather(1, index[..., None].expand(-1, -1, units.shape[-1]))

    def forward(self, mel: torch.Tensor, real: torch.Tensor, reference: torch.Tensor, prior: torch.Tensor,
                offset: Optional[torch.Tensor] = None, teacher: Optional[torch.Tensor] = None,
                use_teacher: Optional[torch.Tensor] = None) -> Any:
        """Training form: ``reference (B, 3, H, W)``, ``prior (B, W, 3, H, W)`` pose priors, and the
        audio as :meth:`window_units` reads it (``mel``, ``real``, ``offset``) → ``(B, W, 3, H, W)``.
        With ``offset`` A2L reads the whole utterance, as at inference (:meth:`generate`).

        Teacher forcing (training only, :mod:`cals.models.mouth_encoder`): with ``teacher``
        ``(B, W, D)`` units and ``use_teacher`` ``(B,)`` bool, the windows marked True are generated
        from ``teacher`` instead of A2L's units, and the result is ``(generated, a2l_units)``."""
        units = self.window_units(mel, real, offset, prior.shape[1])
        if teacher is None:
            return self.generator(units, reference, prior)
        chosen = torch.where(use_teacher.to(units.device)[:, None, None], teacher.to(units.dtype), units)
        return self.generator(chosen, reference, prior), units

    @torch.no_grad()
    def generate(self, mel: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Generate the frames of one clip.

        Args:
            mel: ``(1, 4T, 80)`` float32 log10 mel of the driving audio (the shards' mel).
            reference: ``(3, 128, 128)`` float RGB in [0, 1] (the paper uses the clip's first frame).
            targets: ``(T, 3, 128, 128)`` float RGB in [0, 1]; only their upper halves are used
                (the pose priors).
        Returns:
            ``(T, 3, 128, 128)`` float RGB in [0, 1], on ``targets``' device.

        A2L runs once over the whole audio (unmasked); the generator runs on consecutive windows
        of ``config.window`` frames (the last may be shorter). Runs in eval mode, without
        gradients, on the model's device.
        """
        if mel.ndim != 3 or mel.shape[0] != 1 or mel.shape[2] != N_MELS:
            raise ValueError(f"expected mel (1, 4T, {N_MELS}), got {tuple(mel.shape)}")
        size = self.config.l2f.crop_size
        if targets.ndim != 4 or tuple(targets.shape[1:]) != (3, size, size):
            raise ValueError(f"expected targets (T, 3, {size}, {size}), got {tuple(targets.shape)}")
        if tuple(reference.shape) != (3, size, size):
            raise ValueError(f"expected reference (3, {size}, {size}), got {tuple(reference.shape)}")
        total = targets.shape[0]
        if mel.shape[1] != MEL_ROWS_PER_FRAME * total:
            raise ValueError(f"mel has {mel.shape[1]} rows; {total} frames need {MEL_ROWS_PER_FRAME * total}")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            units = self.lip_units(mel.to(device, torch.float32))
            reference = reference.to(device, torch.float32)[None]
            out = []
            for first in range(0, total, self.config.window):
                last = min(first + self.config.window, total)
                prior = pose_prior(targets[first:last].to(device, torch.float32))[None]
                out.append(self.generator(units[:, first:last], reference, prior)[0])
            return torch.cat(out).to(targets.device)
        finally:
            self.train(was_training)


def _run_config(path: Path) -> dict[str, Any]:
    from cals.train.checkpoint import run_config

    config = run_config(path)
    if config.get("task") != TASK_NAME:
        raise ValueError(f"{path} is a {config.get('task')!r} run, not a {TASK_NAME!r} run")
    model = (config.get("task_config") or {}).get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{path}: config.json has no task_config.model (not written by cals-train cals?)")
    return model


def load_cals_model(path: str | Path, device: str | torch.device = "cpu") -> CalsModel:
    """A trained CALS model from a ``cals-train cals`` run folder (its newest checkpoint) or one
    of its ``.safetensors`` checkpoints (config.json is read from the same folder).

    Returns:
        The model in eval mode on ``device``.
    Raises:
        FileNotFoundError: nothing at ``path``, no checkpoint, or no config.json.
        ValueError: not a CALS run, or weights that do not fit its config.
    """
    from cals.models.weights import check_state_dict
    from cals.train.checkpoint import load_weights

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CALS model not found: {path} does not exist (expected a cals-train cals run folder or a .safetensors inside one)")
    model = CalsModel(CalsConfig.from_dict(_run_config(path)))
    weights = load_weights(path)
    check_state_dict(model, weights, str(path), "the CALS config")
    model.load_state_dict(weights)
    return model.to(device).eval()


def save_random_cals_model(out: Path, config: CalsConfig, seed: int = 0) -> Path:
    """Write a run folder like a real ``cals-train cals`` run's (``config.json`` with task
    ``"cals"``, a step-0 checkpoint by :func:`cals.train.checkpoint.save_checkpoint`) holding
    random weights (for tests). Returns ``out``."""
    from cals.shard_format import FORMAT_VERSION
    from cals.train.checkpoint import save_checkpoint, write_json
    from cals.train.config import TrainConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CalsModel(config)
    train = TrainConfig(out=str(out), steps=0, window=config.window)
    write_json(out / "config.json", {"task": TASK_NAME, "task_config": {"model": config.to_dict()}, "train": train.to_dict(),
                                     "format_version": FORMAT_VERSION})
    save_checkpoint(out, 0, model.state_dict(), {}, keep=1)
    return out


__all__ = ["CalsConfig", "CalsModel", "DEFAULT_WINDOW", "TASK_NAME", "load_cals_model", "save_random_cals_model"]
