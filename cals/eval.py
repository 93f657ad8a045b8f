"""``cals-eval``: the paper's Table 1 on a shard dataset's test split.

For every sample of the split (in shard order, the first ``limit``):

1. generate the whole clip with :meth:`CalsModel.generate` (:func:`cals.inference.generate_faces`):
   the sample's mel, its first frame as the identity reference (the paper's inference; training draws it outside the window, :func:`cals.stream.reference_index`), every
   frame's upper half as the pose prior;
2. PSNR, SSIM and LMD of the generated frames against the real ones (:mod:`cals.metrics`; LMD on
   the 68-point scheme's 20 mouth points, LMD-40 on FaceMesh's 40 lip points);
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

4. **audio dependence**: the same generation driven by two wrong audios, each scored against the
   clip's *real* frames and *real* audio exactly as the true-audio row (only the driving audio
   changes), so a model that ignores its audio scores the same on all three rows and one that
   follows it loses on the wrong ones:

   - **audio shifted** :data:`~cals.constants.AUDIO_SHIFT_FRAMES` (20) frames: the clip's mel and
     audio moved circularly by whole frames (frame ``t`` gets the sound of frame ``t − 20 mod T``),
     more than SyncNet's ±15-frame offset search, so LSE cannot find the moved sync again; a clip
     shorter than 2 × 20 frames has no such row (recorded);
   - **another clip's audio**: the next clip of the split (the last takes the first), its frames'
     sound looped from its start or cut to this clip's length; a split of one clip has no such
     row;
   - **audio gain** = true − shifted, per column (positive is better for PSNR, SSIM, LSE-C,
     lower-half PSNR and aperture r; negative for LMD and LSE-D); about 0 for an audio-blind model.

   Two columns beyond the paper's: **PSNR-lower**, PSNR of the rows the pose prior hides (the
   mouth; :func:`cals.metrics.lower_psnr_frames`), and **aperture r**, the Pearson correlation of
   the generated with the real FaceMesh mouth aperture over a clip's frames
   (:func:`cals.metrics.aperture_correlation`; needs no SyncNet weights).

**Averaging.** PSNR, SSIM and LMD are averaged over all frames of all clips (frame-pooled; LMD over
the frames where FaceMesh found a face in both images); LSE-D and LSE-C over clips (one score
per clip, as syncnet_python and the Wav2Lip evaluation compute them); aperture r over clips,
weighted by the frames it used.

**Ground-truth row.** PSNR is "–" (the real frames against themselves: infinite), SSIM is the
SSIM of the real frames with themselves and LMD their landmarks against themselves (1 and 0 by
construction: a check of the plumbing), aperture r the real apertures with themselves (1), LSE
from the real frames.

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

from cals.constants import AUDIO_SHIFT_FRAMES, MEL_ROWS_PER_FRAME, PSNR_CAP_DB
from cals.data import iter_samples
from cals.inference import generate_faces
from cals.metrics import MouthLandmarker, aperture_correlation, landmark_distance, lower_psnr_frames, psnr_frames, ssim_frames

#: Columns of the table: the paper's five (LMD on the 68-point scheme's 20 mouth points), then
#: LMD on FaceMesh's 40 lip points, the lower-half PSNR and the aperture correlation.
TABLE_COLUMNS = ("PSNR", "SSIM", "LMD", "LSE-D", "LSE-C", "LMD-40", "PSNR-lower", "aperture r")
#: Decimals of the table (the paper's three).
TABLE_DECIMALS = 3
#: The driving audios of the generated rows (module docstring, step 4).
AUDIO_CONDITIONS = ("true", "shifted", "other")
#: Name of the audio-gain row of the table.
GAIN_ROW = "audio gain (true − shifted)"


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
class AudioEval:
    """One generation of a clip (driven by one audio) against the real frames and real audio
    (None where not computed; ``error`` says why)."""

    psnr: Optional[float] = None
    ssim: Optional[float] = None
    psnr_lower: Optional[float] = None
    lmd: Optional[float] = None
    lmd_frames: int = 0
    lmd_40: Optional[float] = None
    no_face_generated: int = 0
    aperture_r: Optional[float] = None
    aperture_frames: int = 0
    lse_d: Optional[float] = None
    lse_c: Optional[float] = None
    offset: Optional[int] = None
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ClipEval:
    """One clip's numbers: ``generated`` maps each of :data:`AUDIO_CONDITIONS` that was run to its
    :class:`AudioEval` (a condition left out: ``skipped`` says why); ``gt_*`` the ground-truth
    row; ``error`` a clip-level error."""

    key: str
    frames: int
    generated: dict[str, AudioEval] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    no_face_real: int = 0
    gt_ssim: Optional[float] = None
    gt_lmd: Optional[float] = None
    gt_lmd_frames: int = 0
    gt_lmd_40: Optional[float] = None
    gt_aperture_r: Optional[float] = None
    gt_aperture_frames: int = 0
    gt_lse_d: Optional[float] = None
    gt_lse_c: Optional[float] = None
    gt_offset: Optional[int] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """The true-audio row was computed."""
        return "true" in self.generated

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["generated"] = {name: row.to_dict() for name, row in self.generated.items()}
        return data

    def progress_line(self) -> str:
        """One line for a progress log: key, frames, the true-audio numbers and the audio gain in
        lower-half PSNR, the error if any."""
        line = f"{self.key}: {self.frames} frames"
        true, shifted = self.generated.get("true"), self.generated.get("shifted")
        if true is not None:
            line += f", PSNR {true.psnr:.3f}, SSIM {true.ssim:.3f}, LMD {'–' if true.lmd is None else f'{true.lmd:.3f}'}"
            if true.lse_d is not None:
                line += f", LSE-D {true.lse_d:.3f}, LSE-C {true.lse_c:.3f}"
            if shifted is not None:
                line += f", lower-half PSNR gain over shifted audio {true.psnr_lower - shifted.psnr_lower:+.3f} dB"
        errors = [self.error] if self.error else []
        errors += [f"{name}: {row.error}" for name, row in self.generated.items() if row.error]
        if errors:
            line += f" ({'; '.join(errors)})"
        return line


def _pooled(pairs: Iterable[tuple[Optional[float], int]]) -> Optional[float]:
    """Weighted mean Σ weight·value / Σ weight of ``(value, weight)`` pairs, those with a value."""
    present = [(v, w) for v, w in pairs if v is not None and w]
    total = sum(w for _, w in present)
    return sum(v * w for v, w in present) / total if total else None


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _row(pairs: list[tuple[AudioEval, int]]) -> dict[str, Optional[float]]:
    """One table row from ``(row of a clip, that clip's frames)`` pairs (module docstring:
    averaging)."""
    return {
        "PSNR": _pooled((r.psnr, n) for r, n in pairs),
        "SSIM": _pooled((r.ssim, n) for r, n in pairs),
        "LMD": _pooled((r.lmd, r.lmd_frames) for r, _ in pairs),
        "LSE-D": _mean(r.lse_d for r, _ in pairs),
        "LSE-C": _mean(r.lse_c for r, _ in pairs),
        "LMD-40": _pooled((r.lmd_40, r.lmd_frames) for r, _ in pairs),
        "PSNR-lower": _pooled((r.psnr_lower, n) for r, n in pairs),
        "aperture r": _pooled((r.aperture_r, r.aperture_frames) for r, _ in pairs),
    }


@dataclass
class FullFrameClip:
    """Full-frame LSE of one clip: ``generated`` / ``real`` one ``(LSE-D, LSE-C, offset)`` dict
    per face track (``precropped``: one), a clip's value the mean over its tracks; ``error``
    why a side has none."""

    key: str
    generated: list[dict[str, Any]] = field(default_factory=list)
    real: list[dict[str, Any]] = field(default_factory=list)
    error: Optional[str] = None

    @staticmethod
    def _clip_mean(tracks: list[dict[str, Any]], name: str) -> Optional[float]:
        return _mean(t.get(name) for t in tracks)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FullFrameLse:
    """LSE-D / LSE-C of the pasted-back full-frame videos and of the real ones, scored by a
    protocol of ``cals-sync score`` (filled by ``pipeline.eval_video``; plain data here).

    Attributes:
        protocol: ``syncnet_python`` or ``precropped``; ``recipe`` the corpus recipe that chose it
            (None: given with ``--protocol``).
        model, model_sha256: the SyncNet weights and their file digest.
        detector: the face detector of the protocol (None: no detection).
        clips: per clip, in split order.
    """

    protocol: str
    recipe: Optional[str]
    model: str
    model_sha256: str
    detector: Optional[str]
    clips: list[FullFrameClip] = field(default_factory=list)

    def rows(self, method: str) -> dict[str, dict[str, Optional[float]]]:
        """``{"ground truth": {"LSE-D", "LSE-C"}, method: {...}}``: means over clips of each clip's
        mean over its tracks (clips with a score on that side)."""
        def side(name: str) -> dict[str, Optional[float]]:
            return {column: _mean(FullFrameClip._clip_mean(getattr(c, name), key) for c in self.clips)
                    for column, key in (("LSE-D", "lse_d"), ("LSE-C", "lse_c"))}

        return {"ground truth": side("real"), method: side("generated")}

    def describe(self) -> str:
        chosen = f"the {self.recipe} corpus's protocol" if self.recipe else "given with --protocol"
        return (f"protocol {self.protocol} ({chosen}), SyncNet {self.model} (sha256 {self.model_sha256[:16]}), "
                f"detector {self.detector or 'none (frames as they are)'}")

    def to_dict(self, method: str) -> dict[str, Any]:
        return {"protocol": self.protocol, "recipe": self.recipe, "model": self.model, "model_sha256": self.model_sha256,
                "detector": self.detector, "table": self.rows(method), "clips": [c.to_dict() for c in self.clips]}


@dataclass
class EvalReport:
    """All clips of one evaluation, their summary rows, and how they were measured."""

    shards: str
    split: str
    ckpt: str
    scorer: Optional[SyncScorer]
    clips: list[ClipEval] = field(default_factory=list)
    full_frame: Optional[FullFrameLse] = None

    @property
    def method(self) -> str:
        return f"CALS ({Path(self.ckpt).name})"

    def row_names(self) -> dict[str, str]:
        """Table row name of each of :data:`AUDIO_CONDITIONS`."""
        return {
            "true": self.method,
            "shifted": f"{self.method}, audio shifted {AUDIO_SHIFT_FRAMES} frames",
            "other": f"{self.method}, another clip's audio",
        }

    def rows(self) -> dict[str, dict[str, Optional[float]]]:
        """``{"ground truth": {column: value}, method: {...}, <shifted>, <other>, GAIN_ROW}``
        (None: not measured). A condition's row pools the clips that have it."""
        ok = [c for c in self.clips if c.ok]
        truth = {
            "PSNR": None,
            "SSIM": _pooled((c.gt_ssim, c.frames) for c in ok),
            "LMD": _pooled((c.gt_lmd, c.gt_lmd_frames) for c in ok),
            "LSE-D": _mean(c.gt_lse_d for c in ok),
            "LSE-C": _mean(c.gt_lse_c for c in ok),
            "LMD-40": _pooled((c.gt_lmd_40, c.gt_lmd_frames) for c in ok),
            "PSNR-lower": None,
            "aperture r": _pooled((c.gt_aperture_r, c.gt_aperture_frames) for c in ok),
        }
        table = {"ground truth": truth}
        for condition, name in self.row_names().items():
            table[name] = _row([(c.generated[condition], c.frames) for c in ok if condition in c.generated])
        table[GAIN_ROW] = self.audio_gain()
        return table

    def paired_rows(self) -> tuple[dict[str, Optional[float]], dict[str, Optional[float]]]:
        """The true-audio and the shifted-audio rows on the same clips: those that have both (a
        clip too short to shift has only the first)."""
        both = [c for c in self.clips if "true" in c.generated and "shifted" in c.generated]
        return (_row([(c.generated["true"], c.frames) for c in both]), _row([(c.generated["shifted"], c.frames) for c in both]))

    def audio_gain(self) -> dict[str, Optional[float]]:
        """True − shifted audio per column, on the clips that have both rows (None: not measured)."""
        true, shifted = self.paired_rows()
        return {column: None if true[column] is None or shifted[column] is None else true[column] - shifted[column]
                for column in TABLE_COLUMNS}

    def summary(self) -> dict[str, Any]:
        true = [c.generated["true"] for c in self.clips if c.ok]
        return {
            "clips": len(self.clips),
            "clips_failed": sum(1 for c in self.clips if not c.ok),
            "clips_with_errors": sum(1 for c in self.clips if c.error is not None or any(r.error for r in c.generated.values())),
            "frames": sum(c.frames for c in self.clips if c.ok),
            "lmd_frames": sum(r.lmd_frames for r in true),
            "frames_no_face_generated": sum(r.no_face_generated for r in true),
            "frames_no_face_real": sum(c.no_face_real for c in self.clips),
            "lse_clips": sum(1 for r in true if r.lse_d is not None),
            **{f"{condition}_clips": sum(1 for c in self.clips if condition in c.generated) for condition in AUDIO_CONDITIONS[1:]},
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
                "LMD": "mean Euclidean distance of the 68-point scheme's 20 mouth points 48-67 (read off FaceMesh, cals.metrics.MOUTH68_FACEMESH), pixels of the aligned 128x128 crop (Chen et al. 2019's fixed-size normalisation); mean over frames with a face in both images",
                "LMD-40": "the same on the 40 FaceMesh FACEMESH_LIPS landmarks",
                "LSE": "per clip; mean over clips; every generated row is scored with the clip's own (true) audio",
                "PSNR-lower": "PSNR of the rows the pose prior hides (the lower half), as PSNR",
                "aperture r": "Pearson correlation over a clip's frames of the FaceMesh mouth aperture (inner lips 13-14 / eye corners 33-263), generated vs real; mean over clips weighted by frames with a face in both",
                "shifted": f"generated from the clip's audio moved circularly by {AUDIO_SHIFT_FRAMES} frames, measured against the real frames and real audio",
                "other": "generated from the next clip's audio (the last clip: the first's), looped or cut to length, measured against the real frames and real audio",
                "audio gain": "true-audio row minus shifted-audio row, per column, on the clips with both (a row of fewer clips says so in the Markdown)",
            },
            "table": self.rows(),
            "audio_gain": self.audio_gain(),
            "summary": self.summary(),
            "clips": [c.to_dict() for c in self.clips],
            "full_frame": None if self.full_frame is None else self.full_frame.to_dict(self.method),
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
        stats = self.summary()
        evaluated = stats["clips"] - stats["clips_failed"]
        counts = {self.row_names()[condition]: stats[f"{condition}_clips"] for condition in AUDIO_CONDITIONS[1:]}
        for name, row in self.rows().items():
            label = f"{name} ({counts[name]} of {evaluated} clips)" if counts.get(name, evaluated) < evaluated else name
            lines.append(f"| {label} | " + " | ".join(cell(row[c]) for c in TABLE_COLUMNS) + " |")
        lines += [
            "",
            f"{stats['clips'] - stats['clips_failed']} of {stats['clips']} clips evaluated ({stats['frames']} frames); "
            f"{stats['clips_failed']} failed, {stats['clips_with_errors']} with an error (see the JSON).",
            f"LMD over {stats['lmd_frames']} frames; FaceMesh found no face in {stats['frames_no_face_generated']} generated "
            f"and {stats['frames_no_face_real']} real frames (excluded).",
            "LSE-D / LSE-C: " + (self.scorer.describe() if self.scorer else "not measured (no --syncnet or --critic)") + f"; {stats['lse_clips']} clips scored.",
            "PSNR/SSIM/LMD on the 128x128 crops; PSNR, SSIM and LMD are frame-pooled means, LSE a mean over clips.",
            f"Audio rows: every row is measured against the real frames and the real audio; only the driving audio changes: "
            f"shifted circularly by {AUDIO_SHIFT_FRAMES} frames ({stats['shifted_clips']} clips), or the next clip's, looped or cut "
            f"({stats['other_clips']} clips). Audio gain = true − shifted (about 0 for a model that ignores its audio).",
        ]
        if self.full_frame is not None:
            full = self.full_frame
            scored = sum(1 for c in full.clips if c.generated)
            lines += ["", f"## Full-frame LSE ({len(full.clips)} clips, {scored} scored)", "",
                      "| method | LSE-D | LSE-C |", "| --- | --- | --- |"]
            for name, row in full.rows(self.method).items():
                lines.append(f"| {name} | {cell(row['LSE-D'])} | {cell(row['LSE-C'])} |")
            lines += ["", "The generated clip pasted back into its source frames, and the real source span, each scored as a video: "
                      + full.describe() + "; mean over clips of each clip's mean over its face tracks."]
            lines += [f"{c.key}: {c.error}" for c in full.clips if c.error]
        return "\n".join(lines) + "\n"


def _score(scorer: SyncScorer, frames: np.ndarray, audio: np.ndarray, mel: np.ndarray):
    try:
        return scorer.score(frames, audio, mel), None
    except ValueError as error:  # too short to score
        return None, str(error)


def mel_of_frames(mel: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The mel of frames ``index`` of a clip, frame after frame.

    Args:
        mel: ``(4F, 80)`` mel of a clip of F frames.
        index: ``(T,)`` int frame indices in ``[0, F)``.
    Returns:
        ``(4T, 80)``: frame ``t`` carries the rows of frame ``index[t]``.
    """
    mel = np.asarray(mel)
    frames = mel.shape[0] // MEL_ROWS_PER_FRAME
    return mel.reshape(frames, MEL_ROWS_PER_FRAME, -1)[index].reshape(-1, mel.shape[1])


def shifted_mel(mel: np.ndarray, shift: int = AUDIO_SHIFT_FRAMES) -> np.ndarray:
    """A clip's ``(4T, 80)`` mel moved circularly by ``shift`` frames: frame ``t`` gets the sound
    of frame ``(t − shift) mod T``. ValueError when the clip has fewer than ``2·shift`` frames (the
    move would be shorter than ``shift`` the other way round)."""
    frames = np.asarray(mel).shape[0] // MEL_ROWS_PER_FRAME
    if frames < 2 * shift:
        raise ValueError(f"clip of {frames} frames is shorter than 2 x {shift}: no circular shift of {shift} frames")
    return mel_of_frames(mel, (np.arange(frames) - shift) % frames)


def looped_mel(mel: np.ndarray, frames: int) -> np.ndarray:
    """Another clip's ``(4F, 80)`` mel looped from its start, or cut, to ``frames`` frames."""
    return mel_of_frames(mel, np.arange(frames) % (np.asarray(mel).shape[0] // MEL_ROWS_PER_FRAME))


def _measure(model, sample, mel: np.ndarray, real_mouth, landmarker: MouthLandmarker, scorer: Optional[SyncScorer]) -> AudioEval:
    """Generate ``sample`` driven by ``mel``; every number against its real frames and audio."""
    real = sample.frames
    generated = generate_faces(model, real, mel)
    row = AudioEval(
        psnr=float(np.minimum(psnr_frames(generated, real), PSNR_CAP_DB).mean()),
        ssim=float(ssim_frames(generated, real).mean()),
        psnr_lower=float(np.minimum(lower_psnr_frames(generated, real), PSNR_CAP_DB).mean()),
    )
    mouth = landmarker.measure(generated)
    lmd = landmark_distance(mouth.mouth68, real_mouth.mouth68)
    row.lmd, row.lmd_frames, row.no_face_generated = lmd.value, lmd.used, lmd.no_face_generated
    row.lmd_40 = landmark_distance(mouth.lips, real_mouth.lips).value
    aperture = aperture_correlation(mouth.aperture, real_mouth.aperture)
    row.aperture_r, row.aperture_frames = aperture.value, aperture.used
    if scorer is not None:
        score, row.error = _score(scorer, generated, sample.audio, sample.mel)
        if score is not None:
            row.lse_d, row.lse_c, row.offset = score.min_dist, score.conf, score.offset
    return row


def evaluate_clip(model, sample, landmarker: MouthLandmarker, scorer: Optional[SyncScorer],
                  other_mel: Optional[np.ndarray] = None) -> ClipEval:
    """Every number of one :class:`~cals.shard_format.ClipSample` (see the module docstring).

    ``other_mel``: ``(4F, 80)`` mel of another clip, for the other-audio row (None: no such row)."""
    real = sample.frames
    result = ClipEval(key=sample.key, frames=int(real.shape[0]))
    real_mouth = landmarker.measure(real)
    result.generated["true"] = _measure(model, sample, sample.mel, real_mouth, landmarker, scorer)
    result.gt_ssim = float(ssim_frames(real, real).mean())
    gt_lmd = landmark_distance(real_mouth.mouth68, real_mouth.mouth68)
    result.no_face_real, result.gt_lmd, result.gt_lmd_frames = gt_lmd.no_face_real, gt_lmd.value, gt_lmd.used
    result.gt_lmd_40 = landmark_distance(real_mouth.lips, real_mouth.lips).value
    gt_aperture = aperture_correlation(real_mouth.aperture, real_mouth.aperture)
    result.gt_aperture_r, result.gt_aperture_frames = gt_aperture.value, gt_aperture.used
    try:
        result.generated["shifted"] = _measure(model, sample, shifted_mel(sample.mel), real_mouth, landmarker, scorer)
    except ValueError as error:
        result.skipped["shifted"] = str(error)
    if other_mel is None:
        result.skipped["other"] = "no other clip in the split"
    else:
        result.generated["other"] = _measure(model, sample, looped_mel(other_mel, result.frames), real_mouth, landmarker, scorer)
    if scorer is not None:
        truth, result.error = _score(scorer, real, sample.audio, sample.mel)
        if truth is not None:
            result.gt_lse_d, result.gt_lse_c, result.gt_offset = truth.min_dist, truth.conf, truth.offset
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
    evaluate_model(model, report, limit=limit, progress=progress)
    if out is not None:
        write_report(report, out)
    return report


def evaluate_model(model, report: EvalReport, limit: Optional[int] = None, progress: Optional[Callable[[ClipEval], None]] = None) -> EvalReport:
    """Evaluate ``model`` (anything with :meth:`CalsModel.generate`, e.g. :class:`ZeroUnits`) on
    ``report.split`` of ``report.shards``, scored by ``report.scorer``; appends to
    ``report.clips`` and returns ``report``."""
    scorer = report.scorer

    def one(sample, other_mel: Optional[np.ndarray]) -> None:
        try:
            result = evaluate_clip(model, sample, landmarker, scorer, other_mel)
        except (ValueError, RuntimeError) as error:  # recorded, counted, never fatal to the run
            result = ClipEval(key=sample.key, frames=sample.num_frames, error=f"{type(error).__name__}: {error}")
        report.clips.append(result)
        if progress is not None:
            progress(result)

    # each clip is evaluated when the next arrives (its audio drives the other-audio row); the last
    # one takes the first clip's audio
    first_mel, pending = None, None
    with MouthLandmarker() as landmarker:
        for index, sample in enumerate(iter_samples(report.shards, split=report.split)):
            if limit is not None and index >= limit:
                break
            if pending is None:
                first_mel = sample.mel
            else:
                one(pending, sample.mel)
            pending = sample
        if pending is not None:
            one(pending, None if first_mel is pending.mel else first_mel)
    return report


class ZeroUnits:
    """The audio-blind baseline of a CALS model: the same model with its lip units set to zero,
    so its generator never hears the audio (its audio gain is 0 by construction)."""

    def __init__(self, model) -> None:
        self.model = model

    def generate(self, mel, reference, targets):
        """:meth:`CalsModel.generate` with A2L's output replaced by zeros of its shape."""
        from unittest import mock

        import torch

        units = self.model.lip_units
        with mock.patch.object(self.model, "lip_units", lambda sound: torch.zeros_like(units(sound))):
            return self.model.generate(mel, reference, targets)


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


__all__ = ["AUDIO_CONDITIONS", "AudioEval", "ClipEval", "EvalReport", "FullFrameClip", "FullFrameLse", "ZeroUnits", "evaluate_model", "looped_mel", "mel_of_frames", "shifted_mel", "SyncScorer", "critic_scorer", "evaluate", "evaluate_clip", "report_paths", "syncnet_scorer", "write_report"]
