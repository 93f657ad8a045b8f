"""The CALS task (``cals-train cals``; runs in :func:`cals.train.loop.run`): Audio-to-Lip and
Lip-to-Face trained end to end against a frame discriminator and, later, the frozen sync critic
(Park et al. MM'23, Sec. 3.2 and 4.1.4).

One step on a batch of windows ``(B, W)`` (W = ``CalsConfig.window`` frames):

1. **Inputs.** Targets I are the window's frames. Each window gets one *reference frame* (the
   paper: "a random reference frame") from the same clip, drawn by the stream
   (:func:`cals.stream.reference_index`) outside the window and ``REFERENCE_MARGIN_FRAMES``
   frames around it (``reference="outside"``), so no target is its own reference or next to it
   (a frame within ±2 has nearly the same mouth: with the old draw inside the window, 1 target
   in W was its own reference and ~20 % had one within ±2 frames). Clips too short for that get
   the frame farthest from every target; the share of such windows is logged as
   ``reference_fallback``. ``reference="in-window"`` keeps the old draw, for ablations. Each
   target's *pose prior* is the target with its lower half zeroed. A2L reads the audio unmasked:
   with ``a2l_context="utterance"`` (default, the paper's) the window's whole utterance (the
   clip, in chunks of ``A2LConfig.max_frames`` frames, exactly as :meth:`CalsModel.generate`
   reads it at inference) and its output is sliced to the window's frames;
   ``a2l_context="window"`` gives A2L the window's audio only (the old way: positions 0..W−1,
   unlike inference). The mel is augmented by ``augment`` (the paper's SpecAugment by default).
   The generator makes all W frames in parallel.
2. **Generator loss** ``L_gen = λ1 L_recon + λ2 L_gan + λ3 L_sync`` (λ = 10 / 0.07 / 0.03):
   L1 reconstruction; the non-saturating GAN loss −log D(Î) (see
   :func:`cals.losses.generator_gan_loss` for why not the paper's log(1 − D(Î))); and
   ``L_sync = d_av + d_vv`` from the frozen sync critic on S non-overlapping segments of
   t_s = 5 frames at random positions of each window (S = ``sync_segments``; the paper does not
   give it). Non-overlapping because d_vv contrasts each generated segment with the *other*
   ground-truth segments of its window: overlapping ones share frames, so the contrast would ask
   the critic to tell nearly identical segments apart. Gradients reach the generator through
   the critic, whose weights never change.
3. **Discriminator loss** ``−log D(I) − log(1 − D(Î))`` on real and (detached) generated frames,
   with its own Adam at the same learning rate.

**When λ3 switches on** (:class:`SyncSchedule`): the paper starts with λ3 = 0 and turns it on
"when the reconstruction loss has converged". With ``sync_after`` set, λ3 is on from that step.
Otherwise the *plateau rule*: an exponential moving average of L_recon (decay ``ema_decay``)
is compared every ``plateau_steps`` steps with its value ``plateau_steps`` steps earlier; the
first time it improved by less than ``plateau_tol`` (relative), λ3 is on for good. Under DDP
the compared average is the mean over ranks (one all-reduce per comparison), so every rank
switches at the same step. Without a critic λ3 is 0 throughout, and the run's config says so.

**Against the audio-blind shortcut** (not in the paper; off by default, one flag each):
``lip_teacher="mouth"`` adds a training-only encoder (:mod:`cals.models.mouth_encoder`) of the
target's own lower face; on a ``teacher_share`` of the windows (drawn per window) the generator
reads its units instead of A2L's, and ``lambda_units`` · MSE(A2L units, detached teacher units)
joins L_gen, so the generator learns to follow units that carry the mouth and A2L learns to
make them from the audio (the teacher's weights are resume state, not model weights).
``CalsLossConfig.recon_lower_weight`` weights the masked rows of L_recon.

**Validation** (fixed val windows): L1 and PSNR of the generated frames, with the paper's
inference inputs (the window's first frame as reference, pose priors from the targets), next to
two baselines: *copy the reference* (output the reference frame) and *paste* (the target's upper
half + the reference's lower half, i.e. a generator that only fills the mouth with the
reference's). PSNR is per frame (data range 1), then averaged.

**Preview** every ``preview_every`` steps: a PNG (rows: reference, ground truth, generated,
each titled in its top-left corner; columns: up to 8 frames of one fixed val window, or of the
train split without a val split)
written to ``<out>/previews/`` and to TensorBoard (``preview``) through the loop's logger.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from cals.constants import LIP_WINDOW_FRAMES, MEL_ROWS_PER_FRAME, REFERENCE_MARGIN_FRAMES
from cals.losses import discriminator_loss, generator_gan_loss, reconstruction_loss, sync_av_loss, sync_vv_loss
from cals.models.a2l import A2LConfig
from cals.models.cals_model import TASK_NAME, CalsConfig, CalsModel
from cals.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from cals.models.l2f import pose_prior
from cals.models.mouth_encoder import MouthEncoder, MouthEncoderConfig
from cals.settings import json_ready
from cals.stream import PAPER_AUGMENT, REFERENCE_OUTSIDE, REFERENCE_RULES, AugmentConfig
from cals.train.config import TrainConfig
from cals.train.guard import SKIPPED_METRIC, step_if_finite

#: Frames (columns) of a preview image.
PREVIEW_FRAMES = 8
#: Folder of preview PNGs inside the run folder.
PREVIEW_DIR = "previews"
#: ``CalsTask.a2l_context``: A2L reads the window's whole utterance (the paper's, and what
#: inference does), or the window's audio only (the old way, for ablations).
A2L_CONTEXT_UTTERANCE = "utterance"
A2L_CONTEXT_WINDOW = "window"
A2L_CONTEXTS = (A2L_CONTEXT_UTTERANCE, A2L_CONTEXT_WINDOW)
#: ``CalsTask.lip_teacher``: no teacher (the paper's), or the learned mouth encoder
#: (:mod:`cals.models.mouth_encoder`) whose units from the target's own lower face drive the
#: generator on a share of the windows.
LIP_TEACHER_NONE = "none"
LIP_TEACHER_MOUTH = "mouth"
LIP_TEACHERS = (LIP_TEACHER_NONE, LIP_TEACHER_MOUTH)
#: Row titles of a preview image, top to bottom.
PREVIEW_ROWS = ("reference", "ground truth", "generated")
#: Height of the title band drawn over the top-left corner of each preview row, pixels.
PREVIEW_TITLE_HEIGHT = 14


@dataclass(frozen=True)
class CalsLossConfig:
    """Loss weights and the λ3 schedule (saved in the run's config.json).

    Attributes:
        lambda_recon, lambda_gan, lambda_sync: λ1, λ2, λ3 (the paper's 10, 0.07, 0.03).
        sync_after: turn λ3 on at this step (None: the plateau rule).
        ema_decay: decay of the moving average of L_recon that the plateau rule watches.
        plateau_steps: steps between the plateau rule's comparisons.
        plateau_tol: relative improvement of the average over ``plateau_steps`` below which
            L_recon counts as converged.
        sync_segments: S, segments of t_s frames per window for L_sync.
        vv_temperature: cosine temperature of d_vv (1: the paper's form).
        recon_lower_weight: weight of the masked rows (the mouth) in L_recon relative to the
            rows above (1: the paper's plain L1; :func:`cals.losses.reconstruction_loss`).
        lambda_units: with a lip teacher, weight of the MSE between A2L's units and the
            (detached) teacher's units (``CalsTask.lip_teacher``; unused without one).
    """

    lambda_recon: float = 10.0
    lambda_gan: float = 0.07
    lambda_sync: float = 0.03
    sync_after: Optional[int] = None
    ema_decay: float = 0.98
    plateau_steps: int = 500
    plateau_tol: float = 0.01
    sync_segments: int = 4
    vv_temperature: float = 1.0
    recon_lower_weight: float = 1.0
    lambda_units: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.plateau_steps < 1:
            raise ValueError(f"plateau_steps must be >= 1, got {self.plateau_steps}")
        if self.sync_segments < 1:
            raise ValueError(f"sync_segments must be >= 1, got {self.sync_segments}")
        if self.sync_after is not None and self.sync_after < 0:
            raise ValueError(f"sync_after must be >= 0, got {self.sync_after}")
        if self.recon_lower_weight <= 0:
            raise ValueError(f"recon_lower_weight must be > 0, got {self.recon_lower_weight}")
        if self.lambda_units < 0:
            raise ValueError(f"lambda_units must be >= 0, got {self.lambda_units}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SyncSchedule:
    """Whether λ3 is on at a step (module docstring): ``active(step)`` before the step's loss,
    ``observe(step, recon)`` after it. Latched: once on, on for good. ``state()`` /
    ``load_state()`` carry it across a resume. ``reduce`` maps this rank's moving average to
    the one every rank decides on (under DDP: the mean over ranks, :func:`mean_over_ranks`;
    None: this process's own); every rank calls it at the same steps."""

    sync_after: Optional[int] = None
    ema_decay: float = 0.98
    plateau_steps: int = 500
    plateau_tol: float = 0.01
    enabled: bool = True
    ema: Optional[float] = None
    reference_ema: Optional[float] = None
    switched_at: Optional[int] = None
    reduce: Optional[Callable[[float], float]] = None

    @classmethod
    def from_config(cls, losses: CalsLossConfig, enabled: bool, reduce: Optional[Callable[[float], float]] = None) -> "SyncSchedule":
        return cls(losses.sync_after, losses.ema_decay, losses.plateau_steps, losses.plateau_tol, enabled, reduce=reduce)

    def active(self, step: int) -> bool:
        if not self.enabled:
            return False
        if self.sync_after is not None:
            return step >= self.sync_after
        return self.switched_at is not None and step >= self.switched_at

    def observe(self, step: int, recon: float) -> None:
        """Record step ``step``'s L_recon. After every ``plateau_steps``-th step the average is
        compared with the one ``plateau_steps`` steps before; the first comparison happens after
        ``2 * plateau_steps`` steps."""
        self.ema = recon if self.ema is None else self.ema_decay * self.ema + (1 - self.ema_decay) * recon
        done = step + 1
        if self.sync_after is not None or self.switched_at is not None or done % self.plateau_steps:
            return
        ema = self.ema if self.reduce is None else self.reduce(self.ema)
        if self.reference_ema is not None and self.reference_ema - ema < self.plateau_tol * abs(self.reference_ema):
            self.switched_at = done
        self.reference_ema = ema

    def state(self) -> dict[str, Any]:
        return {"ema": self.ema, "reference_ema": self.reference_ema, "switched_at": self.switched_at}

    def load_state(self, state: dict[str, Any]) -> None:
        self.ema, self.reference_ema, self.switched_at = state["ema"], state["reference_ema"], state["switched_at"]


def a2l_config_of_run(path: str | Path) -> A2LConfig:
    """The A2LConfig of a ``cals-train a2l`` run folder (or a checkpoint inside one)."""
    from cals.train.checkpoint import run_config

    config = run_config(path)
    if config.get("task") != "a2l":
        raise ValueError(f"--a2l {path} is a {config.get('task')!r} run, not an 'a2l' run")
    settings = {k: v for k, v in config["task_config"].items() if k != "lip_kind"}
    return A2LConfig(**settings)


def psnr(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB, data range 1) of ``(N, 3, H, W)`` frames → ``(N,)``."""
    mse = (generated - target).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def title_rows(image: np.ndarray, titles: tuple[str, ...]) -> np.ndarray:
    """``image`` ``(H, W, 3)`` uint8 split into ``len(titles)`` equal rows, each with its title
    written white on a dark band (:data:`PREVIEW_TITLE_HEIGHT` pixels) over its top-left corner.
    Returns a new array of the same shape."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    row_height = image.shape[0] // len(titles)
    for row, title in enumerate(titles):
        top = row * row_height
        width = int(draw.textlength(title)) + PREVIEW_TITLE_HEIGHT // 2
        draw.rectangle((0, top, width, top + PREVIEW_TITLE_HEIGHT - 1), fill=(0, 0, 0))
        draw.text((PREVIEW_TITLE_HEIGHT // 4, top + 1), title, fill=(255, 255, 255))
    return np.asarray(canvas).copy()


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of ``value`` over the DDP ranks (an all-reduce on ``device``: every rank must call it)."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total.item()) / torch.distributed.get_world_size()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0


def _as_frames(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """``(B, W, H, W, 3)`` uint8 → ``(B, W, 3, H, W)`` float [0, 1] on ``device``."""
    return batch["frames"].to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255.0)


def _as_reference(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The stream's reference frames ``(B, H, W, 3)`` uint8 → ``(B, 3, H, W)`` float [0, 1]."""
    return batch["reference"].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class CalsTask:
    """End-to-end CALS training (module docstring).

    Attributes:
        config: the model (A2L, L2F, window).
        losses: loss weights and the λ3 schedule.
        discriminator: the frame discriminator's sizes.
        a2l_init: an A2L run folder (or checkpoint) whose weights initialise A2L (None: random).
        critic: a sync-critic run folder (or checkpoint), frozen (None: no L_sync).
        freeze_a2l: keep A2L fixed (eval mode, no gradient step).
        preview_every: steps between preview images (0: none).
        reference: the training reference rule, ``"outside"`` or ``"in-window"`` (ablation;
            module docstring).
        a2l_context: ``"utterance"`` or ``"window"`` (ablation): what A2L reads in training.
        augment: audio augmentation of the training windows (validation is never augmented).
        lip_teacher: ``"none"`` (the paper's) or ``"mouth"``: teacher forcing from the target's
            own lower face (:mod:`cals.models.mouth_encoder`; module docstring).
        teacher_share: share of the windows generated from the teacher's units (the rest from
            A2L's), drawn per window.
        teacher_code_dim: the teacher's bottleneck size.
    """

    config: CalsConfig
    losses: CalsLossConfig = field(default_factory=CalsLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    a2l_init: Optional[str] = None
    critic: Optional[str] = None
    freeze_a2l: bool = False
    preview_every: int = 0
    reference: str = REFERENCE_OUTSIDE
    a2l_context: str = A2L_CONTEXT_UTTERANCE
    augment: AugmentConfig = PAPER_AUGMENT
    lip_teacher: str = LIP_TEACHER_NONE
    teacher_share: float = 0.5
    teacher_code_dim: int = 16
    name: str = TASK_NAME
    logger: Any = None  # set by the loop (images to TensorBoard)

    def __post_init__(self) -> None:
        if self.reference not in REFERENCE_RULES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCE_RULES)}, got {self.reference!r}")
        if self.a2l_context not in A2L_CONTEXTS:
            raise ValueError(f"a2l_context must be one of {', '.join(A2L_CONTEXTS)}, got {self.a2l_context!r}")
        if self.lip_teacher not in LIP_TEACHERS:
            raise ValueError(f"lip_teacher must be one of {', '.join(LIP_TEACHERS)}, got {self.lip_teacher!r}")
        if not 0.0 <= self.teacher_share <= 1.0:
            raise ValueError(f"teacher_share must be in [0, 1], got {self.teacher_share}")

    def notes(self) -> list[str]:
        """Warnings about this run's settings (also written to config.json)."""
        notes = []
        if self.critic is None:
            notes.append("no --critic: lambda_sync is 0 throughout (no sync loss)")
        if self.a2l_init is None:
            notes.append("no --a2l: Audio-to-Lip starts from random weights")
        if self.reference != REFERENCE_OUTSIDE:
            notes.append(f"--reference {self.reference}: the reference frame may be a target (ablation)")
        if self.a2l_context != A2L_CONTEXT_UTTERANCE:
            notes.append(f"--a2l-context {self.a2l_context}: A2L reads only the window in training, the whole clip at inference (ablation)")
        return notes

    def task_config(self) -> dict[str, Any]:
        return {"model": self.config.to_dict(), "loss": self.losses.to_dict(), "discriminator": self.discriminator.to_dict(),
                "a2l_init": self.a2l_init, "critic": self.critic, "freeze_a2l": self.freeze_a2l,
                "preview_every": self.preview_every, "reference": self.reference, "a2l_context": self.a2l_context,
                "augment": json_ready(self.augment), "lip_teacher": self.lip_teacher, "teacher_share": self.teacher_share,
                "teacher_code_dim": self.teacher_code_dim, "warnings": self.notes()}

    def stream_overrides(self) -> dict[str, Any]:
        return {"frames": True, "lip_units": False, "reference": self.reference, "augment": self.augment,
                "utterance_frames": self.config.a2l.max_frames if self.a2l_context == A2L_CONTEXT_UTTERANCE else 0}

    # --- setup ---

    def setup(self, device: torch.device, train: TrainConfig, distributed: bool) -> None:
        if train.window != self.config.window:
            raise ValueError(f"the training window ({train.window}) must equal the model's window ({self.config.window})")
        for note in self.notes():
            warnings.warn(f"cals: {note}", stacklevel=2)
        self.device = device
        self.train = train
        self.module = CalsModel(self.config).to(device)
        if self.a2l_init is not None:
            from cals.train.checkpoint import load_weights

            found = a2l_config_of_run(self.a2l_init)
            if found != self.config.a2l:
                raise ValueError(f"--a2l {self.a2l_init} is an A2L of {found}, this run's A2L is {self.config.a2l}")
            self.module.a2l.load_state_dict(load_weights(self.a2l_init))
        if self.freeze_a2l:
            self.module.a2l.requires_grad_(False)
        self.model = self.module
        self.disc_module = PatchDiscriminator(self.discriminator).to(device)
        self.disc = self.disc_module
        if distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
            self.disc = torch.nn.parallel.DistributedDataParallel(self.disc_module, device_ids=ids)
        self.teacher_module = self.teacher = None
        if self.lip_teacher == LIP_TEACHER_MOUTH:
            self.teacher_module = MouthEncoder(MouthEncoderConfig(self.config.a2l.unit_dim, self.teacher_code_dim)).to(device)
            self.teacher = self.teacher_module
            if distributed:
                self.teacher = torch.nn.parallel.DistributedDataParallel(self.teacher_module, device_ids=ids)
        self.trainable = [p for p in self.module.parameters() if p.requires_grad]
        if self.teacher_module is not None:
            self.trainable += list(self.teacher_module.parameters())
        self.optimizer = torch.optim.Adam(self.trainable, lr=train.lr)
        self.disc_optimizer = torch.optim.Adam(self.disc_module.parameters(), lr=train.lr)
        self.critic_module = None
        if self.critic is not None:
            from cals.models.sync_critic import load_critic

            self.critic_module = load_critic(self.critic, device).eval().requires_grad_(False)
        self.t_s = getattr(getattr(self.critic_module, "config", None), "t_s", LIP_WINDOW_FRAMES)
        reduce = (lambda value: mean_over_ranks(value, device)) if distributed else None
        self.schedule = SyncSchedule.from_config(self.losses, enabled=self.critic_module is not None, reduce=reduce)
        self.rng = random.Random(train.seed)
        self.autocast = device.type == "cuda" and train.amp
        self._preview: Optional[dict[str, Any]] = None

    # --- one step ---

    def _train_mode(self) -> None:
        self.module.train()
        self.disc_module.train()
        if self.freeze_a2l:
            self.module.a2l.eval()

    def audio_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(mel, real, offset)`` for :meth:`CalsModel.window_units`: the utterance mel, its mask and
        the windows' offsets in it (``a2l_context="utterance"``), or the window's mel and mask."""
        if self.a2l_context == A2L_CONTEXT_UTTERANCE:
            return (batch["utterance_mel"].to(self.device), batch["utterance_mask"].to(self.device),
                    batch["utterance_offset"].to(self.device))
        return batch["mel"].to(self.device), batch["mask"].to(self.device), None

    def _segment_starts(self, lengths: torch.Tensor, count: int) -> Optional[torch.Tensor]:
        """``(B, S)`` random starts of S non-overlapping t_s-frame segments inside each window's
        real frames, sorted, S = min(count, segments that fit in the shortest window); None when
        a window is shorter than t_s. Placement: with ``free = n − S·t_s`` spare frames, S sorted
        draws ``u_i`` from ``0..free`` put segment i at ``u_i + i·t_s``."""
        segments = min(count, int(lengths.min()) // self.t_s)
        if segments < 1:
            return None
        starts = []
        for n in lengths.tolist():
            draws = sorted(self.rng.randint(0, int(n) - segments * self.t_s) for _ in range(segments))
            starts.append([u + i * self.t_s for i, u in enumerate(draws)])
        return torch.tensor(starts, dtype=torch.long)

    def sync_losses(self, generated: torch.Tensor, target: torch.Tensor, mel: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """d_av and d_vv on the segments starting at ``starts`` (B, S); gradients flow into
        ``generated`` only."""
        critic, t_s = self.critic_module, self.t_s
        batch, segments = starts.shape
        rows = torch.arange(batch, device=generated.device)[:, None, None]
        frame_index = (starts[:, :, None] + torch.arange(t_s)[None, None]).to(generated.device)  # (B, S, t_s)
        fake = generated[rows, frame_index].flatten(0, 1)  # (B·S, t_s, 3, H, W)
        mel_index = (MEL_ROWS_PER_FRAME * starts[:, :, None] + torch.arange(MEL_ROWS_PER_FRAME * t_s)[None, None]).to(mel.device)
        with torch.no_grad():
            real = critic.embed_video(target[rows, frame_index].flatten(0, 1)).float().reshape(batch, segments, -1)
            audio = critic.embed_audio(mel[rows, mel_index].flatten(0, 1)).float().reshape(batch, segments, -1)
        video = critic.embed_video(fake).float().reshape(batch, segments, -1)
        d_av = sync_av_loss(audio, video)
        d_vv = sync_vv_loss(video, real, self.losses.vv_temperature) if segments > 1 else video.sum() * 0.0
        return {"sync_av": d_av, "sync_vv": d_vv, "sync": d_av + d_vv}

    def train_step(self, batch: dict[str, Any], step: int, lr: float) -> dict[str, float]:
        self._train_mode()
        for optimizer in (self.optimizer, self.disc_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = lr
        target = _as_frames(batch, self.device)
        mel, real = batch["mel"].to(self.device), batch["mask"].to(self.device)
        reference = _as_reference(batch, self.device)
        a2l_mel, a2l_real, offset = self.audio_inputs(batch)
        teacher_metrics: dict[str, torch.Tensor] = {}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.teacher is None:
                generated = self.model(a2l_mel, a2l_real, reference, pose_prior(target), offset)
            else:
                teacher = self.teacher(target.flatten(0, 1)).reshape(*target.shape[:2], -1)
                use = torch.tensor([self.rng.random() < self.teacher_share for _ in range(len(target))], device=self.device)
                generated, units = self.model(a2l_mel, a2l_real, reference, pose_prior(target), offset, teacher, use)
                teacher_metrics["units"] = (units.float() - teacher.detach().float()).pow(2).mean(-1)[real].mean()
        generated = generated.float()
        fake_frames, real_frames = generated[real], target[real]

        # generator
        sync_on = self.schedule.active(step)
        recon = reconstruction_loss(generated, target, real, self.losses.recon_lower_weight)
        # D's weights get no gradient from L_gen; the unwrapped module keeps DDP's reducer out of it
        self.disc_module.requires_grad_(False)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            fake_logits = self.disc_module(fake_frames)
        gan = generator_gan_loss(fake_logits.float())
        self.disc_module.requires_grad_(True)
        loss = self.losses.lambda_recon * recon + self.losses.lambda_gan * gan
        if teacher_metrics:
            loss = loss + self.losses.lambda_units * teacher_metrics["units"]
        metrics: dict[str, float] = {"reference_fallback": float((batch["reference_gap"] <= REFERENCE_MARGIN_FRAMES).float().mean()),
                                     **{k: v.item() for k, v in teacher_metrics.items()}}
        starts = self._segment_starts(batch["lengths"], self.losses.sync_segments) if sync_on else None
        if starts is not None:
            sync = self.sync_losses(generated, target, mel, starts)
            loss = loss + self.losses.lambda_sync * sync["sync"]
            metrics.update({k: v.item() for k, v in sync.items()})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        generator_stepped, grad_norm = step_if_finite(self.optimizer, loss, self.trainable, self.train.grad_clip)

        # discriminator
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):  # one pass (one DDP forward)
            real_logits, fake_logits = self.disc(torch.cat([real_frames, fake_frames.detach()])).split(len(real_frames))
        disc, disc_metrics = discriminator_loss(real_logits.float(), fake_logits.float())
        self.disc_optimizer.zero_grad(set_to_none=True)
        disc.backward()
        disc_stepped, _ = step_if_finite(self.disc_optimizer, disc, self.disc_module.parameters(), self.train.grad_clip)

        if generator_stepped:  # a NaN L_recon would stay in the plateau average for good
            self.schedule.observe(step, recon.item())
        if self.preview_every and (step + 1) % self.preview_every == 0:
            self.preview(step + 1)
        return {"loss": loss.item(), "recon": recon.item(), "gan": gan.item(), "disc": disc.item(),
                **{k: float(v) for k, v in disc_metrics.items()}, **metrics,
                "lambda_sync": self.losses.lambda_sync if sync_on else 0.0, "recon_ema": float(self.schedule.ema),
                "grad_norm": grad_norm, SKIPPED_METRIC: float(not (generator_stepped and disc_stepped))}

    # --- evaluation ---

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The paper's inference inputs on a batch: the window's first frame as reference, pose
        priors from the targets, A2L as in training (``a2l_context``). Returns ``(reference
        (B, 3, H, W), target, generated)``, the last two ``(B, W, 3, H, W)``."""
        self.module.eval()
        target = _as_frames(batch, self.device)
        reference = target[:, 0]
        a2l_mel, a2l_real, offset = self.audio_inputs(batch)
        generated = self.module(a2l_mel, a2l_real, reference, pose_prior(target), offset).float()
        return reference, target, generated

    @torch.no_grad()
    def validate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """L1 and PSNR of generated frames and of the two baselines (module docstring), per real
        frame; with a critic also d_av and d_vv on non-overlapping segments of each window."""
        totals: dict[str, float] = {}
        frames = 0
        sync_totals, sync_count = {"sync_av": 0.0, "sync_vv": 0.0}, 0
        for batch in batches:
            reference, target, generated = self.evaluate_batch(batch)
            real = batch["mask"].to(self.device)
            copy = reference[:, None].expand_as(target)
            half = target.shape[-2] // 2
            paste = torch.cat([target[..., :half, :], copy[..., half:, :]], dim=-2)
            truth = target[real]
            for name, output in (("", generated), ("baseline_", copy), ("paste_", paste)):
                chosen = output[real]
                totals[f"{name}l1"] = totals.get(f"{name}l1", 0.0) + float((chosen - truth).abs().flatten(1).mean(1).sum())
                totals[f"{name}psnr"] = totals.get(f"{name}psnr", 0.0) + float(psnr(chosen, truth).sum())
            frames += int(real.sum())
            lengths = batch["lengths"]
            segments = int(lengths.min()) // self.t_s
            if self.critic_module is not None and segments >= 1:
                starts = (torch.arange(segments) * self.t_s)[None].expand(len(lengths), -1)
                sync = self.sync_losses(generated, target, batch["mel"].to(self.device), starts)
                sync_totals["sync_av"] += float(sync["sync_av"]) * len(lengths)
                sync_totals["sync_vv"] += float(sync["sync_vv"]) * len(lengths)
                sync_count += len(lengths)
        result = {name: value / max(frames, 1) for name, value in totals.items()}
        if sync_count:
            result.update({name: value / sync_count for name, value in sync_totals.items()})
        result["frames"] = float(frames)
        return result

    # --- preview ---

    def _preview_batch(self) -> dict[str, Any]:
        """One fixed window: the first of the val split's unshuffled stream (the train split's
        when there is no val split)."""
        if self._preview is None:
            from dataclasses import replace

            from cals.data import shard_paths
            from cals.stream import StreamConfig, make_loader

            split = self.train.val_split
            try:
                shard_paths(self.train.shards, split)
            except FileNotFoundError:
                split = self.train.train_split
            overrides = {**self.stream_overrides(), "augment": AugmentConfig()}
            config = StreamConfig(shards=self.train.shards, split=split, batch_size=1, window=self.config.window,
                                  resampled=False, shuffle_buffer=0, num_workers=0, seed=self.train.seed, **overrides)
            self._preview = next(iter(make_loader(replace(config, epoch=0))))
        return self._preview

    def preview_image(self) -> np.ndarray:
        """``(3·128, C·128, 3)`` uint8: rows reference, ground truth, generated; C columns."""
        reference, target, generated = self.evaluate_batch(self._preview_batch())
        length = int(self._preview_batch()["lengths"][0])
        columns = np.unique(np.linspace(0, length - 1, min(PREVIEW_FRAMES, length)).round().astype(int))
        rows = [reference[0][None].expand(len(columns), -1, -1, -1), target[0, columns], generated[0, columns]]
        grid = torch.cat([torch.cat(list(row), dim=-1) for row in rows], dim=-2)  # (3, 3H, C·W)
        return title_rows((grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy(), PREVIEW_ROWS)

    def preview(self, step: int) -> Optional[Path]:
        """Write the preview PNG (rank 0) and send it to TensorBoard; returns the PNG's path.
        The global RNG states are restored afterwards (the first preview of a process builds a
        data loader, which draws a seed), so previews never change what training does next and
        a resumed run stays exact."""
        if _rank() != 0:
            return None
        from PIL import Image

        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            image = self.preview_image()
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        folder = Path(self.train.out) / PREVIEW_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"preview-{step:08d}.png"
        Image.fromarray(image).save(path)
        if self.logger is not None:
            self.logger.image("preview", image, step)
        return path

    # --- checkpoints ---

    def weights(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "discriminator": self.disc_module.state_dict(),
                "disc_optimizer": self.disc_optimizer.state_dict(), "schedule": self.schedule.state(),
                "task_rng": self.rng.getstate(),
                **({"teacher": self.teacher_module.state_dict()} if self.teacher_module is not None else {})}

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.module.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.disc_module.load_state_dict(state["discriminator"])
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.schedule.load_state(state["schedule"])
        self.rng.setstate(state["task_rng"])
        if self.teacher_module is not None:
            self.teacher_module.load_state_dict(state["teacher"])


__all__ = ["A2L_CONTEXTS", "A2L_CONTEXT_UTTERANCE", "A2L_CONTEXT_WINDOW", "CalsLossConfig", "CalsTask", "SyncSchedule",
           "a2l_config_of_run", "mean_over_ranks", "psnr"]
