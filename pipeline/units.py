"""``cals-prep units``: add lip-motion units (``lip.npy``) to every sample of a prepared dataset.

For each shard, a Ray actor (one model each, :mod:`pipeline.rewrite_run`) decodes every sample's
face crops, embeds them with the lip-unit model (:func:`cals.models.lip_units.load_lip_model`:
one unit per frame from the 5-frame window centred on it, edge frames repeated) and rewrites the
shard with ``lip.npy`` (float16 ``(T, dim)``) added and ``json.lip_units = {kind, digest, dim,
window: 5, padding: "repeat edge frames"}``; ``json.member_sha1`` gains ``lip.npy``.

- Atomic: the new shard is written to a temp name beside the old one and renamed over it.
- Resumable: a sample whose units come from the same model (kind + digest) is copied as is; a
  shard whose every sample has them is skipped. Units of another model are replaced.
- A sample that fails (its frames do not decode, the model raises, a unit overflows float16) keeps
  no units; the failure is recorded in ``_units/<shard>.json`` (``{"records": {key: {"status":
  "error", "detail": ...}}}``) and in the manifest's ``lip_error`` column, and the next run
  retries it.
- ``manifest.parquet`` gains ``lip_kind``, ``lip_dim``, ``lip_digest`` (null for a sample without
  units) and ``lip_error``, rebuilt from the shards on every run.
- **Overlapped with prep** (``cals-prep ... --units``, :func:`units_follow_up`): the same shard
  rewrite runs on its own actor pool (:class:`pipeline.ray_pool.FollowUp`: one actor per GPU
  when the driver sees CUDA, else one CPU actor) on each shard as soon as a prep worker has
  published it, so embedding overlaps decoding; :func:`add_lip_units` then runs as before and
  finds those shards done (it only redoes what the overlapped pool did not finish, and writes
  the manifest columns), so resume and atomicity are the ones above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from cals.constants import SYNCNET_BATCH_SIZE
from cals.layout import tar_name
from cals.models.lip_units import load_lip_model, units_meta_matches
from cals.shard_format import LIP_MEMBER, decode_sample, update_sample
from pipeline.ray_pool import Bar, FollowUp
from pipeline.rewrite import SampleOutcome, Transform
from pipeline.rewrite_run import JobSummary, RewriteWorker, check_dataset, run_shard_job

#: Manifest columns this step adds.
UNITS_COLUMNS = (
    ("lip_kind", pa.string()),
    ("lip_dim", pa.int64()),
    ("lip_digest", pa.string()),
    ("lip_error", pa.string()),
)
#: Largest magnitude float16 holds: units beyond it would be stored as inf.
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class LipUnitsJob:
    """The ``units`` shard job (:class:`pipeline.rewrite.ShardJob`): light on the driver; the
    model is loaded by :meth:`start`, once per worker."""

    model_path: str
    kind: str
    digest: str
    batch_size: int = SYNCNET_BATCH_SIZE

    name = "units"
    manifest_columns = UNITS_COLUMNS
    error_column = "lip_error"

    def is_done(self, meta: dict[str, Any], members: set[str]) -> bool:
        return LIP_MEMBER in members and units_meta_matches(meta.get("lip_units"), self.kind, self.digest)

    def columns(self, meta: Optional[dict[str, Any]], record: Optional[dict[str, Any]]) -> dict[str, Any]:
        meta = meta or {}
        units = meta.get("lip_units") or {}
        has_units = bool(units) and LIP_MEMBER in meta.get("member_sha1", {})
        current = has_units and units_meta_matches(units, self.kind, self.digest)
        failed = record is not None and record.get("status") == "error" and not current
        return {
            "lip_kind": units.get("kind") if has_units else None,
            "lip_dim": units.get("dim") if has_units else None,
            "lip_digest": units.get("digest") if has_units else None,
            "lip_error": record.get("detail") if failed else None,
        }

    def start(self, device: str) -> Transform:
        model = load_lip_model(self.model_path, device)
        if model.digest != self.digest:
            raise ValueError(f"{self.model_path} changed while the job ran (digest {model.digest[:12]}, expected {self.digest[:12]})")
        meta = model.units_meta()
        batch_size = self.batch_size

        def add_units(raw: dict[str, Any], _: dict[str, Any]) -> SampleOutcome:
            sample = decode_sample(raw)
            units = model.embed(sample.frames, batch_size)
            if not np.all(np.isfinite(units)) or np.abs(units).max(initial=0.0) > FLOAT16_MAX:
                raise ValueError(f"lip units are not finite or exceed float16's range ({FLOAT16_MAX:g})")
            return SampleOutcome(update_sample(raw, lip=units, meta={"lip_units": meta}), record={"kind": model.kind, "dim": model.dim})

        return add_units


def lip_units_job(model_path: str | Path, batch_size: int = SYNCNET_BATCH_SIZE) -> LipUnitsJob:
    """Check the model on the driver (loads it once on the CPU: a bad file is a one-line error
    before Ray starts) and describe the job."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    model = load_lip_model(model_path, "cpu")
    # model.path: the file itself (a run folder's newest checkpoint, resolved once here, so every
    # worker loads the same weights even while training writes new checkpoints).
    return LipUnitsJob(model_path=str(Path(model.path).resolve()), kind=model.kind, digest=model.digest, batch_size=batch_size)


def units_follow_up(dataset_dir: str | Path, model_path: str | Path, *, batch_size: int = SYNCNET_BATCH_SIZE,
                    fail_fast: bool = False) -> FollowUp:
    """The lip-units pool that prep feeds (``run_prep(..., then=...)``): each prep shard that
    succeeded and was written (``<dataset_dir>/<shard>``) is rewritten with units by a
    :class:`~pipeline.rewrite_run.RewriteWorker` on the GPU when the driver sees CUDA, else on
    the CPU. Loads the model once on the driver first (a bad file is a one-line error before
    prep starts)."""
    import torch

    job = lip_units_job(model_path, batch_size)
    gpus = torch.cuda.is_available()
    dataset = Path(dataset_dir)
    worker = RewriteWorker(str(dataset), job, "cuda" if gpus else "cpu", fail_fast)

    def next_unit(task: Any, _: Any) -> Optional[str]:
        shard = tar_name(task.shard())  # the units job names shards by their file
        return shard if (dataset / shard).is_file() else None  # a shard with no clip left is not written

    return FollowUp(worker, Bar(f"{job.name}: samples", total=None), next_unit, gpus=gpus)


def add_lip_units(
    dataset_dir: str | Path,
    model_path: str | Path,
    *,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    batch_size: int = SYNCNET_BATCH_SIZE,
    show_progress: bool = True,
    fail_fast: bool = False,
) -> JobSummary:
    """Add lip units from ``model_path`` to every sample of ``dataset_dir`` (module docstring).

    ``workers``: actors (default one per CPU, or per GPU when the driver sees CUDA);
    ``address``: an existing Ray cluster ('auto', 'ray://host:port'), whose nodes must see the
    dataset folder and the model file at the same paths.

    Raises:
        FileNotFoundError: no dataset (manifest.parquet) or no model at the paths.
        ValueError: a URL dataset, or a model file of no known kind.
        ImportError: a sync-critic checkpoint without ``cals.models.sync_critic``.
    """
    check_dataset(dataset_dir)
    job = lip_units_job(model_path, batch_size)
    return run_shard_job(dataset_dir, job, workers=workers, address=address, show_progress=show_progress, fail_fast=fail_fast)

