"""``cals-train``: stream shards and train the sync critic, the Audio-to-Lip module, and CALS.

Every command shares the flags of :class:`cals.train.config.TrainConfig` (added by
:func:`train_command`; ``--config run.json`` sets any of its fields, flags given override it);
each declares only its own model flags. Every default is read from the settings dataclass the
flag fills (``TrainConfig``, ``A2LConfig``, ``CalsLossConfig``, ...), never retyped. Runs write to ``--out``:
config.json, safetensors checkpoints, metrics.jsonl and TensorBoard events; ``--resume``
continues exactly. Under ``torchrun --nproc-per-node N -m cli.train ...`` the same command runs
with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from cals.constants import LIP_WINDOW_FRAMES, REFERENCE_MARGIN_FRAMES
from cals.models.a2l import A2LConfig
from cals.models.cals_model import CalsConfig
from cals.models.discriminator import DiscriminatorConfig
from cals.models.l2f import LipToFaceConfig
from cals.models.sync_critic import SyncCriticConfig
from cals.models.tiny import TINY_CRITIC, TINY_DISCRIMINATOR, TINY_WINDOW, tiny_a2l_config, tiny_cals_config
from cals.stream import PAPER_AUGMENT, REFERENCE_RULES, AugmentConfig, StreamConfig, noise_files_in
from cals.train.cals import A2L_CONTEXTS, LIP_TEACHERS, CalsLossConfig, CalsTask
from cals.train.config import TrainConfig
from cals.train.sync_critic import SyncLossConfig
from cli.common import err, fail, keyword_parameters, new_app, one_line, register_command, run_app
from pipeline.train_recipe import STAGES, RecipeConfig

#: Help of every --tiny flag.
TINY_HELP = ("the small sizes of cals/models/tiny.py instead of the size flags: a first try on a CPU "
             "(a few seconds per step on 2 cores; the paper's sizes take ~23 s per CALS step at batch 2).")


def _print_checkpoints(out: Path) -> None:
    """The closing line of a training command: where its checkpoints are."""
    from cals.train.checkpoint import latest

    info = latest(out)
    if info is not None:
        err.print(f"checkpoints in {out} (newest: step {info['step']}, {info['weights']})", highlight=False, soft_wrap=True)


def _warn_without_val(train: TrainConfig) -> None:
    """One warning when validation is asked for (--val-every) on a dataset without a val split."""
    from cals.data import shard_paths

    if train.val_every:
        try:
            shard_paths(train.shards, train.val_split)
        except FileNotFoundError as missing:
            err.print(f"warning: --val-every {train.val_every} validates nothing: {missing}", highlight=False, soft_wrap=True)


def _csv(values: tuple[int, ...]) -> str:
    """A tuple default as the comma-separated text its flag takes."""
    return ",".join(str(v) for v in values)


# The augmentation flags of `cals-train a2l`, `cals-train cals` and the recipe; defaults from
# cals.stream.PAPER_AUGMENT (SpecAugment on, as the paper; noise only with --noise-dir).
# The CALS options the recipe shares with `cals-train cals` (defaults: the paper's method).
LIP_TEACHER_OPTION = typer.Option(CalsTask.lip_teacher, "--lip-teacher", help=f"CALS teacher forcing of the lip units: {' or '.join(LIP_TEACHERS)} (mouth: on --teacher-share of the windows the generator reads units a small encoder makes from the target's own lower face, and A2L is pulled to them by --lambda-units; not the paper's, see README 'Audio dependence') [default: none, the paper's].")
RECON_LOWER_WEIGHT_OPTION = typer.Option(CalsLossConfig.recon_lower_weight, "--recon-lower-weight", min=1e-6, help="CALS: weight of the masked rows (the mouth) in L_recon relative to the rows above [default: 1, the paper's plain L1].")
UNIT_NORM_OPTION = typer.Option(LipToFaceConfig.unit_norm, "--unit-norm/--no-unit-norm", help="CALS: layer-normalise the lip units before the generator's lip MLP and use LeakyReLU in it (with raw units its ReLUs died in 60 CPU steps, see README 'Options against the audio-blind shortcut').")
NOISE_DIR_OPTION = typer.Option(None, "--noise-dir", help="Folder of noise .wav files (e.g. DEMAND) mixed into the audio [default: no noise, cals ships no noise corpus].")
SNR_MIN_OPTION = typer.Option(PAPER_AUGMENT.snr_db[0], "--snr-min", help="Lowest noise SNR, dB.")
SNR_MAX_OPTION = typer.Option(PAPER_AUGMENT.snr_db[1], "--snr-max", help="Highest noise SNR, dB.")
NOISE_PROB_OPTION = typer.Option(PAPER_AUGMENT.noise_prob, "--noise-prob", min=0.0, max=1.0, help="Share of windows that get noise (with --noise-dir).")
TIME_MASKS_OPTION = typer.Option(PAPER_AUGMENT.time_masks, "--time-masks", min=0, help=f"SpecAugment time masks per window, each at most {PAPER_AUGMENT.time_mask_rows} mel rows (on by default, as the paper; 0: off).")
FREQ_MASKS_OPTION = typer.Option(PAPER_AUGMENT.freq_masks, "--freq-masks", min=0, help=f"SpecAugment frequency masks per window, each at most {PAPER_AUGMENT.freq_mask_bins} mel bins (on by default, as the paper; 0: off).")


def augment_config(noise_dir: Optional[Path], snr_min: float, snr_max: float, noise_prob: float, time_masks: int,
                   freq_masks: int) -> AugmentConfig:
    """The AugmentConfig of the augmentation flags."""
    return AugmentConfig(noise_files=noise_files_in(noise_dir) if noise_dir is not None else (), snr_db=(snr_min, snr_max),
                         noise_prob=noise_prob, time_masks=time_masks, freq_masks=freq_masks)


app = new_app(__doc__)


@app.callback(invoke_without_command=True)
def _app(
    ctx: typer.Context,
    shards: Optional[Path] = typer.Option(None, "--shards", help="Recipe: the dataset folder written by cals-prep."),
    out: Optional[Path] = typer.Option(None, "--out", help="Recipe: the folder of the stage runs (sync/, a2l/, cals/)."),
    steps_per_stage: int = typer.Option(RecipeConfig.steps_per_stage, "--steps-per-stage", min=1, help="Recipe: optimizer steps of each training stage."),
    batch_size: int = typer.Option(RecipeConfig.batch_size, "--batch-size", min=1, help="Recipe: windows per step."),
    lr: float = typer.Option(RecipeConfig.lr, "--lr", min=0.0, help="Recipe: learning rate (Adam)."),
    device: Optional[str] = typer.Option(None, "--device", help="Recipe: cpu, cuda, cuda:1... [default: CUDA when available]."),
    seed: int = typer.Option(RecipeConfig.seed, "--seed", help="Recipe: seed of every stage."),
    ckpt_every: int = typer.Option(RecipeConfig.ckpt_every, "--ckpt-every", min=1, help="Recipe: steps between checkpoints."),
    lip_model: Optional[Path] = typer.Option(None, "--lip-model", help="Recipe: lip-unit model (e.g. syncnet_v2.model) [default: the recipe's sync critic]."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Recipe: Ray actors adding lip units [default: one per CPU]."),
    keep_units: bool = typer.Option(RecipeConfig.keep_units, "--keep-units", help="Recipe: keep the lip units already in the shards even when another model made them [default: re-extract them from the recipe's critic or --lip-model]."),
    tiny: bool = typer.Option(RecipeConfig.tiny, "--tiny", help=f"Recipe: {TINY_HELP}"),
    quiet: bool = typer.Option(False, "--quiet", help="Recipe: no progress bars."),
    lip_teacher: str = LIP_TEACHER_OPTION,
    recon_lower_weight: float = RECON_LOWER_WEIGHT_OPTION,
    unit_norm: bool = UNIT_NORM_OPTION,
    noise_dir: Optional[Path] = NOISE_DIR_OPTION,
    snr_min: float = SNR_MIN_OPTION,
    snr_max: float = SNR_MAX_OPTION,
    noise_prob: float = NOISE_PROB_OPTION,
    time_masks: int = TIME_MASKS_OPTION,
    freq_masks: int = FREQ_MASKS_OPTION,
) -> None:
    """Train lip-sync models on cals-prep shards.

    With no command, the whole recipe: sync critic → lip units (if missing) → A2L → CALS, in
    --out/{sync,a2l,cals}; re-running the same command skips finished stages and resumes.
    """
    if ctx.invoked_subcommand is not None:
        return
    if shards is None or out is None:
        fail("the whole recipe needs --shards and --out (or name a command: cals-train --help)")
    from cals.stream import ShardMismatch
    from pipeline.train_recipe import run_recipe

    try:
        config = RecipeConfig(steps_per_stage=steps_per_stage, batch_size=batch_size, lr=lr, device=device, seed=seed,
                              ckpt_every=ckpt_every, lip_model=str(lip_model) if lip_model else None, keep_units=keep_units,
                              workers=workers, tiny=tiny, augment=augment_config(noise_dir, snr_min, snr_max, noise_prob, time_masks, freq_masks),
                              lip_teacher=lip_teacher, recon_lower_weight=recon_lower_weight, unit_norm=unit_norm)
        stages = run_recipe(shards, out, config, log=lambda line: err.print(line, highlight=False), show_progress=not quiet)
    except (FileNotFoundError, FileExistsError, ValueError, ShardMismatch) as error:
        fail(str(error))
    err.print("done: " + ", ".join(f"{name} {what}" for name, what in stages.items()), highlight=False)
    for stage in STAGES:
        _print_checkpoints(out / stage)


def _common_options(
    shards: Path = typer.Option(..., "--shards", help="Dataset folder written by cals-prep (its splits are found by name), or a brace pattern."),
    out: Path = typer.Option(..., "--out", help="Run folder (config.json, checkpoints, metrics.jsonl, tb/)."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON object of training settings (TrainConfig fields, e.g. a run's config.json \"train\"); the flags given on the command line override it, unknown keys are refused."),
    steps: int = typer.Option(TrainConfig.steps, "--steps", min=1, help="Optimizer steps to run, then a final checkpoint."),
    batch_size: int = typer.Option(TrainConfig.batch_size, "--batch-size", min=1, help="Windows per step (per process under DDP)."),
    lr: float = typer.Option(TrainConfig.lr, "--lr", min=0.0, help="Peak learning rate (Adam)."),
    warmup_steps: int = typer.Option(TrainConfig.warmup_steps, "--warmup-steps", min=0, help="Linear learning-rate warm-up, steps."),
    grad_clip: float = typer.Option(TrainConfig.grad_clip, "--grad-clip", min=0.0, help="Clip the gradient norm to this (0: off)."),
    resume: bool = typer.Option(TrainConfig.resume, "--resume", help="Continue from the newest checkpoint in --out (same step, LR, RNG, data)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1... [default: CUDA when available]."),
    seed: int = typer.Option(TrainConfig.seed, "--seed", help="Seed of initialisation, data order, windows, augmentation."),
    num_workers: int = typer.Option(TrainConfig.num_workers, "--num-workers", min=0, help="DataLoader worker processes per training process."),
    log_every: int = typer.Option(TrainConfig.log_every, "--log-every", min=1, help="Steps between metric records."),
    val_every: int = typer.Option(TrainConfig.val_every, "--val-every", min=0, help="Steps between validations on the val split (0: at the end only)."),
    val_batches: int = typer.Option(TrainConfig.val_batches, "--val-batches", min=1, help="Batches per validation."),
    ckpt_every: int = typer.Option(TrainConfig.ckpt_every, "--ckpt-every", min=1, help="Steps between checkpoints (also the data-segment length for exact resume)."),
    keep: int = typer.Option(TrainConfig.keep, "--keep", min=1, help="Checkpoints kept."),
    log_keys: bool = typer.Option(TrainConfig.log_keys, "--log-keys", help="Record every batch's sample keys per rank in keys-rank<R>.txt (data audit)."),
    on_bad_sample: str = typer.Option(TrainConfig.on_bad_sample, "--on-bad-sample", help="skip: a corrupt sample (member SHA-1, undecodable, non-finite) or unreadable shard is skipped with a warning and counted (data_errors); fail: it stops the run with one line."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Template: its parameters are the flags every training command shares."""


COMMON_PARAMETERS = keyword_parameters(_common_options)


#: The command's click context (Typer passes it to a parameter of this type): which flags were given.
CONTEXT_PARAMETER = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether flag ``name`` was on the command line (by the source's name: Typer may ship its own click)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def train_settings(common: dict[str, Any], config_file: Optional[Path], ctx: typer.Context) -> dict[str, Any]:
    """The TrainConfig fields of a command: the flags' values, under which ``--config``'s values
    replace those of the flags not given on the command line (their defaults are TrainConfig's
    own, so a key left out of the file keeps its default)."""
    if config_file is None:
        return common
    try:
        from_file = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--config {config_file}: {one_line(error)}") from error
    if not isinstance(from_file, dict):
        raise ValueError(f"--config {config_file} must hold a JSON object of training settings")
    return {**from_file, **{k: v for k, v in common.items() if _given(ctx, k)}}


def train_command(name: str) -> Callable:
    """Register a training command: the decorated function takes its own flags (and, if it
    declares it, ``dataset``: the --shards value) and returns ``(task, overrides)`` where
    overrides are TrainConfig fields it sets (e.g. window; they win over flags and --config)."""

    def decorator(build: Callable) -> Callable:
        common_names = {p.name for p in COMMON_PARAMETERS}
        own = [p for p in keyword_parameters(build) if p.name != "dataset"]
        wants_dataset = len(own) < len(inspect.signature(build).parameters)

        def command(**options) -> None:
            from cals.stream import ShardMismatch
            from cals.train.loop import run

            common = {k: options.pop(k) for k in list(options) if k in common_names}
            quiet, config_file, ctx = common.pop("quiet"), common.pop("config"), options.pop("ctx")
            if not Path(common["shards"]).exists() and "{" not in str(common["shards"]):
                fail(f"--shards {common['shards']} does not exist")
            try:
                if wants_dataset:
                    options["dataset"] = str(common["shards"])
                task, overrides = build(**options)
                settings = train_settings(common, config_file, ctx)
                train = TrainConfig.from_dict({**settings, "shards": str(common["shards"]), "out": str(common["out"]), **overrides})
                _warn_without_val(train)
                run(task, train, show_progress=not quiet)
            except (FileNotFoundError, FileExistsError, ValueError, ShardMismatch) as error:
                fail(str(error))
            _print_checkpoints(Path(train.out))

        register_command(app, name, command, [*own, *COMMON_PARAMETERS, CONTEXT_PARAMETER], build.__doc__)
        return build

    return decorator


@train_command("a2l")
def a2l(
    layers: int = typer.Option(A2LConfig.layers, "--layers", min=1, help="Transformer encoder layers."),
    d_model: int = typer.Option(A2LConfig.d_model, "--d-model", min=8, help="Hidden size."),
    ffn: int = typer.Option(A2LConfig.ffn, "--ffn", min=8, help="Feed-forward size."),
    heads: int = typer.Option(A2LConfig.heads, "--heads", min=1, help="Attention heads (must divide --d-model)."),
    dropout: float = typer.Option(A2LConfig.dropout, "--dropout", min=0.0, max=1.0, help="Dropout rate."),
    mask_span: int = typer.Option(A2LConfig.mask_span, "--mask-span", min=1, help="Frames per masked span (t_m)."),
    mask_ratio: float = typer.Option(A2LConfig.mask_ratio, "--mask-ratio", min=0.0, max=1.0, help="Share of frames masked (p)."),
    window: Optional[int] = typer.Option(None, "--window", min=5, help=f"Frames per training window (default: the whole utterance, at most {StreamConfig.max_frames} frames)."),
    noise_dir: Optional[Path] = NOISE_DIR_OPTION,
    snr_min: float = SNR_MIN_OPTION,
    snr_max: float = SNR_MAX_OPTION,
    noise_prob: float = NOISE_PROB_OPTION,
    time_masks: int = TIME_MASKS_OPTION,
    freq_masks: int = FREQ_MASKS_OPTION,
    tiny: bool = typer.Option(RecipeConfig.tiny, "--tiny", help=f"Sizes (--layers, --d-model, --ffn, --heads): {TINY_HELP}"),
    dataset: str = "",
):
    """Pre-train the Audio-to-Lip transformer: predict masked lip units from audio."""
    from cals.train.a2l import A2LTask, lip_unit_spec

    augment = augment_config(noise_dir, snr_min, snr_max, noise_prob, time_masks, freq_masks)
    spec = lip_unit_spec(dataset, "train")
    config = A2LConfig(unit_dim=int(spec["dim"]), layers=layers, d_model=d_model, ffn=ffn, heads=heads, dropout=dropout,
                       mask_span=mask_span, mask_ratio=mask_ratio)
    if tiny:
        small = tiny_a2l_config(config.unit_dim)
        config = replace(config, layers=small.layers, d_model=small.d_model, ffn=small.ffn, heads=small.heads)
    return A2LTask(config, lip_kind=spec.get("kind"), augment=augment), {} if window is None else {"window": window}


def _widths(text: str, flag: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if any(w < 1 for w in widths):
        raise ValueError(f"{flag} widths must be >= 1, got {text!r}")
    return widths


@train_command("cals")
def cals_task(
    a2l: Optional[Path] = typer.Option(None, "--a2l", help="A2L run folder (cals-train a2l) whose weights and sizes start Audio-to-Lip [default: random weights, A2LConfig's sizes]."),
    critic: Optional[Path] = typer.Option(None, "--critic", help="Sync-critic run folder, frozen, for L_sync [default: none, lambda-sync is 0]."),
    freeze_a2l: bool = typer.Option(CalsTask.freeze_a2l, "--freeze-a2l", help="Keep Audio-to-Lip fixed (train only Lip-to-Face)."),
    lambda_recon: float = typer.Option(CalsLossConfig.lambda_recon, "--lambda-recon", min=0.0, help="λ1, weight of the L1 reconstruction loss."),
    lambda_gan: float = typer.Option(CalsLossConfig.lambda_gan, "--lambda-gan", min=0.0, help="λ2, weight of the GAN loss."),
    lambda_sync: float = typer.Option(CalsLossConfig.lambda_sync, "--lambda-sync", min=0.0, help="λ3, weight of L_sync = d_av + d_vv once switched on."),
    sync_after: Optional[int] = typer.Option(CalsLossConfig.sync_after, "--sync-after", min=0, help="Switch λ3 on at this step [default: when L_recon plateaus, see --plateau-*]."),
    plateau_steps: int = typer.Option(CalsLossConfig.plateau_steps, "--plateau-steps", min=1, help="Plateau rule: steps between comparisons of the L_recon moving average."),
    plateau_tol: float = typer.Option(CalsLossConfig.plateau_tol, "--plateau-tol", min=0.0, help="Plateau rule: relative improvement per --plateau-steps below which L_recon has converged."),
    ema_decay: float = typer.Option(CalsLossConfig.ema_decay, "--ema-decay", min=0.0, max=0.999999, help="Plateau rule: decay of the L_recon moving average."),
    sync_segments: int = typer.Option(CalsLossConfig.sync_segments, "--sync-segments", min=1, help=f"S, segments of {LIP_WINDOW_FRAMES} frames per window for L_sync."),
    preview_every: int = typer.Option(500, "--preview-every", min=0, help="Steps between preview images (previews/ and TensorBoard; 0: none)."),
    window: Optional[int] = typer.Option(None, "--window", min=1, help=f"Frames generated together (training window and inference chunk) [default: {CalsConfig.window}; {TINY_WINDOW} with --tiny]."),
    widths: str = typer.Option(_csv(LipToFaceConfig.widths), "--widths", help="Lip-to-Face encoder widths per stage, comma-separated (each later stage halves the size)."),
    lip_channels: int = typer.Option(LipToFaceConfig.lip_channels, "--lip-channels", min=1, help="Size of the projected lip code."),
    film: bool = typer.Option(LipToFaceConfig.film, "--film/--no-film", help="FiLM-condition every decoder scale on the lip code (else the bottleneck only)."),
    unit_norm: bool = UNIT_NORM_OPTION,
    disc_widths: str = typer.Option(_csv(DiscriminatorConfig.widths), "--disc-widths", help="PatchGAN discriminator widths, comma-separated."),
    tiny: bool = typer.Option(RecipeConfig.tiny, "--tiny", help=f"Sizes (--widths, --lip-channels, --disc-widths; A2L's without --a2l): {TINY_HELP}"),
    reference: str = typer.Option(CalsTask.reference, "--reference", help=f"Training reference frame: {' or '.join(REFERENCE_RULES)} (drawn outside the window and {REFERENCE_MARGIN_FRAMES} frames around it; in-window: the old draw, targets included, for ablations)."),
    a2l_context: str = typer.Option(CalsTask.a2l_context, "--a2l-context", help=f"What Audio-to-Lip reads in training: {' or '.join(A2L_CONTEXTS)} (utterance: the whole clip as at inference, sliced to the window; window: the window's audio only, for ablations)."),
    lip_teacher: str = LIP_TEACHER_OPTION,
    teacher_share: float = typer.Option(CalsTask.teacher_share, "--teacher-share", min=0.0, max=1.0, help="With --lip-teacher mouth: share of the windows generated from the teacher's units."),
    teacher_code_dim: int = typer.Option(CalsTask.teacher_code_dim, "--teacher-code-dim", min=1, help="With --lip-teacher mouth: numbers in the teacher's bottleneck."),
    lambda_units: float = typer.Option(CalsLossConfig.lambda_units, "--lambda-units", min=0.0, help="With --lip-teacher mouth: weight of the MSE of A2L's units to the teacher's."),
    recon_lower_weight: float = RECON_LOWER_WEIGHT_OPTION,
    noise_dir: Optional[Path] = NOISE_DIR_OPTION,
    snr_min: float = SNR_MIN_OPTION,
    snr_max: float = SNR_MAX_OPTION,
    noise_prob: float = NOISE_PROB_OPTION,
    time_masks: int = TIME_MASKS_OPTION,
    freq_masks: int = FREQ_MASKS_OPTION,
):
    """Train CALS end to end: Audio-to-Lip + Lip-to-Face against a frame discriminator, then the sync critic."""
    from cals.train.cals import a2l_config_of_run

    a2l_config = a2l_config_of_run(a2l) if a2l is not None else A2LConfig()
    if tiny and a2l is None:
        a2l_config = tiny_a2l_config(a2l_config.unit_dim)
    if critic is not None and not critic.exists():
        raise FileNotFoundError(f"--critic {critic} does not exist")
    l2f = LipToFaceConfig(unit_dim=a2l_config.unit_dim, widths=_widths(widths, "--widths"), lip_channels=lip_channels, film=film, unit_norm=unit_norm)
    discriminator = DiscriminatorConfig(_widths(disc_widths, "--disc-widths"))
    if tiny:
        small = tiny_cals_config(a2l_config.unit_dim)
        l2f, discriminator = replace(l2f, widths=small.l2f.widths, lip_channels=small.l2f.lip_channels), TINY_DISCRIMINATOR
    window = window or (TINY_WINDOW if tiny else CalsConfig.window)
    config = CalsConfig(a2l=a2l_config, l2f=l2f, window=window)
    losses = CalsLossConfig(lambda_recon=lambda_recon, lambda_gan=lambda_gan, lambda_sync=lambda_sync if critic is not None else 0.0,
                            sync_after=sync_after, ema_decay=ema_decay, plateau_steps=plateau_steps, plateau_tol=plateau_tol,
                            sync_segments=sync_segments, recon_lower_weight=recon_lower_weight, lambda_units=lambda_units)
    task = CalsTask(config, losses, discriminator,
                    a2l_init=str(a2l) if a2l is not None else None, critic=str(critic) if critic is not None else None,
                    freeze_a2l=freeze_a2l, preview_every=preview_every, reference=reference, a2l_context=a2l_context,
                    augment=augment_config(noise_dir, snr_min, snr_max, noise_prob, time_masks, freq_masks),
                    lip_teacher=lip_teacher, teacher_share=teacher_share, teacher_code_dim=teacher_code_dim)
    return task, {"window": window}


#: Default sync-critic training window, frames (see --window).
DEFAULT_SYNC_WINDOW = 45


@train_command("syncnet")
def syncnet(
    offsets: int = typer.Option(SyncLossConfig.offsets, "--offsets", min=1, help="K: each window is matched against the windows at offsets -K..+K frames (2K+1 candidates)."),
    loss: str = typer.Option(SyncLossConfig.loss, "--loss", help="multiway (softmax over the 2K+1 candidates, both directions; Chung et al. 2020) or bce (Wav2Lip: BCE on the ReLU'd cosine)."),
    embed_dim: int = typer.Option(SyncCriticConfig.embed_dim, "--embed-dim", min=1, help="Size of the L2-normalised audio and video embeddings."),
    temperature: float = typer.Option(SyncLossConfig.temperature, "--temperature", min=1e-6, help="Softmax temperature of the multi-way loss (fixed)."),
    window: Optional[int] = typer.Option(None, "--window", min=7, help="Frames per training window [default: max(45, 5 + 2K)]: every position whose 2K+1 candidates fit is an anchor, so longer windows give many more anchors per decoded frame (measured: 45 frames learn the fixture offsets in 60 steps, 5 + 2K = 19 had not in 100)."),
    mouth_size: str = typer.Option(_csv(SyncCriticConfig.mouth_size), "--mouth-size", help="Height,width the mouth region (lower half of the crop) is resized to; multiples of 16."),
    video_channels: str = typer.Option(_csv(SyncCriticConfig.video_channels), "--video-channels", help="Widths of the 5 video convolutions, comma-separated."),
    audio_channels: str = typer.Option(_csv(SyncCriticConfig.audio_channels), "--audio-channels", help="Widths of the 5 audio convolutions, comma-separated."),
    tiny: bool = typer.Option(RecipeConfig.tiny, "--tiny", help=f"Sizes (--embed-dim, --mouth-size, --*-channels): {TINY_HELP}"),
):
    """Pre-train the sync critic (video F_v, audio F_a) with the multi-way matching loss."""
    from cals.train.sync_critic import LOSSES, SyncCriticTask, min_window

    if loss not in LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    size = _widths(mouth_size, "--mouth-size")
    if len(size) != 2:
        raise ValueError(f"--mouth-size takes height,width, got {mouth_size!r}")
    model = SyncCriticConfig(embed_dim=embed_dim, t_s=LIP_WINDOW_FRAMES, mouth_size=size,
                             video_channels=_widths(video_channels, "--video-channels"),
                             audio_channels=_widths(audio_channels, "--audio-channels"))
    if tiny:
        model = TINY_CRITIC
    losses = SyncLossConfig(offsets=offsets, loss=loss, temperature=temperature)
    return SyncCriticTask(model, losses), {"window": window or max(DEFAULT_SYNC_WINDOW, min_window(model, losses))}


def main() -> None:
    code = run_app(app)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, a rank sometimes aborted in interpreter teardown after finishing
        # ("terminate called without an active exception", ~1 run in 10 under load): a
        # process-group thread destroyed while joinable. All outputs are written and closed by
        # now, so leave without the teardown; the exit code is the command's.
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
