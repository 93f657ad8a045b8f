"""Checking that a state dict fits a model before loading it, with a message that lists what
does not fit (used by every loader: SyncNet v2 files, sync-critic runs, CALS runs)."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str,
                     optional_suffix: Optional[str] = None) -> None:
    """Raise ValueError listing every key of ``state`` that does not fit ``model``: missing,
    unexpected, wrong shape. Keys ending in ``optional_suffix`` may be missing (e.g. SyncNet v2
    files saved before PyTorch 0.4.1 lack ``num_batches_tracked``)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not (optional_suffix and k.endswith(optional_suffix))]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {', '.join(unexpected)}")
    if misshaped:
        parts.append(f"wrong shapes: {', '.join(misshaped)}")
    if parts:
        raise ValueError(f"{source} does not match {what} ({'; '.join(parts)})")
