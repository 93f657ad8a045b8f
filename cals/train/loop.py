"""The training loop every ``cals-train`` command runs. It reads top to bottom:

    setup (device, DDP, seed) → task → resume? → for each data segment: for each batch:
        task.train_step → log → validate? → checkpoint at the segment's end → final checkpoint

A *task* (sync critic, A2L, CALS) owns its models, optimizers and losses (see :class:`Task`);
the loop owns data, time, logs, validation, checkpoints and resume, so all trainers share one
implementation of the parts people must trust.

Exact resume: the data stream is re-seeded at every checkpoint. Steps
``[k * ckpt_every, (k + 1) * ckpt_every)`` read stream epoch ``k``, so a run resumed from the
checkpoint at step ``k * ckpt_every`` reads the same batches an uninterrupted run would, with
the same weights, optimizer state, learning rate and RNG state. Resume takes the newest
checkpoint whose digests hold (a damaged one is reported and skipped,
:func:`cals.train.checkpoint.resume_point`), removes the temp files of an interrupted write and
cuts ``metrics.jsonl`` (and ``keys-rank*.txt``) back to the checkpoint's step, so no step is
logged twice.

Faults: a step with a NaN/Inf loss or gradient is skipped by the task (:mod:`cals.train.guard`)
and counted (``skipped_steps`` in metrics.jsonl and the progress line, saved in checkpoints);
``max_nonfinite_steps`` of them in a row stop the run (:class:`NonFiniteError`). The run folder
is created only once the task is set up (bad settings leave nothing behind), and a run that
fails before its first step removes the folder it created.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol

import numpy as np
import torch

from cals.atomic import TEMP_GLOB, atomic_write
from cals.shard_format import FORMAT_VERSION
from cals.stream import StreamConfig, make_loader
from cals.train.checkpoint import CONFIG_FILE, kept_steps, read_json, resume_point, save_checkpoint, set_rng_state, write_json
from cals.train.config import TrainConfig
from cals.train.guard import SKIPPED_METRIC, NonFiniteError

#: Per-run logs whose lines start with a step (the JSON "step" field, or the first word).
METRICS_FILE = "metrics.jsonl"
KEYS_FILE = "keys-rank{rank}.txt"


class Task(Protocol):
    """What the loop needs from a trainer.

    ``name``: e.g. "sync_critic"; ``config``: the task's own settings (dataclass with to_dict);
    ``stream``: the StreamConfig fields the task needs (window, lip units, frames...).
    """

    name: str

    def task_config(self) -> dict[str, Any]: ...

    def stream_overrides(self) -> dict[str, Any]: ...

    def setup(self, device: torch.device, train: TrainConfig, distributed: bool) -> None: ...

    def train_step(self, batch: dict[str, Any], step: int, lr: float) -> dict[str, float]: ...

    def validate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]: ...

    def weights(self) -> dict[str, torch.Tensor]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None: ...


def resolve_device(name: Optional[str]) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set): gloo on CPU,
    nccl on CUDA. Returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learning_rate(step: int, train: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then constant ``lr``."""
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    return train.lr


class Logger:
    """metrics.jsonl + TensorBoard events + a rich progress line; rank 0 only."""

    def __init__(self, out: Path, total_steps: int, start_step: int, enabled: bool, show: bool) -> None:
        """Append to ``out``'s logs; TensorBoard drops its events after ``start_step`` (resume)."""
        self.enabled = enabled
        self.jsonl = None
        self.board = None
        self.progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = open(out / METRICS_FILE, "a", encoding="utf-8")
        self.board = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
        self.progress = Progress(
            TextColumn("[bold]step"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), console=Console(stderr=True), disable=not show,
        )
        self.progress.start()
        self.bar = self.progress.add_task("train", total=total_steps, completed=start_step, status="")

    def record(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        plain = {name: value if math.isfinite(value) else None for name, value in metrics.items()}  # strict JSON: NaN → null
        self.jsonl.write(json.dumps({"step": step, "split": split, "time": time.time(), **plain}, allow_nan=False) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.board.add_scalar(f"{split}/{name}", value, step)

    def status(self, step: int, text: str) -> None:
        if self.enabled:
            self.progress.update(self.bar, completed=step, status=text)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.enabled:
            self.board.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
            self.jsonl.close()
            self.board.close()


def _check_resume_config(out: Path, task: Task, train: TrainConfig) -> None:
    saved = read_json(out / CONFIG_FILE)
    if saved.get("task") != task.name or saved.get("task_config") != task.task_config():
        raise ValueError(
            f"{out} holds a {saved.get('task')} run with settings {saved.get('task_config')}; "
            f"this run is {task.name} with {task.task_config()}. Use another --out, or the same settings."
        )
    if saved.get("train", {}).get("ckpt_every") != train.ckpt_every:
        kept = saved["train"]["ckpt_every"]
        raise ValueError(f"{out} was trained with --ckpt-every {kept} (the data-segment length), this run asks for "
                         f"{train.ckpt_every}: pass --ckpt-every {kept} to continue it exactly, or use another --out")


def warn(message: str) -> None:
    """One warning line on stderr (rank 0's messages about the run folder)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def remove_temp_files(out: Path) -> None:
    """Delete the temp files an interrupted atomic write left in ``out`` (``.*.tmp-*``)."""
    for tmp in sorted(out.glob(TEMP_GLOB)):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            warn(f"removed {tmp}, left by an interrupted write")


def truncate_log(path: Path, step: int) -> None:
    """Keep the lines of a step-keyed log (``metrics.jsonl``, ``keys-rank*.txt``) up to the
    resumed checkpoint's ``step``: metrics recorded at steps <= step, batch keys of steps < step.
    Torn lines (a kill mid-write) are dropped. Rewritten atomically; nothing to do: untouched."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and _logged_step(line, path) is not None
            and _logged_step(line, path) <= step - (path.suffix == ".txt")]
    if kept != lines:
        with atomic_write(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")


def _logged_step(line: str, path: Path) -> Optional[int]:
    try:
        value = json.loads(line)["step"] if path.suffix == ".jsonl" else line.split()[0]
        return int(value)
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def run(task: Task, train: TrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train ``task`` for ``train.steps`` optimizer steps. Returns the last metrics.

    Raises:
        FileExistsError: ``out`` holds checkpoints and ``resume`` is off.
        CheckpointError: resume found checkpoints but none usable, or a refused state file.
        NonFiniteError: too many non-finite steps in a row, or non-finite weights at a checkpoint.
    """
    device = resolve_device(train.device)
    rank, world = setup_distributed(device)
    main_process = rank == 0
    out = Path(train.out)
    if kept_steps(out) and not train.resume:
        raise FileExistsError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    if train.resume and (out / CONFIG_FILE).is_file():
        _check_resume_config(out, task, train)
    seed_everything(train.seed + rank)
    task.setup(device, train, distributed=world > 1)

    step, skipped_steps = 0, 0
    checkpoint = resume_point(out, warn if main_process else lambda message: None) if train.resume else None
    if checkpoint:
        weights, state = checkpoint
        task.load_state(weights, state)
        set_rng_state(state["rng"])
        step, skipped_steps = state["step"], state.get("skipped_steps", 0)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    truncate_log(out / KEYS_FILE.format(rank=rank), step)
    if main_process:
        remove_temp_files(out)
        truncate_log(out / METRICS_FILE, step)
        write_json(out / CONFIG_FILE, {"task": task.name, "task_config": task.task_config(), "train": train.to_dict(), "format_version": FORMAT_VERSION})
    try:
        return _train(task, train, out, rank, world, device, step, skipped_steps, show_progress)
    except BaseException:
        if main_process and created and not kept_steps(out) and not _logged(out):
            shutil.rmtree(out, ignore_errors=True)  # failed before any step: leave no empty run folder
        raise


def _logged(out: Path) -> bool:
    """Whether ``out`` holds a record of any training step."""
    return (out / METRICS_FILE).is_file() and (out / METRICS_FILE).stat().st_size > 0


def _train(task: Task, train: TrainConfig, out: Path, rank: int, world: int, device: torch.device, step: int,
           skipped_steps: int, show_progress: bool) -> dict[str, Any]:
    """The loop proper, from ``step`` (a fresh run: 0) to ``train.steps``."""
    main_process = rank == 0
    stream = StreamConfig(shards=train.shards, split=train.train_split, batch_size=train.batch_size, window=train.window,
                          num_workers=train.num_workers, seed=train.seed, on_bad_sample=train.on_bad_sample, **task.stream_overrides())
    logger = Logger(out, train.steps, step, enabled=main_process, show=show_progress)
    if hasattr(task, "logger"):  # optional: a task that declares a ``logger`` attribute gets it (images)
        task.logger = logger
    metrics: dict[str, float] = {}
    in_a_row = 0  # consecutive skipped (non-finite) steps
    data_errors = 0  # samples the stream skipped (bad data) in this process
    try:
        while step < train.steps:
            segment = step // train.ckpt_every
            segment_end = min((segment + 1) * train.ckpt_every, train.steps)
            skip = step - segment * train.ckpt_every  # > 0 only when resuming from a final checkpoint
            loader = make_loader(replace(stream, epoch=segment), batches_per_epoch=segment_end - segment * train.ckpt_every, world_size=world)
            waited, started = 0.0, time.perf_counter()
            batches = iter(loader)
            for _ in range(skip):
                next(batches)
            while step < segment_end:
                fetch = time.perf_counter()
                batch = next(batches)
                waited += time.perf_counter() - fetch
                data_errors += batch.pop("data_errors", 0)
                if train.log_keys:
                    with open(out / KEYS_FILE.format(rank=rank), "a", encoding="utf-8") as keys:
                        keys.writelines(f"{step} {key} {start}\n" for key, start in zip(batch["keys"], batch["starts"]))
                lr = learning_rate(step, train)
                metrics = task.train_step(batch, step, lr)
                skipped = bool(metrics.pop(SKIPPED_METRIC, 0.0))
                skipped_steps += skipped
                in_a_row = in_a_row + 1 if skipped else 0
                step += 1
                stop = in_a_row >= train.max_nonfinite_steps
                if step % train.log_every == 0 or step == segment_end or stop:
                    elapsed = time.perf_counter() - started
                    rate = {"samples_per_s": len(batch["keys"]) * world * (step - segment * train.ckpt_every - skip) / max(elapsed, 1e-9),
                            "data_wait": waited / max(elapsed, 1e-9), "lr": lr, "skipped_steps": skipped_steps, "data_errors": data_errors}
                    logger.record(step, "train", {**metrics, **rate})
                    logger.status(step, " ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:3]) + f" | {rate['samples_per_s']:.1f} samples/s, data wait {100 * rate['data_wait']:.0f}%"
                                  + (f", skipped {skipped_steps}" if skipped_steps else "") + (f", data errors {data_errors}" if data_errors else ""))
                if stop:
                    newest = kept_steps(out)
                    raise NonFiniteError(f"steps {step - in_a_row + 1}-{step}: {in_a_row} steps in a row had a NaN/Inf loss or gradient "
                                         f"(each skipped): run stopped; newest checkpoint: {f'step {newest[0]}' if newest else 'none'} "
                                         f"(finite weights). Check the data (cals-prep verify) or lower --lr")
                if train.val_every and step % train.val_every == 0 or step == train.steps:
                    validation = validate(task, train, stream)
                    if validation:
                        logger.record(step, "val", validation)
                        metrics = {**metrics, **{f"val_{k}": v for k, v in validation.items()}}
            if main_process:
                save_checkpoint(out, step, task.weights(), {**task.state(), "skipped_steps": skipped_steps}, train.keep)
            if world > 1:
                torch.distributed.barrier()
        if world > 1:
            checksums = agree_on_weights(task, device, world)
            logger.record(step, "ddp", {"weight_checksum_rank" + str(r): c for r, c in enumerate(checksums)})
    finally:
        logger.close()
    return metrics


def agree_on_weights(task: Task, device: torch.device, world: int) -> list[float]:
    """All-gather a checksum of every rank's weights; raise if DDP let them drift apart."""
    total = sum(float(t.double().abs().sum()) + float(t.double().sum()) for t in task.weights().values() if t.is_floating_point())
    local = torch.tensor([total], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(local) for _ in range(world)]
    torch.distributed.all_gather(gathered, local)
    checksums = [float(g.item()) for g in gathered]
    if max(checksums) - min(checksums) > 1e-6 * max(1.0, abs(checksums[0])):
        raise RuntimeError(f"DDP ranks ended with different weights (checksums {checksums})")
    return checksums


def validate(task: Task, train: TrainConfig, stream: StreamConfig) -> dict[str, float]:
    """``val_batches`` fixed batches of the val split (the same every time); {} without one."""
    from cals.data import shard_paths

    try:
        shard_paths(train.shards, train.val_split)
    except FileNotFoundError:
        return {}
    config = replace(stream, split=train.val_split, resampled=False, shuffle_buffer=0, num_workers=0, epoch=0,
                     seed=train.seed, augment=type(stream.augment)())
    batches = []
    for batch in make_loader(config):
        batches.append(batch)
        if len(batches) >= train.val_batches:
            break
    return task.validate(batches) if batches else {}
