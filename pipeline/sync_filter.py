"""``cals-prep sync``: measure each sample's audio/video sync with SyncNet v2, drop the clips that
are out of sync, and optionally shift the audio of the others into sync.

The answer to "audio/video offset in the source data": run it after prep. Per sample (on the
shards' own 128x128 crops and 16 kHz audio, with :func:`cals.sync_score.score_clip`, i.e.
syncnet_python's offset search over ``-vshift .. +vshift`` frames):

- ``av_offset`` (frames), ``sync_conf`` (LSE-C) and ``sync_dist`` (LSE-D) are stored in the
  sample's ``json.sync`` and in ``manifest.parquet``;
- a clip with ``|av_offset| > max_offset`` or ``sync_conf < min_conf`` is **dropped**: removed
  from its shard (the same atomic rewrite as :mod:`pipeline.units`) and recorded as failed with
  reason ``out_of_sync`` and the numbers in the detail (manifest, and the shard's prep part
  ``_parts/<shard>.parquet``, so a prep re-run keeps it failed);
- with ``fix_offset`` the audio of a kept clip is shifted by its measured offset
  (:func:`shift_audio`; length stays 640·T) and its mel recomputed from the shifted audio with
  :func:`cals.mel.log_mel`, as LatentSync's data pipeline corrects offsets before training.

**Sign.** As in :mod:`cals.sync_score`: offset k > 0 means video window i matches audio window
i − k best, i.e. the sound comes k frames (40 ms each) **before** the lips (audio leads). The fix
delays the audio by k frames (``shift_audio(audio, k)``: content moves 640·k samples later, zeros
in front, the last 640·k samples cut); k < 0 advances it.

A dropped clip is gone from the shards: loosening the limits later does not bring it back
(re-prepare its shard: delete ``_parts/<shard>.parquet`` and re-run the prep command). Re-runs
with the same model and settings skip every measured sample; with other limits (same model) the
stored measurement is re-judged without re-scoring, and an offset already fixed is not applied
twice. ``json.sync`` = ``{model, digest, vshift, max_offset, min_conf, fix_offset, av_offset,
conf, dist, applied_frames, audio_shift_frames}`` (``applied_frames``: the part of this
measurement's offset applied to the audio; ``audio_shift_frames``: total shift since prep).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from cals.constants import AUDIO_SAMPLES_PER_FRAME, SYNCNET_BATCH_SIZE, SYNCNET_VSHIFT
from cals.mel import log_mel
from cals.models.lip_units import file_sha256
from cals.shard_format import decode_sample, update_sample
from pipeline.rewrite import SampleOutcome, Transform
from pipeline.rewrite_run import JobSummary, check_dataset, run_shard_job

#: Manifest columns this step adds.
SYNC_COLUMNS = (
    ("av_offset", pa.int64()),
    ("sync_conf", pa.float64()),
    ("sync_dist", pa.float64()),
    ("audio_shift_frames", pa.int64()),
    ("sync_error", pa.string()),
)
#: Keys of ``json.sync`` that must equal the job's for a sample to count as done.
SETTINGS_KEYS = ("model", "digest", "vshift", "max_offset", "min_conf", "fix_offset")
SYNC_MODEL = "syncnet_v2"


def shift_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """Delay (``frames`` > 0) or advance (< 0) ``(N,)`` audio by ``|frames|`` video frames of
    640 samples, keeping its length: ``out[n] = audio[n - 640·frames]``, zeros where that falls
    outside the clip."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono (N,) audio, got {audio.shape}")
    samples = int(frames) * AUDIO_SAMPLES_PER_FRAME
    out = np.zeros_like(audio)
    length = audio.shape[0]
    if samples >= 0:
        if samples < length:
            out[samples:] = audio[: length - samples]
    elif -samples < length:
        out[: length + samples] = audio[-samples:]
    return out


def sync_verdict(offset: int, conf: float, dist: float, *, max_offset: int, min_conf: float) -> Optional[str]:
    """None when the clip is in sync enough to keep; else the ``out_of_sync`` detail."""
    problems = []
    if abs(offset) > max_offset:
        problems.append(f"|offset| {abs(offset)} > --max-offset {max_offset}")
    if conf < min_conf:
        problems.append(f"confidence {conf:.3f} < --min-conf {min_conf:g}")
    if not problems:
        return None
    return f"SyncNet offset {offset:+d} frames, confidence {conf:.3f}, distance {dist:.3f}: {'; '.join(problems)}"


@dataclass(frozen=True)
class SyncFilterJob:
    """The ``sync`` shard job (:class:`pipeline.rewrite.ShardJob`); SyncNet is loaded by
    :meth:`start`, once per worker."""

    model_path: str
    digest: str
    max_offset: int
    min_conf: float
    fix_offset: bool
    vshift: int = SYNCNET_VSHIFT
    batch_size: int = SYNCNET_BATCH_SIZE

    name = "sync"
    manifest_columns = SYNC_COLUMNS
    error_column = "sync_error"

    def settings(self) -> dict[str, Any]:
        return {
            "model": SYNC_MODEL,
            "digest": self.digest,
            "vshift": self.vshift,
            "max_offset": self.max_offset,
            "min_conf": self.min_conf,
            "fix_offset": self.fix_offset,
        }

    def is_done(self, meta: dict[str, Any], members: set[str]) -> bool:
        stored = meta.get("sync") or {}
        return {k: stored.get(k) for k in SETTINGS_KEYS} == self.settings()

    def columns(self, meta: Optional[dict[str, Any]], record: Optional[dict[str, Any]]) -> dict[str, Any]:
        stored = (meta or {}).get("sync") or {}
        values = {name: None for name, _ in SYNC_COLUMNS}
        if stored:
            values.update(av_offset=stored["av_offset"], sync_conf=stored["conf"], sync_dist=stored["dist"], audio_shift_frames=stored["audio_shift_frames"])
        elif record and record.get("status") == "dropped":
            values.update({k: record.get(k) for k in ("av_offset", "sync_conf", "sync_dist", "audio_shift_frames")})
        if record and record.get("status") == "error" and not self.is_done(meta or {}, set()):
            values["sync_error"] = record.get("detail")
        return values

    def start(self, device: str) -> Transform:
        from cals.models.syncnet_v2 import load_syncnet_v2
        from cals.sync_score import score_clip

        model = load_syncnet_v2(self.model_path, device)
        settings = self.settings()

        def measure(raw: dict[str, Any], meta: dict[str, Any]) -> SampleOutcome:
            previous = meta.get("sync") or {}
            sample = decode_sample(raw)
            if previous.get("digest") == self.digest and previous.get("vshift") == self.vshift:
                # Same model: the stored measurement stands, only the limits or the fix changed.
                offset, conf, dist = previous["av_offset"], previous["conf"], previous["dist"]
                applied = previous["applied_frames"]
            else:
                score = score_clip(sample.frames, sample.audio, model, self.vshift, self.batch_size)
                offset, conf, dist, applied = score.offset, score.conf, score.min_dist, 0
            shifted_before = previous.get("audio_shift_frames", 0) - applied
            record = {"av_offset": int(offset), "sync_conf": float(conf), "sync_dist": float(dist)}
            verdict = sync_verdict(offset, conf, dist, max_offset=self.max_offset, min_conf=self.min_conf)
            if verdict is not None:
                return SampleOutcome(None, {**record, "audio_shift_frames": previous.get("audio_shift_frames", 0)}, "out_of_sync", verdict)
            target = offset if self.fix_offset else applied  # never undo a fix already made
            total = shifted_before + target
            stored = {**settings, "av_offset": int(offset), "conf": float(conf), "dist": float(dist), "applied_frames": int(target), "audio_shift_frames": int(total)}
            record["audio_shift_frames"] = int(total)
            if target != applied:
                audio = shift_audio(sample.audio, target - applied)
                return SampleOutcome(update_sample(raw, audio=audio, mel=log_mel(audio), meta={"sync": stored}), record)
            return SampleOutcome(update_sample(raw, meta={"sync": stored}), record)

        return measure


def sync_filter_job(
    model_path: str | Path,
    *,
    max_offset: int,
    min_conf: float,
    fix_offset: bool,
    vshift: int = SYNCNET_VSHIFT,
    batch_size: int = SYNCNET_BATCH_SIZE,
) -> SyncFilterJob:
    """Check the arguments and the model on the driver (SyncNet loads once on the CPU: a bad
    file is a one-line error before Ray starts) and describe the job."""
    from cals.models.syncnet_v2 import load_syncnet_v2

    if max_offset < 0:
        raise ValueError(f"--max-offset must be >= 0, got {max_offset}")
    if max_offset > vshift:
        raise ValueError(f"--max-offset {max_offset} exceeds the offsets searched (--vshift {vshift})")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    load_syncnet_v2(model_path, "cpu")
    return SyncFilterJob(
        model_path=str(Path(model_path).resolve()),
        digest=file_sha256(model_path),
        max_offset=int(max_offset),
        min_conf=float(min_conf),
        fix_offset=bool(fix_offset),
        vshift=int(vshift),
        batch_size=int(batch_size),
    )


def measure_sync(
    dataset_dir: str | Path,
    model_path: str | Path,
    *,
    max_offset: int,
    min_conf: float,
    fix_offset: bool = False,
    vshift: int = SYNCNET_VSHIFT,
    batch_size: int = SYNCNET_BATCH_SIZE,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    show_progress: bool = True,
    fail_fast: bool = False,
) -> JobSummary:
    """Score every sample of ``dataset_dir`` with the SyncNet v2 file ``model_path``, drop the
    out-of-sync ones, optionally fix the offsets of the others (module docstring). Ray as
    :func:`pipeline.units.add_lip_units`.

    Raises:
        FileNotFoundError: no dataset (manifest.parquet) or no model at the paths.
        ValueError: a URL dataset, bad limits, or a file that is not SyncNet v2's state dict.
    """
    check_dataset(dataset_dir)
    job = sync_filter_job(model_path, max_offset=max_offset, min_conf=min_conf, fix_offset=fix_offset, vshift=vshift, batch_size=batch_size)
    return run_shard_job(dataset_dir, job, workers=workers, address=address, show_progress=show_progress, fail_fast=fail_fast)
