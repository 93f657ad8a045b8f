"""Prepare one shard: clips → ``<split>-NNNNNN.tar`` + its manifest rows, written atomically.

No Ray here: :mod:`pipeline.run` calls :func:`prepare_shard` inside a Ray task, tests call it
directly. The output is a :class:`~pipeline.storage.Storage` (a local folder or an fsspec URL).
Order of writes: tar to a local temp file, rows part staged and published, tar published (each
publish atomic: a rename locally, one upload to an object store). A shard is complete when its
rows part exists and (if it has ok clips) its tar does (:mod:`pipeline.resume`); a crash at any
point leaves temp files only, which the next run removes and redoes. Names: :mod:`cals.layout`.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from cals.atomic import PUBLISH_LOCK
from cals.errors import NoSpaceError, is_no_space
from cals.layout import marker_name, part_name, tar_name
from cals.metrics import MouthLandmarker
from cals.shard_tar import ShardTarWriter
from pipeline.errors import ClipError
from pipeline.manifest import SOURCE_STATUS, ClipSource, manifest_row, write_parquet
from pipeline.prepare_clip import PrepParams
from pipeline.prepare_tracks import SourceResult, process_source
from pipeline.resume import DIGEST_KEY, clips_digest
from pipeline.stages.detect import Detector, make_detector
from pipeline.storage import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPlan:
    """One unit of work: the clips of one output shard ``<name>.tar``."""

    name: str
    split: str
    clips: tuple[ClipSource, ...]


def write_part(storage: Storage, shard: str, rows: list[dict[str, Any]], metadata: dict[str, str]) -> None:
    """Publish the shard's rows part atomically."""
    with storage.staged(part_name(shard)) as tmp:
        write_parquet(rows, tmp, metadata)


ProgressFn = Callable[[int, int, int], None]  # (clips, frames, failed)


def prepare_shard(
    plan: ShardPlan,
    out_dir: "str | Path | Storage",
    params: PrepParams,
    progress: Optional[ProgressFn] = None,
    fail_fast: bool = False,
    detector: Optional[Detector] = None,
    skip: Optional[dict[str, tuple[str, str]]] = None,
    landmarker: Optional[MouthLandmarker] = None,
) -> list[dict[str, Any]]:
    """Process ``plan``'s clips into ``out_dir/<plan.name>.tar``; return its manifest rows.

    ``out_dir`` is a local folder, an fsspec URL or a :class:`~pipeline.storage.Storage`.

    ``detector`` and ``landmarker`` (the lip-top step's FaceMesh) are reused when given (an
    actor's, loaded once); else one of each is built here for the shard.
    ``skip`` maps keys not to process to the (reason, detail) to record (clips that crashed
    their worker). Before each clip its key is written to the shard's marker file.

    A clip that raises ClipError is recorded with its reason; any other exception is recorded as
    ``internal_error`` with its type and message (``fail_fast`` re-raises instead). The tar
    holds only complete samples: each is fully encoded in memory before it is written.

    Raises:
        cals.errors.NoSpaceError: the disk (or quota) filled up while writing the shard's tar,
            rows part or marker. Nothing of the shard is left: no temp file, no marker, no part
            (so the shard is redone by the next run, and no row claims a tar that is not there).
    """
    import cv2

    cv2.setNumThreads(1)
    storage = open_storage(out_dir)
    storage.makedirs()
    final_tar = tar_name(plan.name)
    tmp_tar = storage.staging_path(final_tar)
    own_detector, own_landmarker = detector is None, landmarker is None
    if detector is None:
        detector = make_detector(params.detector, params.mediapipe_model)
    if landmarker is None:
        landmarker = MouthLandmarker()
    rows, written = [], 0
    sync_model = None
    if params.tracks == "speaker":
        from cals.models.syncnet_v2 import load_syncnet_v2

        sync_model = load_syncnet_v2(params.sync_model, "cpu")
    try:
        written = _write_tar(plan, storage, tmp_tar, params, detector, rows, progress, fail_fast, skip, sync_model, landmarker)
    except BaseException as error:
        tmp_tar.unlink(missing_ok=True)
        if is_no_space(error):
            _remove_shard(storage, plan.name, tmp_tar)
            raise NoSpaceError(f"no space left on device writing {storage.url(final_tar)}") from error
        raise
    finally:
        if own_detector:
            detector.close()
        if own_landmarker:
            landmarker.close()
    metadata = {DIGEST_KEY: clips_digest(plan.clips, params)}
    try:
        # A tar of an earlier run goes first: a crash between the part and the tar must not
        # leave a new part beside an old tar (that shard would pass as complete).
        with PUBLISH_LOCK:  # the part and the tar appear together, even if the driver dies now
            storage.remove(final_tar)
            write_part(storage, plan.name, rows, metadata)
            if written:
                storage.put_file(tmp_tar, final_tar)
    except OSError as error:
        if not is_no_space(error):
            raise
        _remove_shard(storage, plan.name, tmp_tar)
        raise NoSpaceError(f"no space left on device publishing {storage.url(final_tar)} and its rows") from error
    finally:
        tmp_tar.unlink(missing_ok=True)
    storage.remove(marker_name(plan.name))
    return rows


def _remove_shard(storage: Storage, shard: str, tmp_tar: Path) -> None:
    """Remove all of a shard that could not be written: temp tar, marker, rows part, tar."""
    tmp_tar.unlink(missing_ok=True)
    for name in (marker_name(shard), part_name(shard), tar_name(shard)):
        storage.remove(name)


def _write_tar(plan: ShardPlan, storage: Storage, tmp_tar: Path, params: PrepParams, detector: Detector, rows: list[dict[str, Any]],
               progress: Optional[ProgressFn], fail_fast: bool, skip: Optional[dict[str, tuple[str, str]]], sync_model: Any = None,
               landmarker: Optional[MouthLandmarker] = None) -> int:
    """Process the clips into the local file ``tmp_tar``, appending their rows to ``rows``;
    return the count of samples written. A full disk propagates (``OSError``), whatever step hit it."""
    final_tar = tar_name(plan.name)
    written = 0
    with open(tmp_tar, "wb") as stream, ShardTarWriter(stream) as tar:
        marker = marker_name(plan.name)
        for clip in plan.clips:
            if skip and clip.key in skip:
                reason, detail = skip[clip.key]
                rows.append(manifest_row(clip, status="failed", reason=reason, detail=detail))
                continue
            storage.write_text(marker, clip.key)
            rows_before = len(rows)
            try:
                result = process_source(clip, params, detector, sync_model, landmarker)
            except ClipError as error:
                rows.append(manifest_row(clip, status="failed", reason=error.reason, detail=error.detail[:500]))
            except Exception as error:  # noqa: BLE001 - one clip never kills its shard
                if fail_fast or is_no_space(error):
                    raise
                where = traceback.extract_tb(error.__traceback__)[-1]
                detail = f"{type(error).__name__}: {error} (at {Path(where.filename).name}:{where.lineno})"
                log.warning("clip %s failed unexpectedly: %s", clip.path, detail)
                rows.append(manifest_row(clip, status="failed", reason="internal_error", detail=detail[:500]))
            else:
                written += _write_source(tar, clip, result, final_tar, rows)
            if progress:
                added = rows[rows_before:]
                frames = sum(r["num_frames"] or 0 for r in added if r["status"] == "ok")
                progress(1, frames, int(not any(r["status"] == "ok" for r in added)))
    return written


def _write_source(tar: ShardTarWriter, clip: ClipSource, result: SourceResult, final_tar: str, rows: list[dict[str, Any]]) -> int:
    """Write one clip's samples and append its rows (module :mod:`pipeline.prepare_tracks`):
    the sample rows, the dropped tracks' rows and, for a tracked clip, its source row. Returns
    the samples written."""
    if result.source is None:  # one dominant sample keyed by the clip: the row as it always was
        (_, sample, _), = result.samples
        tar.write(sample.sample)
        rows.append(manifest_row(clip, status="ok", shard=final_tar, **sample.fields))
        return 1
    rows.append(manifest_row(clip, status=SOURCE_STATUS, **result.source))
    for key, sample, columns in result.samples:
        tar.write(sample.sample)
        rows.append(manifest_row(replace(clip, key=key), status="ok", shard=final_tar, **sample.fields, **columns))
    for key, reason, detail, columns in result.dropped:
        rows.append(manifest_row(replace(clip, key=key), status="failed", reason=reason, detail=detail, **columns))
    return len(result.samples)
