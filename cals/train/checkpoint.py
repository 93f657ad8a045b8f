"""Checkpoints that survive ``kill -9`` and damage: written to temp names and renamed, newest
last, each carrying digests that are checked on load.

A run folder holds ``config.json`` (task name, task config, TrainConfig, shard format version),
and per checkpoint ``ckpt-<step>.state.pt`` (optimizer, scheduler, step, RNG state: what resume
loads) plus ``ckpt-<step>.safetensors`` (model weights: what inference loads), written in that
order, and ``latest.json`` naming the newest pair. Only the last ``keep`` pairs are kept.

Digests: the safetensors metadata holds ``tensors_sha256`` (SHA-256 over every tensor's name,
dtype, shape and bytes, in sorted name order: :func:`tensors_digest`) and ``state_sha256`` (of the
state file's bytes), so the weights file, written last, vouches for the whole pair. A file that
fails its digest is damaged (:class:`DamagedCheckpoint`): resume falls back to the previous kept
pair, saying so (:func:`resume_point`); :func:`load_weights` refuses it in one line.

Nothing loaded executes code: the state file holds only tensors, lists, dicts, numbers and
strings (RNG states included), and is loaded with ``torch.load(weights_only=True)``; a state file
that asks for anything else is refused (:class:`CheckpointError`), never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cals.atomic import atomic_write
from cals.train.guard import NonFiniteError, nonfinite_tensors

CONFIG_FILE = "config.json"
LATEST_FILE = "latest.json"
WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.pt"
#: safetensors metadata keys: the checkpoint's step, and the digests of its weights and state file.
STEP_KEY, TENSORS_DIGEST_KEY, STATE_DIGEST_KEY = "step", "tensors_sha256", "state_sha256"
#: Checkpoint files are ``ckpt-<step, 8 digits>.safetensors`` / ``.state.pt``.
CHECKPOINT_NAME = re.compile(r"ckpt-(\d{8})\.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (refused, or none usable). One line naming the file;
    the ``cals-*`` commands print it and exit 2."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that fails its digest or cannot be read (resume falls back past it)."""


def _atomic(path: Path, write) -> None:
    with atomic_write(path) as tmp:
        write(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) global RNG states as tensors and plain lists/numbers
    (what ``torch.load(weights_only=True)`` loads)."""
    version, internal, gauss_next = random.getstate()
    generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"generator": generator, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state((numpy["generator"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over each tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def checkpoint_files(out: Path, step: int) -> tuple[Path, Path]:
    """``(weights, state)`` paths of the checkpoint at ``step`` in run folder ``out``."""
    stem = f"ckpt-{step:08d}"
    return Path(out) / f"{stem}{WEIGHTS_SUFFIX}", Path(out) / f"{stem}{STATE_SUFFIX}"


def kept_steps(out: Path) -> list[int]:
    """Steps of the checkpoints (weights files) in ``out``, newest first."""
    if not Path(out).is_dir():
        return []
    found = (CHECKPOINT_NAME.fullmatch(path.name) for path in Path(out).iterdir())
    return sorted((int(match.group(1)) for match in found if match), reverse=True)


def save_checkpoint(out: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Write the resume state, then the weights (safetensors, with the digests of both), then
    point latest.json at them; delete all but the newest ``keep`` pairs. Returns the weights path.

    Raises:
        NonFiniteError: a weight or state tensor holds NaN/Inf; nothing is written, the previous
            checkpoints stay as they were.
    """
    out = Path(out)
    weights_file, state_file = checkpoint_files(out, step)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}
    bad = nonfinite_tensors(tensors) + nonfinite_tensors(state, "state")
    if bad:
        previous = next((f"ckpt-{s:08d}" for s in kept_steps(out) if s != step), "none")
        raise NonFiniteError(f"step {step}: {len(bad)} tensors hold NaN/Inf ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
                             f"checkpoint not written in {out} (newest kept: {previous})")
    _atomic(state_file, lambda tmp: torch.save({**state, "step": step, "rng": rng_state()}, tmp))
    from cals.models.lip_units import file_sha256

    metadata = {STEP_KEY: str(step), TENSORS_DIGEST_KEY: tensors_digest(tensors), STATE_DIGEST_KEY: file_sha256(state_file)}
    _atomic(weights_file, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    write_json(out / LATEST_FILE, {"step": step, "weights": weights_file.name, "state": state_file.name})
    kept = {name for s in kept_steps(out)[: max(keep, 1)] for name in (p.name for p in checkpoint_files(out, s))}
    for old in [*out.glob(f"ckpt-*{WEIGHTS_SUFFIX}"), *out.glob(f"ckpt-*{STATE_SUFFIX}")]:
        if old.name not in kept:
            old.unlink(missing_ok=True)
    return weights_file


def latest(out: Path) -> Optional[dict[str, Any]]:
    """The newest checkpoint latest.json names (None when there is none); not verified."""
    pointer = Path(out) / LATEST_FILE
    if not pointer.is_file():
        return None
    try:
        info = read_json(pointer)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedCheckpoint(f"{pointer} is damaged ({error})") from None
    if not (Path(out) / info["weights"]).is_file() or not (Path(out) / info["state"]).is_file():
        raise FileNotFoundError(f"{pointer} names {info['weights']} / {info['state']}, which are missing")
    return info


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint's safetensors file, the tensor digest checked.

    Raises:
        DamagedCheckpoint: unreadable, no digest, or the digest does not match.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise DamagedCheckpoint(f"{path} is damaged ({' '.join(str(error).split())})") from None
    if TENSORS_DIGEST_KEY not in metadata:
        raise DamagedCheckpoint(f"{path} has no {TENSORS_DIGEST_KEY} in its metadata (not written by this cals-train)")
    if tensors_digest(tensors) != metadata[TENSORS_DIGEST_KEY]:
        raise DamagedCheckpoint(f"{path} is damaged (its tensors do not match their SHA-256)")
    return tensors, metadata


def read_state(path: Path, expected_sha256: Optional[str], step: int) -> dict[str, Any]:
    """A checkpoint's resume state: digest checked, then loaded with ``weights_only=True``.

    Raises:
        DamagedCheckpoint: missing, digest mismatch, unreadable, or not the state of ``step``.
        CheckpointError: the file asks to build objects other than tensors and plain data (a
            crafted pickle): refused, nothing in it executed.
    """
    from cals.models.lip_units import file_sha256

    if not path.is_file():
        raise DamagedCheckpoint(f"{path} is missing")
    if expected_sha256 is None or file_sha256(path) != expected_sha256:
        raise DamagedCheckpoint(f"{path} is damaged (its bytes do not match the SHA-256 in its weights file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        wanted = re.search(r"GLOBAL (\S+)", str(error))
        raise CheckpointError(f"{path} refused: it asks to load {wanted.group(1) if wanted else 'objects'}, not only tensors "
                              f"and plain data (a crafted or foreign file); nothing in it was run") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise DamagedCheckpoint(f"{path} is damaged ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(state, dict) or state.get("step") != step or "rng" not in state:
        raise DamagedCheckpoint(f"{path} is not the resume state of step {step}")
    return state


def resume_point(out: Path, warn: Callable[[str], None]) -> Optional[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """``(weights, state)`` of the newest usable checkpoint in ``out`` (None when there is none).
    Each damaged newer one is reported through ``warn`` (one line naming it and what is tried next).

    Raises:
        CheckpointError: checkpoints exist but none is usable, or a state file is refused.
    """
    steps = kept_steps(out)
    for index, step in enumerate(steps):
        weights_file, state_file = checkpoint_files(out, step)
        try:
            weights, metadata = read_weights(weights_file)
            return weights, read_state(state_file, metadata.get(STATE_DIGEST_KEY), step)
        except DamagedCheckpoint as error:
            if index + 1 == len(steps):
                raise CheckpointError(f"{error}; no usable checkpoint is left in {out} to resume from") from None
            warn(f"{error}; resuming from the previous kept checkpoint, {checkpoint_files(out, steps[index + 1])[0].name}")
    return None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a checkpoint file, or from a run folder's newest checkpoint, the
    tensor digest checked (:class:`DamagedCheckpoint` when it fails)."""
    path = Path(path)
    if path.is_dir():
        info = latest(path)
        if info is None:
            raise FileNotFoundError(f"{path} holds no checkpoint ({LATEST_FILE} is missing)")
        path = path / info["weights"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return read_weights(path)[0]


def run_config(path: str | Path) -> dict[str, Any]:
    """config.json of a run folder (or of the folder holding a checkpoint file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder / CONFIG_FILE} is missing: not a cals-train run folder")
    return read_json(folder / CONFIG_FILE)
