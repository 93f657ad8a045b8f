"""The A2L pre-training task: masked lip-unit prediction (runs in :func:`cals.train.loop.run`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cals.losses import masked_unit_loss
from cals.models.a2l import A2LConfig, AudioToLip, span_mask
from cals.stream import AugmentConfig
from cals.train.config import TrainConfig
from cals.train.guard import SKIPPED_METRIC, step_if_finite


def lip_unit_spec(shards: Any, split: str = "train") -> dict[str, Any]:
    """``json.lip_units`` of the first sample (kind, dim, digest); raises if the shards have none."""
    from cals.data import iter_samples

    for sample in iter_samples(shards, split=split, frames=False):
        units = sample.meta.get("lip_units")
        if not units:
            raise ValueError(f"{shards} has no lip units: run `cals-prep units {shards} --model ...` first")
        return units
    raise ValueError(f"{shards} has no {split} samples")


@dataclass
class A2LTask:
    """Masked prediction of lip units from audio (the paper's A2L pre-training)."""

    config: A2LConfig
    lip_kind: Optional[str] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mean_unit: Optional[np.ndarray] = None  # the training-mean baseline (computed in setup)
    name: str = "a2l"

    def task_config(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "lip_kind": self.lip_kind}

    def stream_overrides(self) -> dict[str, Any]:
        return {"frames": False, "lip_units": True, "lip_dim": self.config.unit_dim, "lip_kind": self.lip_kind,
                "augment": self.augment}

    def setup(self, device: torch.device, train: TrainConfig, distributed: bool) -> None:
        from cals.stream import mean_lip_unit

        self.device = device
        self.train = train
        self.model = AudioToLip(self.config).to(device)
        self.module = self.model
        if distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=train.lr)
        self.rng = random.Random(train.seed)
        mean = mean_lip_unit(train.shards, train.train_split)
        self.mean_unit = torch.from_numpy(mean if mean is not None else np.zeros(self.config.unit_dim, np.float32)).to(device)
        self.autocast = device.type == "cuda" and train.amp

    def masks(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """(B, W) bool span masks inside each sample's real frames."""
        masked = torch.zeros(len(lengths), width, dtype=torch.bool)
        for i, length in enumerate(lengths.tolist()):
            masked[i, :length] = span_mask(length, self.config.mask_span, self.config.mask_ratio, self.rng)
        return masked

    def train_step(self, batch: dict[str, Any], step: int, lr: float) -> dict[str, float]:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mel, lip, real = batch["mel"].to(self.device), batch["lip"].to(self.device), batch["mask"].to(self.device)
        masked = self.masks(batch["lengths"], real.shape[1]).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            predicted = self.model(mel, real, masked)
        loss = masked_unit_loss(predicted.float(), lip, masked)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stepped, grad_norm = step_if_finite(self.optimizer, loss, self.module.parameters(), self.train.grad_clip)
        return {"loss": loss.item(), "grad_norm": grad_norm, SKIPPED_METRIC: float(not stepped)}

    @torch.no_grad()
    def validate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Masked-step MSE (the training loss) and cosine similarity to the true units, next to
        the baseline that predicts the training-mean unit everywhere. Masks are drawn from a fixed
        seed, so every validation scores the same frames."""
        self.model.eval()
        rng_state, self.rng = self.rng, random.Random(12345)
        totals = {"mse": 0.0, "cosine": 0.0, "baseline_mse": 0.0, "baseline_cosine": 0.0}
        frames = 0
        for batch in batches:
            mel, lip, real = batch["mel"].to(self.device), batch["lip"].to(self.device), batch["mask"].to(self.device)
            masked = self.masks(batch["lengths"], real.shape[1]).to(self.device)
            predicted = self.module(mel, real, masked).float()
            baseline = self.mean_unit.expand_as(lip)
            count = int(masked.sum())
            totals["mse"] += masked_unit_loss(predicted, lip, masked).item() * count
            totals["baseline_mse"] += masked_unit_loss(baseline, lip, masked).item() * count
            totals["cosine"] += F.cosine_similarity(predicted, lip, dim=-1)[masked].sum().item()
            totals["baseline_cosine"] += F.cosine_similarity(baseline, lip, dim=-1)[masked].sum().item()
            frames += count
        self.rng = rng_state
        return {name: value / max(frames, 1) for name, value in totals.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "mask_rng": self.rng.getstate()}

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.module.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.setstate(state["mask_rng"])
