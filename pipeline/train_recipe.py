"""The whole CALS recipe on one dataset: ``cals-train --shards shards/NAME --out runs/NAME``.

Stages, each a normal run of :func:`cals.train.loop.run` in its own folder under ``out``:

1. ``sync/``  the sync critic (multi-way matching loss; :mod:`cals.train.sync_critic`);
2. lip units into the shards (:func:`pipeline.units.add_lip_units`) from ``lip_model`` when
   given, else from the critic of stage 1. Units already in the shards are kept only when they
   come from that model (the digest in ``json.lip_units`` equals the model's, see
   :func:`cals.models.lip_units.model_digest`), or with ``keep_units``; otherwise they are
   re-extracted, and the stage's line says which and why. Samples already done with the model
   are copied as they are;
3. ``a2l/``   Audio-to-Lip pre-training on those units (whole utterances);
4. ``cals/``  CALS end to end, A2L initialised from stage 3, the critic of stage 1 frozen.

Re-running the same command resumes: a stage whose newest checkpoint has reached
``steps_per_stage`` is skipped, an unfinished one continues from its newest checkpoint
(``--resume`` semantics), a missing one starts. A larger ``steps_per_stage`` in the same
``out`` grows every stage: each continues with the settings it started with (its stored
``ckpt_every``, the data-segment length, and for CALS its plateau and preview periods), so
the steps already done stay exactly those of an uninterrupted run. In CALS the plateau rule for
λ3 compares every ``steps_per_stage // 10`` steps (at most 500), so the sync loss can switch on
within the stage. Every stage logs one line: what it does, or what it skips and why.
``tiny`` gives every model the small widths of :mod:`cals.models.tiny` (smoke tests on a CPU).

It lives in ``pipeline`` because stage 2 runs a pipeline step (Ray actors over the shards);
stages 1, 3 and 4 are plain :mod:`cals.train` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from cals.models.l2f import LipToFaceConfig
from cals.stream import PAPER_AUGMENT, AugmentConfig
from cals.train.cals import CalsLossConfig, CalsTask

#: Stage folders under the recipe's ``out``.
STAGES = ("sync", "a2l", "cals")
#: Largest plateau-rule period the recipe uses, steps (CalsLossConfig's default).
PLATEAU_STEPS_MAX = 500
#: The plateau rule compares this many times per stage at most.
PLATEAU_CHECKS_PER_STAGE = 10


@dataclass(frozen=True)
class RecipeConfig:
    """Settings of the whole recipe.

    Attributes:
        steps_per_stage: optimizer steps of each training stage.
        batch_size, lr, device, seed, num_workers, ckpt_every: as :class:`TrainConfig` (every stage).
        lip_model: the lip-unit model for stage 2 (None: the stage-1 critic).
        keep_units: keep lip units already in the shards even when another model made them.
        workers: Ray actors of stage 2 (None: one per CPU).
        tiny: small widths everywhere (tests).
        augment: audio augmentation of the A2L and CALS stages (the paper's SpecAugment by
            default; noise only with noise files).
        lip_teacher, recon_lower_weight, unit_norm: the CALS stage's ``CalsTask.lip_teacher``,
            ``CalsLossConfig.recon_lower_weight`` and ``LipToFaceConfig.unit_norm`` (defaults:
            no teacher, plain L1, raw units).
    """

    steps_per_stage: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    device: Optional[str] = None
    seed: int = 0
    num_workers: int = 0
    ckpt_every: int = 500
    lip_model: Optional[str] = None
    keep_units: bool = False
    workers: Optional[int] = None
    tiny: bool = False
    augment: AugmentConfig = PAPER_AUGMENT
    lip_teacher: str = CalsTask.lip_teacher
    recon_lower_weight: float = CalsLossConfig.recon_lower_weight
    unit_norm: bool = LipToFaceConfig.unit_norm


def stage_done(folder: Path, steps: int) -> bool:
    """Whether a run folder's newest checkpoint has reached ``steps``."""
    return _step_of(folder) >= steps


def _step_of(folder: Path) -> int:
    """The step of a run folder's newest checkpoint (0: none yet)."""
    from cals.train.checkpoint import latest

    info = latest(folder) if folder.is_dir() else None
    return 0 if info is None else int(info["step"])


def _saved_run(folder: Path) -> dict[str, Any]:
    """The config.json of an earlier run in ``folder`` ({} when there is none)."""
    from cals.train.checkpoint import CONFIG_FILE, read_json

    return read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}


def _train(shards: str, folder: Path, config: RecipeConfig, window: Optional[int]):
    """The stage's TrainConfig; a stage already started keeps its stored ``ckpt_every``."""
    from cals.train.config import TrainConfig

    ckpt_every = _saved_run(folder).get("train", {}).get("ckpt_every") or min(config.ckpt_every, config.steps_per_stage)
    return TrainConfig(shards=shards, out=str(folder), steps=config.steps_per_stage, batch_size=config.batch_size, lr=config.lr,
                       resume=True, device=config.device, seed=config.seed, window=window, num_workers=config.num_workers,
                       ckpt_every=ckpt_every)


def _stage(number: int, title: str, folder: Path, steps: int, log: Callable[[str], None]) -> bool:
    """Log the stage's line; whether it still has steps to run."""
    step = _step_of(folder)
    if step >= steps:
        log(f"stage {number}/4: {title}: done ({step} steps in {folder}), skipped")
        return False
    log(f"stage {number}/4: {title} → {folder}" + (f": continues at step {step} of {steps}" if step else f": {steps} steps"))
    return True


def _lip_units(shards: str) -> Optional[dict[str, Any]]:
    """``json.lip_units`` of the shards' first train sample (None: they have none)."""
    from cals.train.a2l import lip_unit_spec

    try:
        return lip_unit_spec(shards, "train")
    except ValueError:
        return None


def run_recipe(shards: str | Path, out: str | Path, config: RecipeConfig = RecipeConfig(),
               log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Any]:
    """Run, resume or grow the four stages, logging one line per stage. Returns ``{stage:
    "trained" | "skipped"}`` and ``units``: ``"added" | "present"``."""
    from cals.models.a2l import A2LConfig
    from cals.models.cals_model import CalsConfig
    from cals.models.discriminator import DiscriminatorConfig
    from cals.models.l2f import LipToFaceConfig
    from cals.models.lip_units import model_digest
    from cals.models.sync_critic import SyncCriticConfig
    from cals.models.tiny import TINY_CRITIC, TINY_DISCRIMINATOR, tiny_a2l_config, tiny_cals_config
    from cals.train.a2l import A2LTask, lip_unit_spec
    from cals.train.cals import CalsLossConfig, CalsTask
    from cals.train.loop import run
    from cals.train.sync_critic import SyncCriticTask, SyncLossConfig, min_window
    from pipeline.units import add_lip_units

    shards, out = str(shards), Path(out)
    if not Path(shards).is_dir():
        raise FileNotFoundError(f"--shards {shards} is not a dataset folder")
    folders = {name: out / name for name in STAGES}
    steps = config.steps_per_stage
    done: dict[str, Any] = {}

    # 1. sync critic
    critic = TINY_CRITIC if config.tiny else SyncCriticConfig()
    sync_loss = SyncLossConfig()
    done["sync"] = "skipped"
    if _stage(1, "sync critic", folders["sync"], steps, log):
        run(SyncCriticTask(critic, sync_loss), _train(shards, folders["sync"], config, min_window(critic, sync_loss)), show_progress)
        done["sync"] = "trained"

    # 2. lip units
    model = config.lip_model or str(folders["sync"])
    present = _lip_units(shards)
    own = present is not None and present.get("digest") == model_digest(model)
    if own or (present is not None and config.keep_units):
        log(f"stage 2/4: lip units: {shards} has them ({f'made by {model}' if own else '--keep-units'}), kept")
        done["units"] = "present"
    else:
        if present is not None:
            log(f"stage 2/4: lip units in {shards} come from another model (digest {str(present.get('digest'))[:12]}), "
                f"re-extracting from {model} (--keep-units keeps them)")
        else:
            log(f"stage 2/4: lip units from {model} → {shards}")
        add_lip_units(shards, model, workers=config.workers, show_progress=show_progress, fail_fast=True)
        done["units"] = "added"
    spec = lip_unit_spec(shards, "train")

    # 3. Audio-to-Lip
    unit_dim = int(spec["dim"])
    a2l = tiny_a2l_config(unit_dim) if config.tiny else A2LConfig(unit_dim=unit_dim)
    done["a2l"] = "skipped"
    if _stage(3, "Audio-to-Lip", folders["a2l"], steps, log):
        run(A2LTask(a2l, lip_kind=spec.get("kind"), augment=config.augment), _train(shards, folders["a2l"], config, None), show_progress)
        done["a2l"] = "trained"

    # 4. CALS
    if config.tiny:
        model_config, disc = tiny_cals_config(unit_dim), TINY_DISCRIMINATOR
    else:
        model_config, disc = CalsConfig(a2l=a2l, l2f=LipToFaceConfig(unit_dim=unit_dim)), DiscriminatorConfig()
    model_config = replace(model_config, l2f=replace(model_config.l2f, unit_norm=config.unit_norm))
    window = model_config.window
    started = _saved_run(folders["cals"]).get("task_config", {})  # a run already started keeps its periods
    plateau = started.get("loss", {}).get("plateau_steps") or max(1, min(PLATEAU_STEPS_MAX, steps // PLATEAU_CHECKS_PER_STAGE))
    preview_every = started.get("preview_every") or max(1, steps // PLATEAU_CHECKS_PER_STAGE)
    task = CalsTask(model_config, CalsLossConfig(plateau_steps=plateau, recon_lower_weight=config.recon_lower_weight), disc,
                    a2l_init=str(folders["a2l"]), augment=config.augment, critic=str(folders["sync"]), preview_every=preview_every,
                    lip_teacher=config.lip_teacher)
    done["cals"] = "skipped"
    if _stage(4, "CALS", folders["cals"], steps, log):
        run(task, _train(shards, folders["cals"], config, window), show_progress)
        done["cals"] = "trained"
    return done


__all__ = ["RecipeConfig", "STAGES", "run_recipe", "stage_done"]
