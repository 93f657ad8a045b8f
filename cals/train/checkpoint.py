"""Checkpoints that survive ``kill -9``: written to temp names and renamed, newest last.

A run folder holds ``config.json`` (task name, task config, TrainConfig, shard format version),
and per checkpoint ``ckpt-<step>.safetensors`` (model weights: what inference loads) plus
``ckpt-<step>.state.pt`` (optimizer, scheduler, step, RNG state: what resume loads), and
``latest.json`` naming the newest complete pair. Only the last ``keep`` pairs are kept.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cals.atomic import atomic_write

CONFIG_FILE = "config.json"
LATEST_FILE = "latest.json"


def _atomic(path: Path, write) -> None:
    with atomic_write(path) as tmp:
        write(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Write the weights (safetensors) and the resume state, then point latest.json at them."""
    out = Path(out)
    stem = f"ckpt-{step:08d}"
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}
    _atomic(out / f"{stem}.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"step": str(step)}))
    _atomic(out / f"{stem}.state.pt", lambda tmp: torch.save({**state, "step": step, "rng": rng_state()}, tmp))
    write_json(out / LATEST_FILE, {"step": step, "weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"})
    for old in sorted(out.glob("ckpt-*.safetensors"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)
    return out / f"{stem}.safetensors"


def latest(out: Path) -> Optional[dict[str, Any]]:
    """The newest complete checkpoint of a run folder (None when there is none)."""
    pointer = Path(out) / LATEST_FILE
    if not pointer.is_file():
        return None
    info = read_json(pointer)
    if not (Path(out) / info["weights"]).is_file() or not (Path(out) / info["state"]).is_file():
        raise FileNotFoundError(f"{pointer} names {info['weights']} / {info['state']}, which are missing")
    return info


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a checkpoint file, or from a run folder's newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        info = latest(path)
        if info is None:
            raise FileNotFoundError(f"{path} holds no checkpoint ({LATEST_FILE} is missing)")
        path = path / info["weights"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return load_file(str(path))


def run_config(path: str | Path) -> dict[str, Any]:
    """config.json of a run folder (or of the folder holding a checkpoint file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder / CONFIG_FILE} is missing: not a cals-train run folder")
    return read_json(folder / CONFIG_FILE)
