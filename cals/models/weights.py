"""Reading a weights file as a plain state dict and checking that it fits a model before loading
it, with a message that lists what does not fit (used by every loader: SyncNet v2 and S3FD files,
sync-critic runs, CALS runs)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn


def read_state_dict(path: Path, missing: str, refused_note: str = "", advice: str = "") -> Mapping[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` of a file that must hold a plain state dict.

    Raises:
        FileNotFoundError: no such file (message ``missing``: where to get it).
        ValueError: torch.load refused the file, or it holds something else than a mapping
            (``refused_note`` is added inside the refusal's parentheses, ``advice`` after both).
    """
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path} is not a readable PyTorch state dict: torch.load(weights_only=True) refused it "
                         f"({type(error).__name__}{refused_note}){advice}") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict (name → tensor){advice}")
    return state


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], optional_suffix: Optional[str] = None
                        ) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, misshaped)`` keys of ``state`` against ``model``; keys ending in
    ``optional_suffix`` may be missing; a misshaped entry reads ``"key (shape) (expected (shape))"``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not (optional_suffix and k.endswith(optional_suffix))]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    ]
    return missing, unexpected, misshaped


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str,
                     optional_suffix: Optional[str] = None) -> None:
    """Raise ValueError listing every key of ``state`` that does not fit ``model``: missing,
    unexpected, wrong shape. Keys ending in ``optional_suffix`` may be missing (e.g. SyncNet v2
    files saved before PyTorch 0.4.1 lack ``num_batches_tracked``)."""
    missing, unexpected, misshaped = state_dict_mismatch(model, state, optional_suffix)
    parts = []
    if missing:
        parts.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {', '.join(unexpected)}")
    if misshaped:
        parts.append(f"wrong shapes: {', '.join(misshaped)}")
    if parts:
        raise ValueError(f"{source} does not match {what} ({'; '.join(parts)})")
