"""One ``cals-prep`` corpus run as a library call: select the clips, check the detector and the
output, prepare the shards, then the optional sync filter and lip units.

:class:`PrepOptions` holds what a corpus command asks for besides its clips: the options every
``cals-prep`` corpus command shares, under the same names (their defaults are the ones of
:class:`~pipeline.prepare_clip.PrepParams` and the stage parameters). :func:`prepare_dataset`
runs them on a recipe's output. What the user can fix raises :class:`PrepJobError` with one line
to show; a run that prepared no clip at all raises :class:`NothingPrepared`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cals.constants import SYNC_MAX_OFFSET, SYNC_MIN_CONF
from cals.urls import is_url
from cals.layout import MANIFEST_FILE
from pipeline.manifest import ClipSource
from pipeline.prepare_clip import PrepParams
from pipeline.stages.crop import CropParams
from pipeline.stages.quality import QualityParams
from pipeline.stages.track import TrackParams

if TYPE_CHECKING:
    from pipeline.rewrite_run import JobSummary
    from pipeline.run import RunSummary


class PrepJobError(Exception):
    """A prep job that cannot start or go on, for a reason the user can fix (one line)."""


class NothingPrepared(PrepJobError):
    """The run went through, but no clip could be prepared (the manifest says why)."""


@dataclass(frozen=True)
class PrepOptions:
    """The shared options of a ``cals-prep`` corpus command (see its ``--help`` for each).

    ``name``: the dataset folder under ``out`` (None: the recipe's default name);
    ``speakers``: comma-separated ids; ``units``/``sync_model``: model files of the optional
    steps after prep; ``quiet``: no progress bar or summary table.
    """

    out: str = "shards"
    name: Optional[str] = None
    limit: Optional[int] = None
    speakers: Optional[str] = None
    detector: str = PrepParams.detector
    mediapipe_model: str = PrepParams.mediapipe_model
    detect_every: int = PrepParams.detect_every
    min_frames: int = PrepParams.min_frames
    min_face_ratio: float = PrepParams.min_face_ratio
    lossless: bool = PrepParams.codec == "png"
    jpeg_quality: int = PrepParams.jpeg_quality
    crop_margin: float = CropParams.margin
    smooth_frames: int = TrackParams.smooth_frames
    shard_mb: float = 500.0
    workers: Optional[int] = None
    address: Optional[str] = None
    force: bool = False
    retry_failed: bool = False
    units: Optional[Path] = None
    sync_model: Optional[Path] = None
    max_offset: int = SYNC_MAX_OFFSET
    min_conf: float = SYNC_MIN_CONF
    fix_offset: bool = False
    tracks: str = PrepParams.tracks
    scenes: bool = PrepParams.scenes
    min_track: int = PrepParams.min_track
    min_face_px: float = QualityParams.min_face_px
    min_sharpness: float = QualityParams.min_sharpness
    max_interpolated: float = QualityParams.max_interpolated
    max_seconds: Optional[float] = None
    decoder: str = PrepParams.decoder
    fail_fast: bool = False
    quiet: bool = False

    def prep_params(self) -> PrepParams:
        """The parameters that decide each sample's bytes (ValueError on a bad value; a
        ``--tracks speaker`` model is recorded by path and SHA-256)."""
        speaker = self.tracks == "speaker"
        if speaker and self.sync_model is None:
            raise ValueError("--tracks speaker needs --sync-model (a syncnet_v2.model file)")
        if speaker and not Path(self.sync_model).is_file():
            raise ValueError(f"--sync-model {self.sync_model} is not a file (syncnet_python's download_model.sh fetches syncnet_v2.model)")
        return PrepParams(
            tracks=self.tracks,
            scenes=self.scenes,
            min_track=self.min_track,
            quality=QualityParams(min_face_px=self.min_face_px, min_sharpness=self.min_sharpness, max_interpolated=self.max_interpolated),
            sync_model=str(Path(self.sync_model).resolve()) if speaker else None,
            sync_digest=_sha256(self.sync_model) if speaker else None,
            min_conf=self.min_conf if speaker else PrepParams.min_conf,
            max_seconds=self.max_seconds,
            decoder=self.decoder,
            detector=self.detector,
            mediapipe_model=self.mediapipe_model,
            detect_every=self.detect_every,
            min_frames=self.min_frames,
            min_face_ratio=self.min_face_ratio,
            codec="png" if self.lossless else "jpeg",
            jpeg_quality=self.jpeg_quality,
            track=TrackParams(smooth_frames=self.smooth_frames),
            crop=CropParams(margin=self.crop_margin),
        )


def _sha256(path: Path) -> str:
    from cals.models.lip_units import file_sha256  # imports torch: only for --tracks speaker

    return file_sha256(path)


@dataclass(frozen=True)
class PreparedDataset:
    """What :func:`prepare_dataset` did: the dataset folder (a path, or the URL written to),
    the prep run's summary and, when asked for, the sync filter's and the lip units' summaries."""

    dataset_dir: "Path | str"
    prep: "RunSummary"
    sync: "Optional[JobSummary]" = None
    units: "Optional[JobSummary]" = None


def writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable (PrepJobError if not)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".cals-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PrepJobError(f"--out {path} is not writable: {error.strerror or error}") from error
    return path


def writable_url(url: str) -> str:
    """Prove the fsspec URL ``url`` can be written (one small object, then removed); PrepJobError
    if not (a missing fsspec or backend names what to install)."""
    from pipeline.storage import open_storage

    try:
        storage = open_storage(url)
        storage.makedirs()
        probe = f".cals-write-test-{uuid.uuid4().hex[:8]}"
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except ImportError as error:
        raise PrepJobError(str(error)) from error
    except Exception as error:  # noqa: BLE001 - backends raise their own types (botocore, google.auth)
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise PrepJobError(f"--out {url} is not writable: {type(error).__name__}: {first_line}") from error
    return url


def dataset_location(out: str, dataset_name: str) -> "Path | str":
    """``out/dataset_name`` (a local folder or an fsspec URL), created and proven writable."""
    if is_url(out):
        return writable_url(f"{out.rstrip('/')}/{dataset_name}")
    return writable_dir(writable_dir(Path(out)) / dataset_name)


def prepare_dataset(
    clips_by_split: dict[str, list[ClipSource]],
    options: PrepOptions = PrepOptions(),
    *,
    default_name: str,
    command: Optional[list[str]] = None,
) -> PreparedDataset:
    """Prepare a recipe's clips into ``options.out/(options.name or default_name)``: keep the
    ``--limit``/``--speakers`` selection, check the S3FD weights and the output, run
    :func:`pipeline.run.run_prep`, then :func:`pipeline.sync_filter.measure_sync` (with
    ``sync_model``) and :func:`pipeline.units.add_lip_units` (with ``units``; without
    ``sync_model`` the units are made during prep, on their own pool fed shard by shard:
    :func:`pipeline.units.units_follow_up`, and add_lip_units finishes what is left). ``command`` is
    recorded in prep.json.

    Raises:
        PrepJobError: a bad option, no clip selected, missing detector weights, an unwritable
            output, an output prepared from other inputs, or a failing sync/units step.
        NothingPrepared: every clip failed (reasons in manifest.parquet).
    """
    from pipeline.recipes import select_clips
    from pipeline.run import OutputMismatch, run_prep

    try:
        clips = select_clips(clips_by_split, limit=options.limit, speakers=options.speakers.split(",") if options.speakers else None)
        params = options.prep_params()
    except ValueError as error:
        raise PrepJobError(str(error)) from error
    if not any(clips.values()):
        raise PrepJobError("no clips to prepare (empty corpus, or --limit/--speakers selected none)")
    if params.tracks == "speaker":
        from cals.models.syncnet_v2 import load_syncnet_v2

        try:
            load_syncnet_v2(params.sync_model, "cpu")
        except (FileNotFoundError, ValueError) as error:
            raise PrepJobError(str(error)) from error
    if params.detector == "sfd":
        from pipeline.stages.detect import SfdDetector

        try:
            SfdDetector().close()
        except (FileNotFoundError, ImportError) as error:
            raise PrepJobError(str(error)) from error
    dataset_dir = dataset_location(options.out, options.name or default_name)
    show_progress = not options.quiet
    follow = None
    if options.units is not None and options.sync_model is None and not is_url(str(dataset_dir)):
        from pipeline.units import units_follow_up  # lip units on their own pool, fed as prep writes shards

        try:
            follow = units_follow_up(dataset_dir, options.units, fail_fast=options.fail_fast)
        except (FileNotFoundError, ValueError, ImportError) as error:
            raise PrepJobError(str(error)) from error
    try:
        summary = run_prep(clips, dataset_dir, params, shard_mb=options.shard_mb, workers=options.workers,
                           address=options.address, fail_fast=options.fail_fast, show_progress=show_progress,
                           force=options.force, retry_failed=options.retry_failed, command=command, then=follow)
    except OutputMismatch as error:
        raise PrepJobError(str(error)) from error
    if summary.ok == 0:
        raise NothingPrepared(f"no clip could be prepared; see {dataset_dir}/{MANIFEST_FILE} for the reasons")
    if (options.units or options.sync_model) and is_url(str(dataset_dir)):
        raise PrepJobError("--units and --sync-model work on local output folders; run them on a local copy")
    ray_options = dict(workers=options.workers, address=options.address, show_progress=show_progress, fail_fast=options.fail_fast)
    sync = units = None
    if options.sync_model is not None:
        from pipeline.sync_filter import measure_sync

        try:
            sync = measure_sync(dataset_dir, options.sync_model, max_offset=options.max_offset, min_conf=options.min_conf,
                                fix_offset=options.fix_offset, **ray_options)
        except (FileNotFoundError, ValueError) as error:
            raise PrepJobError(str(error)) from error
    if options.units is not None:
        from pipeline.units import add_lip_units

        try:
            units = add_lip_units(dataset_dir, options.units, **ray_options)
        except (FileNotFoundError, ValueError, ImportError) as error:
            raise PrepJobError(str(error)) from error
    return PreparedDataset(dataset_dir, summary, sync=sync, units=units)
