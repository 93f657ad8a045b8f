"""Clip descriptions (what a recipe returns) and the Parquet manifest (one row per source clip).

A recipe returns :class:`ClipSource` records; the run writes one manifest row per source clip,
ok or failed, with :data:`MANIFEST_SCHEMA`. Readable with pandas, pyarrow or duckdb.

With ``--tracks all|speaker`` (or scenes cutting a dominant clip in several samples) a source
clip gives one row per sample (``status`` ok, ``source_key`` the clip's key), one per track
dropped by a filter (``status`` failed, its reason), and the source row (``status`` source, key =
the clip's key: scenes and tracks found, kept and dropped). Those columns are
:data:`TRACK_COLUMNS`; a file where all of them are null (a dominant run) is written without
them, so it keeps its bytes, and :func:`read_rows` gives them as null.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class ClipSource:
    """One source clip to prepare.

    Attributes:
        key: sample key, unique in the dataset, letters/digits/``_``/``-`` only.
        path: absolute path of the video file.
        dataset: dataset name (the output folder name).
        split: "train", "val" or "test".
        speaker: speaker id (no speaker crosses splits).
        transcript: utterance text when the corpus has one.
        extra: corpus-specific metadata (labels, word timings), copied into the sample json.
        start_s, end_s: the span of the source to prepare, seconds (None: from the start / to
            the end). HDTF's annotated spans, for instance.
        crop: ``(x, y, width, height)`` in source pixels applied before detection (None: the
            whole frame). HDTF's annotated crops, for instance.
    """

    key: str
    path: str
    dataset: str
    split: str
    speaker: str
    transcript: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)
    start_s: Optional[float] = None
    end_s: Optional[float] = None
    crop: Optional[tuple[int, int, int, int]] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClipSource":
        return cls(**data)

    def provenance(self) -> dict[str, Any]:
        """Where the clip comes from, under the names both its manifest row and its sample's
        ``json`` use: source path, dataset, split, speaker, transcript, span (s) and crop."""
        return dict(
            source=self.path,
            dataset=self.dataset,
            split=self.split,
            speaker=self.speaker,
            transcript=self.transcript,
            source_start_s=self.start_s,
            source_end_s=self.end_s,
            source_crop=list(self.crop) if self.crop else None,
        )


MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("speaker", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("reason", pa.string()),  # pipeline.errors.REASONS key, null when ok
        ("detail", pa.string()),
        ("shard", pa.string()),  # shard file name, null when failed
        ("num_frames", pa.int64()),
        ("duration_s", pa.float64()),  # of the prepared sample: num_frames / 25
        ("source_duration_s", pa.float64()),
        ("source_fps", pa.float64()),
        ("source_width", pa.int64()),
        ("source_height", pa.int64()),
        ("source_codec", pa.string()),
        ("frames_examined", pa.int64()),
        ("frames_detected", pa.int64()),
        ("faces_seen", pa.int64()),
        ("detect_ratio", pa.float64()),
        ("mean_score", pa.float64()),
        ("audio_pad_samples", pa.int64()),
        ("lip_top_median", pa.float64()),  # FaceMesh upper-lip top row in the crops (of 128), null: not found
        ("lip_top_p1", pa.float64()),  # its 1st percentile; below MASK_TOP_ROW + margin, verify warns
        ("transcript", pa.string()),
        ("source_start_s", pa.float64()),  # the clip's span and crop in the source (null: whole)
        ("source_end_s", pa.float64()),
        ("source_crop", pa.list_(pa.int64())),  # x, y, width, height
    ]
)

#: Row status of a tracked clip's source row (its samples are "ok", its dropped tracks "failed").
SOURCE_STATUS = "source"

#: Columns of tracked clips (:mod:`pipeline.prepare_tracks`); null on the rows of a dominant run.
TRACK_COLUMNS = (
    ("source_key", pa.string()),  # sample / dropped-track rows: the source clip's key
    ("scene", pa.int64()),  # scene index in the clip
    ("track", pa.int64()),  # track index in its scene
    ("part", pa.int64()),  # piece of a track split by --max-seconds (0 when not split)
    ("first_frame", pa.int64()),  # the sample's first 25 fps frame in the clip (its window)
    ("face_px", pa.float64()),  # median larger side of the track's detection boxes, source pixels
    ("sharpness", pa.float64()),  # median variance of the Laplacian of its grey crops
    ("interpolated_share", pa.float64()),  # share of examined frames without an own detection
    ("track_sync_conf", pa.float64()),  # --tracks speaker: SyncNet confidence of the track vs its audio
    ("scenes", pa.int64()),  # source row: scenes found
    ("tracks_found", pa.int64()),  # source row: face tracks found (any length)
    ("tracks_kept", pa.int64()),  # source row: samples written
    ("tracks_dropped", pa.string()),  # source row: "reason: count, ..." of the tracks not kept
)
FULL_SCHEMA = pa.schema([*MANIFEST_SCHEMA, *(pa.field(name, kind) for name, kind in TRACK_COLUMNS)])


def manifest_row(source: ClipSource, **fields: Any) -> dict[str, Any]:
    """A manifest row for ``source`` with every schema column (missing ones null)."""
    row = {name: None for name in FULL_SCHEMA.names}
    row.update(key=source.key, **source.provenance())
    unknown = set(fields) - set(row)
    if unknown:
        raise KeyError(f"not manifest columns: {sorted(unknown)}")
    row.update(fields)
    return row


def write_parquet(rows: Iterable[dict[str, Any]], path: Path, metadata: Optional[dict[str, str]] = None) -> None:
    """Write rows with :data:`MANIFEST_SCHEMA` (plus key/value ``metadata``) to ``path`` as is
    (callers publish it atomically: :meth:`pipeline.storage.Storage.staged` or
    :func:`cals.atomic.atomic_write`). :data:`TRACK_COLUMNS` are written when a row fills one."""
    rows = list(rows)
    tracked = any(row.get(name) is not None for row in rows for name, _ in TRACK_COLUMNS)
    schema = (FULL_SCHEMA if tracked else MANIFEST_SCHEMA).with_metadata({k.encode(): v.encode() for k, v in (metadata or {}).items()})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def read_rows(source: "Path | BinaryIO") -> list[dict[str, Any]]:
    """The rows of a manifest (or manifest part): a path or a binary file object; every column of
    :data:`FULL_SCHEMA` (track columns null in a file written without them)."""
    return pq.read_table(source, schema=FULL_SCHEMA).to_pylist()


def read_metadata(source: "Path | BinaryIO") -> dict[str, str]:
    """The key/value metadata of a Parquet file written by :func:`write_parquet`."""
    raw = pq.read_schema(source).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW")}
