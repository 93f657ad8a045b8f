"""Rewrite the shards of a finished dataset, sample by sample, with the same guarantees as prep.

Steps after prep (``cals-prep units``, ``cals-prep sync``) are :class:`ShardJob` s: a per-sample
transform (add a member, replace the audio, or drop the sample) plus how to tell a sample it has
already done and which manifest columns it fills. No Ray here: :mod:`pipeline.rewrite_run` runs
:func:`rewrite_shard` on an actor pool, tests call it directly.

Guarantees of :func:`rewrite_shard`:

- **Atomic.** The new shard is written to ``.<shard>.tar.tmp-XXXXXXXX`` in the dataset folder
  (the temp-name pattern prep removes on start) and ``os.replace`` d over the old one only when
  complete and fsynced. A crash leaves the old shard intact.
- **Resumable.** Samples the job has already done are copied byte for byte, not recomputed; a
  shard whose every sample is done is not rewritten at all (:func:`shard_is_done`).
- **One sample never sinks its shard.** A sample whose transform raises is copied unchanged and
  its error recorded in the shard's report, ``_<job>/<shard>.json``; the next run retries it.
- **No key verify rejects is written back.** A sample whose key is not a valid key
  (:func:`cals.shard_format.is_valid_key`) is left out of the new shard, its error recorded.
- **Drops are prep failures.** A dropped sample (``out_of_sync``) leaves the shard, and its row
  in the shard's manifest part (``_parts/<shard>.parquet``) becomes ``failed`` with the reason
  and detail, written before the new shard replaces the old one. A prep re-run therefore still
  finds the shard complete and reports the clip as failed. A shard left with no sample is
  removed, as prep writes no empty shard.

The report ``_<job>/<shard>.json`` keeps one record per sample the job touched: ``{"status":
"done" | "dropped" | "error", ...}`` plus the job's numbers; records of dropped samples are kept
across runs (those samples are gone from the shard). The driver turns shard metadata and reports
into manifest columns (:func:`update_manifest`).
"""

from __future__ import annotations

import json
import tarfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from cals.atomic import atomic_write, publish, temp_path
from cals.layout import MANIFEST_FILE, part_name, report_dir, report_name
from cals.shard_format import META_MEMBER, is_valid_key
from cals.shard_tar import ShardTarWriter
from pipeline.manifest import read_metadata, read_rows, write_parquet

#: Longest error detail kept in a report or the manifest (as prep's details).
DETAIL_CHARS = 500


@dataclass
class SampleOutcome:
    """What a job's transform made of one sample.

    Attributes:
        raw: the sample to write (a WebDataset dict), or None to drop it.
        record: JSON-ready facts for the shard report and the manifest columns.
        reason, detail: why it was dropped (a :data:`pipeline.errors.REASONS` key), when dropped.
    """

    raw: Optional[dict[str, Any]]
    record: dict[str, Any] = field(default_factory=dict)
    reason: Optional[str] = None
    detail: Optional[str] = None


Transform = Callable[[dict[str, Any], dict[str, Any]], SampleOutcome]  # (raw sample, its meta)


class ShardJob(Protocol):
    """A step that rewrites shards. Light (picklable, no model) on the driver; :meth:`start`
    loads what the transform needs, once per worker."""

    name: str  # the report folder is "_<name>"
    manifest_columns: tuple[tuple[str, pa.DataType], ...]  # added to manifest.parquet
    error_column: str  # the manifest column that holds a sample's error

    def is_done(self, meta: dict[str, Any], members: set[str]) -> bool:
        """The sample (its json and member names) needs nothing from this job."""

    def columns(self, meta: Optional[dict[str, Any]], record: Optional[dict[str, Any]]) -> dict[str, Any]:
        """Manifest columns of a sample from its metadata (None when it left the shards) and
        its report record (None when there is none)."""

    def start(self, device: str) -> Transform:
        """Load the model onto ``device`` and return the per-sample transform."""


def report_path(dataset_dir: Path, job_name: str, shard: str) -> Path:
    """The local path of the job's report on the shard file ``shard`` (:func:`cals.layout.report_name`)."""
    return Path(dataset_dir) / report_name(job_name, shard)


def read_report(dataset_dir: Path, job_name: str, shard: str) -> dict[str, Any]:
    """The shard's report (``{"shard", "job", "records"}``), empty records when there is none."""
    path = report_path(dataset_dir, job_name, shard)
    if not path.is_file():
        return {"shard": shard, "records": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def scan_shard(path: Path) -> list[tuple[str, dict[str, Any], set[str]]]:
    """``(key, meta, member names)`` of every sample of a shard, in order, reading only the tar
    headers and the ``json`` members (the rest is seeked over)."""
    samples: dict[str, list[Any]] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, member = info.name.partition(".")
            entry = samples.setdefault(key, [None, set()])
            entry[1].add(member)
            if member == META_MEMBER:
                entry[0] = json.loads(tar.extractfile(info).read())
    return [(key, meta or {}, members) for key, (meta, members) in samples.items()]


def shard_is_done(scan: list[tuple[str, dict[str, Any], set[str]]], job: ShardJob) -> bool:
    return all(job.is_done(meta, members) for _, meta, members in scan)


def _mark_dropped_in_part(dataset_dir: Path, shard: str, dropped: dict[str, dict[str, Any]]) -> None:
    """Record dropped samples as failed in the shard's prep manifest part (same digest kept)."""
    part = Path(dataset_dir) / part_name(Path(shard).stem)
    if not part.is_file():
        return
    rows = read_rows(part)
    for row in rows:
        record = dropped.get(row["key"])
        if record is not None and row["status"] == "ok":
            row.update(status="failed", reason=record["reason"], detail=record["detail"], shard=None)
    with atomic_write(part) as tmp:
        write_parquet(rows, tmp, read_metadata(part))


def rewrite_shard(
    dataset_dir: str | Path,
    shard: str,
    job: ShardJob,
    transform: Transform,
    progress: Optional[Callable[[int, int], None]] = None,
    fail_fast: bool = False,
) -> dict[str, Any]:
    """Apply ``transform`` to every sample of ``dataset_dir/shard`` the job has not done yet,
    and replace the shard atomically (module docstring); returns the shard's report.

    ``progress(samples, failed)`` is called after each sample. A transform that raises is
    recorded (``fail_fast`` re-raises instead); an unreadable shard raises.
    """
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / shard
    report = read_report(dataset_dir, job.name, shard)
    records: dict[str, Any] = report.get("records", {})
    tmp = temp_path(path)
    changed = False
    kept = 0
    dropped: dict[str, dict[str, Any]] = {}
    try:
        with open(tmp, "wb") as stream, ShardTarWriter(stream) as tar:
            for raw in wds.WebDataset([str(path)], shardshuffle=False, empty_check=False):
                key = raw["__key__"]
                if not is_valid_key(key):
                    records[key] = {"status": "error", "detail": f"invalid sample key {key!r} (letters, digits, '_' and '-' only): not written back"}
                    changed = True
                    if progress:
                        progress(1, 1)
                    continue
                meta = json.loads(raw[META_MEMBER])
                members = {name for name in raw if not name.startswith("_")}
                if job.is_done(meta, members):
                    tar.write(raw)
                    kept += 1
                    continue
                failed = 0
                try:
                    outcome = transform(raw, meta)
                except Exception as error:  # noqa: BLE001 - one sample never sinks its shard
                    if fail_fast:
                        raise
                    where = traceback.extract_tb(error.__traceback__)[-1]
                    detail = f"{type(error).__name__}: {error} (at {Path(where.filename).name}:{where.lineno})"
                    records[key] = {"status": "error", "detail": detail[:DETAIL_CHARS]}
                    tar.write(raw)
                    kept += 1
                    failed = 1
                else:
                    changed = True
                    if outcome.raw is None:
                        dropped[key] = {**outcome.record, "reason": outcome.reason, "detail": (outcome.detail or "")[:DETAIL_CHARS]}
                        records[key] = {"status": "dropped", **dropped[key]}
                    else:
                        tar.write(outcome.raw)
                        kept += 1
                        records[key] = {"status": "done", **outcome.record}
                if progress:
                    progress(1, failed)
        report = {"shard": shard, "records": records}
        if dropped:
            _mark_dropped_in_part(dataset_dir, shard, dropped)
        report_file = report_path(dataset_dir, job.name, shard)
        report_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(report_file) as report_tmp:
            report_tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if changed and kept:
            publish(tmp, path)
        elif changed:  # every sample dropped: no empty shard (as prep)
            path.unlink()
    finally:
        tmp.unlink(missing_ok=True)
    return report


# --- the manifest ---


def update_manifest(
    dataset_dir: str | Path,
    columns: tuple[tuple[str, pa.DataType], ...],
    values: dict[str, dict[str, Any]],
    drops: dict[str, tuple[str, str]],
) -> bool:
    """Set ``columns`` of ``manifest.parquet`` (added after the others, replaced if present) to
    ``values[key]`` (null where absent) and mark ``drops`` (key → (reason, detail)) failed.
    Written atomically (:func:`cals.atomic.atomic_write`); nothing is written when nothing changes.
    Returns True when the manifest was rewritten."""
    path = Path(dataset_dir) / MANIFEST_FILE
    table = pq.read_table(path)
    schema = table.schema
    for name, _ in columns:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    for name, kind in columns:
        schema = schema.append(pa.field(name, kind))
    rows = table.to_pylist()
    for row in rows:
        own = values.get(row["key"], {})
        row.update({name: own.get(name) for name, _ in columns})
        if row["key"] in drops and row["status"] == "ok":
            reason, detail = drops[row["key"]]
            row.update(status="failed", reason=reason, detail=detail, shard=None)
    new = pa.Table.from_pylist(rows, schema=schema)
    if new.schema.equals(table.schema) and new.equals(table):
        return False
    with atomic_write(path) as tmp:
        pq.write_table(new, tmp)
    return True


def manifest_values(
    dataset_dir: str | Path,
    job: ShardJob,
    scans: dict[str, list[tuple[str, dict[str, Any], set[str]]]],
    shard_failures: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, str]]]:
    """Manifest columns per key and drops, from the shards' metadata (``scans``: shard → scan of
    every shard now in the folder) and the job's reports; ``shard_failures`` (shard → detail)
    fills the error column of every sample of a shard the job could not rewrite."""
    dataset_dir = Path(dataset_dir)
    values: dict[str, dict[str, Any]] = {}
    in_shards: set[str] = set()
    for shard, scan in scans.items():
        records = read_report(dataset_dir, job.name, shard)["records"]
        for key, meta, _ in scan:
            in_shards.add(key)
            values[key] = job.columns(meta, records.get(key))
            if shard in shard_failures:
                values[key][job.error_column] = shard_failures[shard][:DETAIL_CHARS]
    drops: dict[str, tuple[str, str]] = {}
    reports = dataset_dir / report_dir(job.name)
    for report_file in sorted(reports.glob("*.json")) if reports.is_dir() else []:
        for key, record in json.loads(report_file.read_text(encoding="utf-8"))["records"].items():
            if record.get("status") == "dropped" and key not in in_shards:
                values[key] = job.columns(None, record)
                drops[key] = (record["reason"], record["detail"])
    return values, drops
