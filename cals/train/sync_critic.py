"""The sync-critic pre-training task (``cals-train syncnet``; runs in :func:`cals.train.loop.run`).

Each training sample is a window of ``W`` frames and its ``4W`` mel rows. The critic embeds all
``W - t_s + 1`` video and audio windows of it in one pass, and every window position whose
candidates at offsets ``-K .. +K`` all lie inside the sample is an anchor of the loss
(:mod:`cals.losses`). ``W = t_s + 2K`` (the CLI default) gives one anchor per sample; a longer
window gives ``W - t_s + 1 - 2K`` anchors for the price of one decode, which is much cheaper per
anchor (the candidates of neighbouring anchors overlap).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch

from cals.losses import multiway_chance_loss, multiway_matching_loss, sync_bce_loss
from cals.models.sync_critic import TASK_NAME, SyncCritic, SyncCriticConfig
from cals.train.config import TrainConfig
from cals.train.guard import SKIPPED_METRIC, restore_buffers, snapshot_buffers, step_if_finite

LOSSES = ("multiway", "bce")
#: Seed of the negative offsets drawn during validation (the same pairs every time).
VALIDATION_SEED = 12345


@dataclass(frozen=True)
class SyncLossConfig:
    """How the critic is trained.

    Attributes:
        offsets: K, candidates at offsets ``-K .. +K`` frames (2K + 1 = 15 for K = 7).
        loss: "multiway" (softmax over the candidates, both directions) or "bce" (Wav2Lip).
        temperature: softmax temperature of the multi-way loss (fixed, not learned).
    """

    offsets: int = 7
    loss: str = "multiway"
    temperature: float = 0.07

    def __post_init__(self) -> None:
        if self.offsets < 1:
            raise ValueError(f"offsets must be >= 1, got {self.offsets}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def min_window(model: SyncCriticConfig, loss: SyncLossConfig) -> int:
    """Shortest training window with one anchor: ``t_s + 2K`` frames (19 for t_s 5, K 7)."""
    return model.t_s + 2 * loss.offsets


def valid_windows(lengths: torch.Tensor, count: int, t_s: int) -> torch.Tensor:
    """``(B, count)`` bool: window n of sample b is real (its t_s frames are not padding)."""
    return torch.arange(count)[None, :] < (lengths[:, None] - t_s + 1)


@dataclass
class SyncCriticTask:
    """Pre-train the sync critic (F_v, F_a) with the multi-way matching or the BCE loss."""

    model_config: SyncCriticConfig = field(default_factory=SyncCriticConfig)
    loss_config: SyncLossConfig = field(default_factory=SyncLossConfig)
    name: str = TASK_NAME

    def task_config(self) -> dict[str, Any]:
        return {"model": self.model_config.to_dict(), "loss": self.loss_config.to_dict()}

    def stream_overrides(self) -> dict[str, Any]:
        return {"frames": True, "lip_units": False}

    def setup(self, device: torch.device, train: TrainConfig, distributed: bool) -> None:
        shortest = min_window(self.model_config, self.loss_config)
        if train.window is not None and train.window < shortest:
            raise ValueError(f"window {train.window} is too short: offsets ±{self.loss_config.offsets} with "
                             f"t_s {self.model_config.t_s} need at least {shortest} frames")
        self.device = device
        self.train = train
        self.distributed = distributed
        self.module = SyncCritic(self.model_config).to(device)
        self.model = self.module
        if distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=train.lr)
        self.generator = torch.Generator().manual_seed(train.seed)
        self.autocast = device.type == "cuda" and train.amp

    def _loss(self, model: torch.nn.Module, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Embed the batch's windows and apply the configured loss."""
        frames = batch["frames"].to(self.device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255.0)
        mel = batch["mel"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            video, audio = model(frames, mel)
        video, audio = video.float(), audio.float()
        valid = valid_windows(batch["lengths"], video.shape[1], self.model_config.t_s).to(self.device)
        loss = self.loss_config
        if loss.loss == "bce":
            value, metrics = sync_bce_loss(video, audio, loss.offsets, valid, generator)
            multiway, _ = multiway_matching_loss(video.detach(), audio.detach(), loss.offsets, loss.temperature, valid)
            return value, {**metrics, "multiway_loss": multiway}
        value, metrics = multiway_matching_loss(video, audio, loss.offsets, loss.temperature, valid)
        return value, {**metrics, "multiway_loss": value.detach()}

    def train_step(self, batch: dict[str, Any], step: int, lr: float) -> dict[str, float]:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        statistics = snapshot_buffers(self.module)  # BatchNorm's, put back if the step is skipped
        loss, metrics = self._loss(self.model, batch, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stepped, grad_norm = step_if_finite(self.optimizer, loss, self.module.parameters(), self.train.grad_clip)
        if not stepped:
            restore_buffers(self.module, statistics)
        if self.distributed:
            self._average_statistics()
        return {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}, "grad_norm": grad_norm, SKIPPED_METRIC: float(not stepped)}

    @torch.no_grad()
    def _average_statistics(self) -> None:
        """Average the BatchNorm running statistics over the ranks. DDP keeps parameters in step
        but each rank updates its running statistics from its own batch, so the ranks' saved
        weights would differ; the mean over ranks is also the better estimate."""
        buffers = [b for b in self.module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        torch.distributed.all_reduce(flat)
        flat /= torch.distributed.get_world_size()
        offset = 0
        for buffer in buffers:
            buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()

    @torch.no_grad()
    def validate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Loss and top-1 offset accuracy over the val batches (weighted by anchors), next to
        chance: accuracy ``1/(2K + 1)``, multi-way loss ``log(2K + 1)``. BCE negatives come from
        a fixed seed, so every validation scores the same pairs."""
        self.module.eval()
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        totals: dict[str, float] = {}
        anchors = 0.0
        for batch in batches:
            loss, metrics = self._loss(self.module, batch, generator)
            count = float(metrics["anchors"])
            for name, value in {"loss": loss, **metrics}.items():
                if name != "anchors":
                    totals[name] = totals.get(name, 0.0) + float(value) * count
            anchors += count
        result = {name: value / max(anchors, 1.0) for name, value in totals.items()}
        result["anchors"] = anchors
        result["chance_accuracy"] = 1.0 / (2 * self.loss_config.offsets + 1)
        result["chance_loss"] = multiway_chance_loss(self.loss_config.offsets)
        return result

    def weights(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.module.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
