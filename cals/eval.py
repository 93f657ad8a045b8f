"""``cals-eval``: the paper's Table 1 on a shard dataset's test split.

For every sample of the split (in shard order, the first ``limit``):

1. generate the whole clip with :meth:`CalsModel.generate` (:func:`cals.inference.generate_faces`):
   the sample's mel, its first frame as the identity reference (the paper's inference), every
   frame's upper half as the pose prior;
2. PSNR, SSIM and LMD of the generated frames against the real ones (:mod:`cals.metrics`);
3. LSE-D / LSE-C of the generated frames with the sample's audio, and of the real frames (the
   ground-truth row), by one of:

   - **SyncNet v2** (``syncnet=``: syncnet_python's released ``syncnet_v2.model``, scored by
     :func:`cals.sync_score.score_clip` on the 16 kHz audio): the published metric, although
     published numbers come from syncnet_python's own S3FD crops;
   - **the project's sync critic** (``critic=``: a ``cals-train syncnet`` run, scored by
     :func:`cals.models.sync_critic.score_clip` on the mel): the same shifted-distance
     arithmetic on the critic's unit embeddings (distances in [0, 2]), so its numbers are not
     on SyncNet's scale and not comparable with published LSE values;
   - neither: no LSE columns.

**Averaging.** PSNR, SSIM and LMD are averaged over all frames of all clips (frame-pooled; LMD over
the frames where FaceMesh found a face in both images); LSE-D and LSE-C over clips (one score
per clip, as syncnet_python and the Wav2Lip evaluation compute them).

**Ground-truth row.** PSNR is "–" (the real frames against themselves: infinite), SSIM is the
SSIM of the real frames with themselves and LMD their landmarks against themselves (1 and 0 by
construction: a check of the plumbing), LSE from the real frames.

A clip that cannot be evaluated (too short for the sync scorer, a model error on it) is kept in
the per-clip JSON with its error and counted in the summary; it never stops the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from cals.constants import PSNR_CAP_DB
from cals.data import iter_samples
from cals.inference import generate_faces
from cals.metrics import MouthLandmarker, landmark_distance, psnr_frames, ssim_frames

#: Columns of the table, in the paper's order.
TABLE_COLUMNS = ("PSNR", "SSIM", "LMD", "LSE-D", "LSE-C")
#: Decimals of the table (the paper's three).
TABLE_DECIMALS = 3


@dataclass(frozen=True)
class SyncScorer:
    """A LSE-D/LSE-C scorer: ``score(frames uint8 (T,128,128,3), audio int16 (640T,), mel (4T,80))``
    → :class:`cals.sync_score.SyncScore`; ``kind`` is "syncnet_v2" or "critic"."""

    kind: str
    model: str
    score: Callable[[np.ndarray, np.ndarray, np.ndarray], Any]

    def describe(self) -> str:
        if self.kind == "syncnet_v2":
            return f"SyncNet v2 ({self.model}), scored as syncnet_python does (offsets ±15 frames)"
        return (f"the project's sync critic ({self.model}), not SyncNet: its distances are on another scale, "
                "so LSE-D/LSE-C are comparable between runs scored with this critic only")


def syncnet_scorer(path: str | Path, device: str = "cpu") -> SyncScorer:
    """SyncNet v2 from ``syncnet_v2.model`` (FileNotFoundError says where to get it)."""
    from cals.models.syncnet_v2 import load_syncnet_v2
    from cals.sync_score import score_clip

    model = load_syncnet_v2(path, device=device)
    return SyncScorer("syncnet_v2", str(path), lambda frames, audio, mel: score_clip(frames, audio, model))


def critic_scorer(path: str | Path, device: str = "cpu") -> SyncScorer:
    """The project's sync critic from a ``cals-train syncnet`` run folder (or its .safetensors)."""
    from cals.models.sync_critic import load_critic, score_clip

    critic = load_critic(path, device=device)
    return SyncScorer("critic", str(path), lambda frames, audio, mel: score_clip(frames, np.asarray(mel, np.float32), critic))


@dataclass
class ClipEval:
    """One clip's numbers (None where not computed; ``error`` says why)."""

    key: str
    frames: int
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    lmd: Optional[float] = None
    lmd_frames: int = 0
    no_face_generated: int = 0
    no_face_real: int = 0
    lse_d: Optional[float] = None
    lse_c: Optional[float] = None
    offset: Optional[int] = None
    gt_ssim: Optional[float] = None
    gt_lmd: Optional[float] = None
    gt_lmd_frames: int = 0
    gt_lse_d: Optional[float] = None
    gt_lse_c: Optional[float] = None
    gt_offset: Optional[int] = None
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def progress_line(self) -> str:
        """One line for a progress log: key, frames, the numbers computed, the error if any."""
        line = f"{self.key}: {self.frames} frames"
        if self.psnr is not None:
            line += f", PSNR {self.psnr:.3f}, SSIM {self.ssim:.3f}, LMD {'–' if self.lmd is None else f'{self.lmd:.3f}'}"
        if self.lse_d is not None:
            line += f", LSE-D {self.lse_d:.3f}, LSE-C {self.lse_c:.3f}"
        if self.error:
            line += f" ({self.error})"
        return line


def _pooled(clips: list[ClipEval], value: str, weight: str) -> Optional[float]:
    """Frame-pooled mean: Σ weight·value / Σ weight over the clips that have the value."""
    pairs = [(getattr(c, value), getattr(c, weight)) for c in clips if getattr(c, value) is not None and getattr(c, weight)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass
class EvalReport:
    """All clips of one evaluation, their summary rows, and how they were measured."""

    shards: str
    split: str
    ckpt: str
    scorer: Optional[SyncScorer]
    clips: list[ClipEval] = field(default_factory=list)

    @property
    def method(self) -> str:
        return f"CALS ({Path(self.ckpt).name})"

    def rows(self) -> dict[str, dict[str, Optional[float]]]:
        """``{"ground truth": {column: value}, method: {...}}`` (None: not measured)."""
        ok = [c for c in self.clips if c.psnr is not None]
        generated = {
            "PSNR": _pooled(ok, "psnr", "frames"),
            "SSIM": _pooled(ok, "ssim", "frames"),
            "LMD": _pooled(ok, "lmd", "lmd_frames"),
            "LSE-D": _mean(c.lse_d for c in ok),
            "LSE-C": _mean(c.lse_c for c in ok),
        }
        truth = {
            "PSNR": None,
            "SSIM": _pooled(ok, "gt_ssim", "frames"),
            "LMD": _pooled(ok, "gt_lmd", "gt_lmd_frames"),
            "LSE-D": _mean(c.gt_lse_d for c in ok),
            "LSE-C": _mean(c.gt_lse_c for c in ok),
        }
        return {"ground truth": truth, self.method: generated}

    def summary(self) -> dict[str, Any]:
        return {
            "clips": len(self.clips),
            "clips_failed": sum(1 for c in self.clips if c.psnr is None),
            "clips_with_errors": sum(1 for c in self.clips if c.error is not None),
            "frames": sum(c.frames for c in self.clips if c.psnr is not None),
            "lmd_frames": sum(c.lmd_frames for c in self.clips),
            "frames_no_face_generated": sum(c.no_face_generated for c in self.clips),
            "frames_no_face_real": sum(c.no_face_real for c in self.clips),
            "lse_clips": sum(1 for c in self.clips if c.lse_d is not None),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "split": self.split,
            "ckpt": self.ckpt,
            "method": self.method,
            "sync_scorer": None if self.scorer is None else {"kind": self.scorer.kind, "model": self.scorer.model, "note": self.scorer.describe()},
            "definitions": {
                "PSNR": f"dB on uint8 RGB 128x128 crops, per frame (identical frames capped at {PSNR_CAP_DB:g} dB), mean over all frames",
                "SSIM": "Wang et al. 2004 (11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03), per RGB channel then averaged; mean over all frames",
                "LMD": "mean Euclidean distance of the 40 FaceMesh FACEMESH_LIPS landmarks, pixels of the 128x128 crop; mean over frames with a face in both images",
                "LSE": "per clip; mean over clips",
            },
            "table": self.rows(),
            "summary": self.summary(),
            "clips": [c.to_dict() for c in self.clips],
        }

    def to_markdown(self) -> str:
        def cell(value: Optional[float]) -> str:
            return "–" if value is None or not math.isfinite(value) else f"{value:.{TABLE_DECIMALS}f}"

        lines = [
            f"# {self.method} on {self.shards} ({self.split})",
            "",
            "| method | " + " | ".join(TABLE_COLUMNS) + " |",
            "| --- | " + " | ".join("---" for _ in TABLE_COLUMNS) + " |",
        ]
        for name, row in self.rows().items():
            lines.append(f"| {name} | " + " | ".join(cell(row[c]) for c in TABLE_COLUMNS) + " |")
        stats = self.summary()
        lines += [
            "",
            f"{stats['clips'] - stats['clips_failed']} of {stats['clips']} clips evaluated ({stats['frames']} frames); "
            f"{stats['clips_failed']} failed, {stats['clips_with_errors']} with an error (see the JSON).",
            f"LMD over {stats['lmd_frames']} frames; FaceMesh found no face in {stats['frames_no_face_generated']} generated "
            f"and {stats['frames_no_face_real']} real frames (excluded).",
            "LSE-D / LSE-C: " + (self.scorer.describe() if self.scorer else "not measured (no --syncnet or --critic)") + f"; {stats['lse_clips']} clips scored.",
            "PSNR/SSIM/LMD on the 128x128 crops; PSNR, SSIM and LMD are frame-pooled means, LSE a mean over clips.",
        ]
        return "\n".join(lines) + "\n"


def _score(scorer: SyncScorer, frames: np.ndarray, audio: np.ndarray, mel: np.ndarray):
    try:
        return scorer.score(frames, audio, mel), None
    except ValueError as error:  # too short to score
        return None, str(error)


def evaluate_clip(model, sample, landmarker: MouthLandmarker, scorer: Optional[SyncScorer]) -> ClipEval:
    """Every number of one :class:`~cals.shard_format.ClipSample` (see the module docstring)."""
    real = sample.frames
    result = ClipEval(key=sample.key, frames=int(real.shape[0]))
    generated = generate_faces(model, real, sample.mel)
    result.psnr = float(np.minimum(psnr_frames(generated, real), PSNR_CAP_DB).mean())
    result.ssim = float(ssim_frames(generated, real).mean())
    result.gt_ssim = float(ssim_frames(real, real).mean())
    real_points, generated_points = landmarker(real), landmarker(generated)
    lmd = landmark_distance(generated_points, real_points)
    gt_lmd = landmark_distance(real_points, real_points)
    result.lmd, result.lmd_frames = lmd.value, lmd.used
    result.no_face_generated, result.no_face_real = lmd.no_face_generated, lmd.no_face_real
    result.gt_lmd, result.gt_lmd_frames = gt_lmd.value, gt_lmd.used
    if scorer is not None:
        score, error = _score(scorer, generated, sample.audio, sample.mel)
        if score is not None:
            result.lse_d, result.lse_c, result.offset = score.min_dist, score.conf, score.offset
        truth, error_truth = _score(scorer, real, sample.audio, sample.mel)
        if truth is not None:
            result.gt_lse_d, result.gt_lse_c, result.gt_offset = truth.min_dist, truth.conf, truth.offset
        errors = sorted({e for e in (error, error_truth) if e})
        result.error = "; ".join(errors) or None
    return result


def evaluate(
    shards: str | Path,
    ckpt: str | Path,
    split: str = "test",
    syncnet: Optional[str | Path] = None,
    critic: Optional[str | Path] = None,
    limit: Optional[int] = None,
    out: Optional[str | Path] = None,
    device: str = "cpu",
    progress: Optional[Callable[[ClipEval], None]] = None,
) -> EvalReport:
    """Evaluate the CALS model at ``ckpt`` on ``split`` of the dataset ``shards``.

    Args:
        shards: a cals-prep dataset folder (``OUT/NAME``).
        ckpt: a ``cals-train cals`` run folder or a .safetensors inside one.
        syncnet, critic: the LSE scorer (at most one; see the module docstring).
        limit: only the first N samples.
        out: write ``<out>.md`` (the table) and ``<out>.json`` (per-clip numbers); a ``.md`` or
            ``.json`` suffix on ``out`` is dropped first.
        progress: called with each clip's result.
    Raises:
        ValueError: both ``syncnet`` and ``critic``; a ``device`` torch does not know; a model
            that does not load.
        FileNotFoundError: ``shards`` not a folder, no shards of ``split``, no checkpoint, no
            folder to write ``out`` in, no SyncNet weights.
    """
    import torch

    from cals.models.cals_model import load_cals_model

    if not Path(shards).is_dir():
        raise FileNotFoundError(f"--shards {shards} is not a folder")
    if not Path(ckpt).exists():
        raise FileNotFoundError(f"--ckpt {ckpt} does not exist")
    if syncnet is not None and critic is not None:
        raise ValueError("give --syncnet or --critic, not both")
    if out is not None and not Path(out).parent.is_dir():
        raise FileNotFoundError(f"cannot write {out}: folder {Path(out).parent} does not exist")
    try:
        torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device!r} is not a torch device: {error}") from error
    model = load_cals_model(ckpt, device=device)
    scorer = syncnet_scorer(syncnet, device) if syncnet is not None else critic_scorer(critic, device) if critic is not None else None
    report = EvalReport(shards=str(shards), split=split, ckpt=str(ckpt), scorer=scorer)
    with MouthLandmarker() as landmarker:
        for index, sample in enumerate(iter_samples(shards, split=split)):
            if limit is not None and index >= limit:
                break
            try:
                result = evaluate_clip(model, sample, landmarker, scorer)
            except (ValueError, RuntimeError) as error:  # recorded, counted, never fatal to the run
                result = ClipEval(key=sample.key, frames=sample.num_frames, error=f"{type(error).__name__}: {error}")
            report.clips.append(result)
            if progress is not None:
                progress(result)
    if out is not None:
        write_report(report, out)
    return report


def report_paths(out: str | Path) -> tuple[Path, Path]:
    """``(<out>.md, <out>.json)``; a ``.md``/``.json`` suffix on ``out`` is dropped first."""
    out = Path(out)
    if out.suffix.lower() in (".md", ".json"):
        out = out.with_suffix("")
    return out.with_name(out.name + ".md"), out.with_name(out.name + ".json")


def write_report(report: EvalReport, out: str | Path) -> tuple[Path, Path]:
    """Write the markdown table and the JSON; returns their paths."""
    markdown, data = report_paths(out)
    markdown.write_text(report.to_markdown(), encoding="utf-8")
    data.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return markdown, data


__all__ = ["ClipEval", "EvalReport", "SyncScorer", "critic_scorer", "evaluate", "evaluate_clip", "report_paths", "syncnet_scorer", "write_report"]
