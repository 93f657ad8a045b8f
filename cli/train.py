"""``cals-train``: stream shards and train the sync critic, the Audio-to-Lip module, and CALS.

Every command shares the flags of :class:`cals.train.config.TrainConfig` (added by
:func:`train_command`); each declares only its own model flags. Runs write to ``--out``:
config.json, safetensors checkpoints, metrics.jsonl and TensorBoard events; ``--resume``
continues exactly. Under ``torchrun --nproc-per-node N -m cli.train ...`` the same command runs
with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import inspect
import os
import typing
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.callback()
def _app() -> None:
    """Train lip-sync models on cals-prep shards."""


def _common_options(
    shards: Path = typer.Option(..., "--shards", help="Dataset folder written by cals-prep (its splits are found by name), or a brace pattern."),
    out: Path = typer.Option(..., "--out", help="Run folder (config.json, checkpoints, metrics.jsonl, tb/)."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Optimizer steps to run, then a final checkpoint."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Windows per step (per process under DDP)."),
    lr: float = typer.Option(1e-4, "--lr", min=0.0, help="Peak learning rate (Adam)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Linear learning-rate warm-up, steps."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", min=0.0, help="Clip the gradient norm to this (0: off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out (same step, LR, RNG, data)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1... [default: CUDA when available]."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order, windows, augmentation."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader worker processes per training process."),
    log_every: int = typer.Option(10, "--log-every", min=1, help="Steps between metric records."),
    val_every: int = typer.Option(0, "--val-every", min=0, help="Steps between validations on the val split (0: at the end only)."),
    val_batches: int = typer.Option(4, "--val-batches", min=1, help="Batches per validation."),
    ckpt_every: int = typer.Option(500, "--ckpt-every", min=1, help="Steps between checkpoints (also the data-segment length for exact resume)."),
    keep: int = typer.Option(3, "--keep", min=1, help="Checkpoints kept."),
    log_keys: bool = typer.Option(False, "--log-keys", help="Record every batch's sample keys per rank in keys-rank<R>.txt (data audit)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Template: its parameters are the flags every training command shares."""


def keyword_parameters(function: Callable) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(function)
    return [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(function).parameters.values()]


COMMON_PARAMETERS = keyword_parameters(_common_options)


def train_command(name: str) -> Callable:
    """Register a training command: the decorated function takes its own flags (and, if it
    declares it, ``dataset``: the --shards value) and returns ``(task, overrides)`` where
    overrides are TrainConfig fields it sets (e.g. window)."""

    def decorator(build: Callable) -> Callable:
        common_names = {p.name for p in COMMON_PARAMETERS}
        own = [p for p in keyword_parameters(build) if p.name != "dataset"]
        wants_dataset = len(own) < len(inspect.signature(build).parameters)

        def command(**options) -> None:
            from cals.stream import ShardMismatch
            from cals.train.config import TrainConfig
            from cals.train.loop import run

            common = {k: options.pop(k) for k in list(options) if k in common_names}
            quiet = common.pop("quiet")
            if not Path(common["shards"]).exists() and "{" not in str(common["shards"]):
                fail(f"--shards {common['shards']} does not exist")
            try:
                if wants_dataset:
                    options["dataset"] = str(common["shards"])
                task, overrides = build(**options)
                train = TrainConfig(**{**common, "shards": str(common["shards"]), "out": str(common["out"]), **overrides})
                run(task, train, show_progress=not quiet)
            except (FileNotFoundError, FileExistsError, ValueError, ShardMismatch) as error:
                fail(str(error))

        command.__signature__ = inspect.Signature([*own, *COMMON_PARAMETERS])
        command.__doc__ = build.__doc__
        command.__name__ = name
        app.command(name)(command)
        return build

    return decorator


@train_command("a2l")
def a2l(
    layers: int = typer.Option(6, "--layers", min=1, help="Transformer encoder layers."),
    d_model: int = typer.Option(512, "--d-model", min=8, help="Hidden size."),
    ffn: int = typer.Option(2048, "--ffn", min=8, help="Feed-forward size."),
    heads: int = typer.Option(8, "--heads", min=1, help="Attention heads (must divide --d-model)."),
    dropout: float = typer.Option(0.1, "--dropout", min=0.0, max=1.0, help="Dropout rate."),
    mask_span: int = typer.Option(5, "--mask-span", min=1, help="Frames per masked span (t_m)."),
    mask_ratio: float = typer.Option(0.5, "--mask-ratio", min=0.0, max=1.0, help="Share of frames masked (p)."),
    window: Optional[int] = typer.Option(None, "--window", min=5, help="Frames per training window (default: the whole utterance, at most 250 frames = 10 s)."),
    noise_dir: Optional[Path] = typer.Option(None, "--noise-dir", help="Folder of noise .wav files (e.g. DEMAND) mixed into the audio."),
    snr_min: float = typer.Option(0.0, "--snr-min", help="Lowest noise SNR, dB."),
    snr_max: float = typer.Option(20.0, "--snr-max", help="Highest noise SNR, dB."),
    noise_prob: float = typer.Option(0.5, "--noise-prob", min=0.0, max=1.0, help="Share of windows that get noise."),
    time_masks: int = typer.Option(0, "--time-masks", min=0, help="SpecAugment time masks per window (each at most 10 mel rows)."),
    freq_masks: int = typer.Option(0, "--freq-masks", min=0, help="SpecAugment frequency masks per window (each at most 20 mel bins)."),
    dataset: str = "",
):
    """Pre-train the Audio-to-Lip transformer: predict masked lip units from audio."""
    from cals.models.a2l import A2LConfig
    from cals.stream import AugmentConfig
    from cals.train.a2l import A2LTask, lip_unit_spec

    noise_files: tuple[str, ...] = ()
    if noise_dir is not None:
        noise_files = tuple(sorted(str(p) for p in noise_dir.rglob("*.wav")))
        if not noise_files:
            raise FileNotFoundError(f"--noise-dir {noise_dir} holds no .wav files")
    spec = lip_unit_spec(dataset, "train")
    config = A2LConfig(unit_dim=int(spec["dim"]), layers=layers, d_model=d_model, ffn=ffn, heads=heads, dropout=dropout,
                       mask_span=mask_span, mask_ratio=mask_ratio)
    augment = AugmentConfig(noise_files=noise_files, snr_db=(snr_min, snr_max), noise_prob=noise_prob,
                            time_masks=time_masks, freq_masks=freq_masks)
    return A2LTask(config, lip_kind=spec.get("kind"), augment=augment), {"window": window}


def main() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    app()


if __name__ == "__main__":
    main()
