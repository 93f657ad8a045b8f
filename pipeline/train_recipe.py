"""The whole CALS recipe on one dataset: ``cals-train --shards shards/NAME --out runs/NAME``.

Stages, each a normal run of :func:`cals.train.loop.run` in its own folder under ``out``:

1. ``sync/``  the sync critic (multi-way matching loss; :mod:`cals.train.sync_critic`);
2. lip units into the shards if they have none (:func:`pipeline.units.add_lip_units`, with
   ``lip_model`` when given, else the critic of stage 1; with ``lip_model`` given the step always
   runs, and skips the shards already done with that model);
3. ``a2l/``   Audio-to-Lip pre-training on those units (whole utterances);
4. ``cals/``  CALS end to end, A2L initialised from stage 3, the critic of stage 1 frozen.

Re-running the same command resumes: a stage whose newest checkpoint has reached
``steps_per_stage`` is skipped, an unfinished one continues from its newest checkpoint
(``--resume`` semantics), a missing one starts. In CALS the plateau rule for λ3 compares every
``steps_per_stage // 10`` steps (at most 500), so the sync loss can switch on within the stage.
``tiny`` gives every model the small widths of :mod:`cals.models.tiny` (smoke tests on a CPU).

It lives in ``pipeline`` because stage 2 runs a pipeline step (Ray actors over the shards);
stages 1, 3 and 4 are plain :mod:`cals.train` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from cals.stream import PAPER_AUGMENT, AugmentConfig

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
        workers: Ray actors of stage 2 (None: one per CPU).
        tiny: small widths everywhere (tests).
        augment: audio augmentation of the A2L and CALS stages (the paper's SpecAugment by
            default; noise only with noise files).
    """

    steps_per_stage: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    device: Optional[str] = None
    seed: int = 0
    num_workers: int = 0
    ckpt_every: int = 500
    lip_model: Optional[str] = None
    workers: Optional[int] = None
    tiny: bool = False
    augment: AugmentConfig = PAPER_AUGMENT


def stage_done(folder: Path, steps: int) -> bool:
    """Whether a run folder's newest checkpoint has reached ``steps``."""
    from cals.train.checkpoint import latest

    info = latest(folder) if folder.is_dir() else None
    return info is not None and int(info["step"]) >= steps


def _train(shards: str, folder: Path, config: RecipeConfig, window: Optional[int]):
    from cals.train.config import TrainConfig

    return TrainConfig(shards=shards, out=str(folder), steps=config.steps_per_stage, batch_size=config.batch_size, lr=config.lr,
                       resume=True, device=config.device, seed=config.seed, window=window, num_workers=config.num_workers,
                       ckpt_every=min(config.ckpt_every, config.steps_per_stage))


def _has_lip_units(shards: str) -> bool:
    from cals.train.a2l import lip_unit_spec

    try:
        lip_unit_spec(shards, "train")
    except ValueError:
        return False
    return True


def run_recipe(shards: str | Path, out: str | Path, config: RecipeConfig = RecipeConfig(),
               log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the four stages. Returns ``{stage: "trained" | "skipped" | "added" |
    "present"}``."""
    from cals.models.a2l import A2LConfig
    from cals.models.cals_model import CalsConfig
    from cals.models.discriminator import DiscriminatorConfig
    from cals.models.l2f import LipToFaceConfig
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
    if stage_done(folders["sync"], steps):
        done["sync"] = "skipped"
    else:
        log(f"stage 1/4: sync critic → {folders['sync']}")
        run(SyncCriticTask(critic, sync_loss), _train(shards, folders["sync"], config, min_window(critic, sync_loss)), show_progress)
        done["sync"] = "trained"

    # 2. lip units
    if config.lip_model is None and _has_lip_units(shards):
        done["units"] = "present"
    else:
        model = config.lip_model or str(folders["sync"])
        log(f"stage 2/4: lip units from {model} → {shards}")
        add_lip_units(shards, model, workers=config.workers, show_progress=show_progress, fail_fast=True)
        done["units"] = "added"
    spec = lip_unit_spec(shards, "train")

    # 3. Audio-to-Lip
    unit_dim = int(spec["dim"])
    a2l = tiny_a2l_config(unit_dim) if config.tiny else A2LConfig(unit_dim=unit_dim)
    if stage_done(folders["a2l"], steps):
        done["a2l"] = "skipped"
    else:
        log(f"stage 3/4: Audio-to-Lip → {folders['a2l']}")
        run(A2LTask(a2l, lip_kind=spec.get("kind"), augment=config.augment), _train(shards, folders["a2l"], config, None), show_progress)
        done["a2l"] = "trained"

    # 4. CALS
    if config.tiny:
        model_config, disc = tiny_cals_config(unit_dim), TINY_DISCRIMINATOR
    else:
        model_config, disc = CalsConfig(a2l=a2l, l2f=LipToFaceConfig(unit_dim=unit_dim)), DiscriminatorConfig()
    window = model_config.window
    losses = CalsLossConfig(plateau_steps=max(1, min(PLATEAU_STEPS_MAX, steps // PLATEAU_CHECKS_PER_STAGE)))
    task = CalsTask(model_config, losses, disc, a2l_init=str(folders["a2l"]), augment=config.augment,
                    critic=str(folders["sync"]), preview_every=max(1, steps // PLATEAU_CHECKS_PER_STAGE))
    if stage_done(folders["cals"], steps):
        done["cals"] = "skipped"
    else:
        log(f"stage 4/4: CALS → {folders['cals']}")
        run(task, _train(shards, folders["cals"], config, window), show_progress)
        done["cals"] = "trained"
    return done


__all__ = ["RecipeConfig", "STAGES", "run_recipe", "stage_done"]
