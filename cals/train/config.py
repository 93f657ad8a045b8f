"""The flags every ``cals-train`` command shares, as one flat typed dataclass (saved in every
checkpoint's config.json). Task-specific settings live in each task's own dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from cals.settings import from_checked_dict
from cals.stream import StreamConfig


@dataclass
class TrainConfig:
    """Common training settings.

    Attributes:
        shards: dataset folder written by cals-prep (splits found from its file names), a brace
            pattern or a list of shard paths/URLs.
        out: run folder: config.json, checkpoints, metrics.jsonl, TensorBoard events.
        steps: optimizer steps to run (then a final checkpoint).
        batch_size: windows per step (per process under DDP).
        lr: peak learning rate (Adam).
        warmup_steps: linear warm-up from 0 to ``lr`` over this many steps.
        grad_clip: clip the gradient norm to this (0: off).
        resume: continue from the last checkpoint in ``out`` (same step, LR, RNG state, data).
        device: "cpu", "cuda", "cuda:1"...; None picks CUDA when available.
        seed: seed of initialisation, data order, windows and augmentation.
        window: frames per training window (None: the task's default).
        num_workers: DataLoader worker processes per training process.
        log_every: steps between log lines / metric records.
        val_every: steps between validations (0: only at the end).
        val_batches: batches per validation.
        ckpt_every: steps between checkpoints; also the length of a data segment (the stream is
            re-seeded at every checkpoint, so a resumed run sees the same batches).
        keep: checkpoints kept (older ones are deleted).
        amp: mixed precision (bfloat16 autocast) on CUDA; ignored on CPU.
        train_split, val_split: split names to train and validate on.
        log_keys: append every batch's sample keys and window starts to ``keys-rank<R>.txt``
            (a data audit: which rank trained on what).
        max_nonfinite_steps: stop the run (one-line error) after this many steps in a row whose
            loss or gradient was NaN/Inf (each is skipped: no optimizer update, counted as
            ``skipped_steps``).
        on_bad_sample: a corrupt sample or unreadable shard is skipped with a warning and counted
            (``data_errors`` in metrics.jsonl), or stops the run with one line ("fail"); see
            :class:`cals.stream.StreamConfig`.
    """

    shards: Any = None
    out: str = "runs/run"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    warmup_steps: int = 0
    grad_clip: float = 1.0
    resume: bool = False
    device: Optional[str] = None
    seed: int = 0
    window: Optional[int] = None
    num_workers: int = 0
    log_every: int = 10
    val_every: int = 0
    val_batches: int = 4
    ckpt_every: int = 500
    keep: int = 3
    amp: bool = True
    train_split: str = "train"
    val_split: str = "val"
    log_keys: bool = False
    max_nonfinite_steps: int = 20
    on_bad_sample: str = StreamConfig.on_bad_sample

    def __post_init__(self) -> None:
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shards"] = str(self.shards) if not isinstance(self.shards, (list, tuple)) else list(self.shards)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return from_checked_dict(cls, data, "training")
