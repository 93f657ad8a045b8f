"""``cals-prep``: prepare talking-face corpora into WebDataset shards, verify and inspect them.

Each corpus command (``folder``, ``lrs2``, ...) declares only its own options; the options every
prep run shares (output, detector, crop, Ray, resume) are added by :func:`prep_command`, so
each command stays "options plus one library call".
"""

from __future__ import annotations

import os
import sys
import uuid
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from cals.constants import SYNCNET_BATCH_SIZE, SYNCNET_VSHIFT
from cli.common import DetectorName, MediapipeModel, err, fail, keyword_parameters, register_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0], rich_markup_mode=None)


def writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable, or exit with a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".cals-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        fail(f"--out {path} is not writable: {error.strerror or error}")
    return path


def writable_url(url: str) -> str:
    """Prove the fsspec URL ``url`` can be written (one small object, then removed), or exit
    with a one-line error (a missing fsspec or backend names what to install)."""
    from pipeline.storage import open_storage

    try:
        storage = open_storage(url)
        storage.makedirs()
        probe = f".cals-write-test-{uuid.uuid4().hex[:8]}"
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except ImportError as error:
        fail(str(error))
    except Exception as error:  # noqa: BLE001 - backends raise their own types (botocore, google.auth)
        fail(f"--out {url} is not writable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return url


def _common_options(
    out: str = typer.Option("shards", "--out", help="Output folder (a path, or an fsspec URL such as s3://bucket/shards: needs fsspec and s3fs/gcsfs); the dataset goes to OUT/NAME/."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset folder name [default: the corpus's name]."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N clips of each split (by key): try a recipe on a small part first."),
    speakers: Optional[str] = typer.Option(None, "--speakers", help="Only these speakers (comma-separated ids)."),
    detector: DetectorName = typer.Option(DetectorName.mediapipe, "--detector", help="Face detector: mediapipe, sfd (S3FD weights in the torch hub cache) or none (centre square)."),
    mediapipe_model: MediapipeModel = typer.Option(MediapipeModel.short, "--mediapipe-model", help="short: faces within ~2 m (fast); full: small/distant faces."),
    detect_every: int = typer.Option(1, "--detect-every", min=1, help="Run the detector on every k-th frame; boxes in between are interpolated."),
    min_frames: int = typer.Option(25, "--min-frames", min=1, help="Clips with fewer 25 fps frames fail as too_short."),
    min_face_ratio: float = typer.Option(0.5, "--min-face-ratio", min=0.0, max=1.0, help="Fail clips with a face in fewer examined frames than this share."),
    lossless: bool = typer.Option(False, "--lossless", help="Store crops as PNG instead of JPEG (4x larger)."),
    jpeg_quality: int = typer.Option(95, "--jpeg-quality", min=90, max=100, help="JPEG quality of the crops."),
    crop_margin: float = typer.Option(1.6, "--crop-margin", min=1.0, help="Crop side = margin x the detection box's larger side."),
    smooth_frames: int = typer.Option(7, "--smooth-frames", min=1, help="Centred moving-average window of the box track, frames (odd)."),
    shard_mb: float = typer.Option(500.0, "--shard-mb", min=0.001, help="Target shard size in MB (planned from probed clip durations)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray CPUs for a local run [default: all cores]."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster ('auto' or ray://host:port); OUT must be visible to every node."),
    force: bool = typer.Option(False, "--force", help="Accept an output folder prepared from other inputs or parameters (redo what differs)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo the shards holding clips that failed for a transient reason (worker_crash, internal_error)."),
    units: Optional[Path] = typer.Option(None, "--units", help="After prep, add lip units with this model (as `cals-prep units`): one command from videos to training-ready shards."),
    sync_model: Optional[Path] = typer.Option(None, "--sync-model", help="After prep, measure each clip's AV offset and confidence with this syncnet_v2.model (as `cals-prep sync`)."),
    max_offset: int = typer.Option(3, "--max-offset", min=0, help="With --sync-model: drop clips whose |AV offset| exceeds this, frames."),
    min_conf: float = typer.Option(3.0, "--min-conf", min=0.0, help="With --sync-model: drop clips whose sync confidence is below this."),
    fix_offset: bool = typer.Option(False, "--fix-offset", help="With --sync-model: shift kept clips' audio by the measured offset (mel recomputed)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first unexpected error instead of recording it (debugging)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary table."),
) -> None:
    """Template: its parameters are the options every prep command shares."""


COMMON_PARAMETERS = keyword_parameters(_common_options)

Recipe = Callable[..., tuple[dict, str]]


def prep_command(command_name: str) -> Callable[[Recipe], Recipe]:
    """Register a corpus command: the decorated function takes the corpus's own options and
    returns ``(clips_by_split, default_dataset_name)``; the shared options and the run are added."""

    def decorator(recipe: Recipe) -> Recipe:
        own = keyword_parameters(recipe)
        common_names = {p.name for p in COMMON_PARAMETERS}

        def command(**options) -> None:
            common = {k: options.pop(k) for k in list(options) if k in common_names}
            try:
                clips, default_name = recipe(**options)
            except (FileNotFoundError, ValueError) as error:
                fail(str(error))
            run_recipe(clips, common.pop("name") or default_name, **common)

        register_command(app, command_name, command, [*own, *COMMON_PARAMETERS], recipe.__doc__)
        return recipe

    return decorator


def run_recipe(clips: dict, dataset_name: str, *, out: str, limit, speakers, detector, mediapipe_model, detect_every,
               min_frames, min_face_ratio, lossless, jpeg_quality, crop_margin, smooth_frames, shard_mb, workers,
               address, force, retry_failed, units, sync_model, max_offset, min_conf, fix_offset, fail_fast, quiet) -> None:
    """The run every corpus command ends in: filter, check, prepare, summarise; then the
    optional sync filter (--sync-model) and lip units (--units), each the same library call as
    its own command."""
    from pipeline.prepare_clip import PrepParams
    from pipeline.recipes import select_clips
    from pipeline.run import OutputMismatch, run_prep
    from pipeline.stages.crop import CropParams
    from pipeline.stages.track import TrackParams

    try:
        clips = select_clips(clips, limit=limit, speakers=speakers.split(",") if speakers else None)
        params = PrepParams(
            detector=detector.value,
            mediapipe_model=mediapipe_model.value,
            detect_every=detect_every,
            min_frames=min_frames,
            min_face_ratio=min_face_ratio,
            codec="png" if lossless else "jpeg",
            jpeg_quality=jpeg_quality,
            track=TrackParams(smooth_frames=smooth_frames),
            crop=CropParams(margin=crop_margin),
        )
    except ValueError as error:
        fail(str(error))
    if not any(clips.values()):
        fail("no clips to prepare (empty corpus, or --limit/--speakers selected none)")
    if detector == DetectorName.sfd:
        from pipeline.stages.detect import SfdDetector

        try:
            SfdDetector().close()
        except (FileNotFoundError, ImportError) as error:
            fail(str(error))
    from cals.data import is_url

    if is_url(out):
        dataset_dir = writable_url(f"{out.rstrip('/')}/{dataset_name}")
    else:
        dataset_dir = writable_dir(Path(out)) / dataset_name
        writable_dir(dataset_dir)
    try:
        summary = run_prep(
            clips,
            dataset_dir,
            params,
            shard_mb=shard_mb,
            workers=workers,
            address=address,
            fail_fast=fail_fast,
            show_progress=not quiet,
            force=force,
            retry_failed=retry_failed,
            command=["cals-prep", *sys.argv[1:]],
        )
    except OutputMismatch as error:
        fail(str(error))
    if summary.ok == 0:
        fail(f"no clip could be prepared; see {dataset_dir}/manifest.parquet for the reasons", code=1)
    if (units or sync_model) and is_url(str(dataset_dir)):
        fail("--units and --sync-model work on local output folders; run them on a local copy")
    if sync_model is not None:
        from pipeline.sync_filter import measure_sync

        try:
            measure_sync(dataset_dir, sync_model, max_offset=max_offset, min_conf=min_conf, fix_offset=fix_offset,
                         workers=workers, address=address, show_progress=not quiet, fail_fast=fail_fast)
        except (FileNotFoundError, ValueError) as error:
            fail(str(error))
    if units is not None:
        from pipeline.units import add_lip_units

        try:
            add_lip_units(dataset_dir, units, workers=workers, address=address, show_progress=not quiet, fail_fast=fail_fast)
        except (FileNotFoundError, ValueError, ImportError) as error:
            fail(str(error))


@prep_command("folder")
def folder(
    root: Path = typer.Option(..., "--root", help="Folder of videos (mp4 avi mkv mov webm), searched recursively; speaker = parent folder name."),
    val: float = typer.Option(0.05, "--val", help="Share of speakers in the val split (speaker-hashed)."),
    test: float = typer.Option(0.05, "--test", help="Share of speakers in the test split (speaker-hashed)."),
):
    """Prepare any folder of talking-face videos into OUT/NAME/ shards + manifest.parquet + prep.json."""
    from pipeline.recipes.folder import prepare_folder

    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} does not exist or is not a folder")
    clips = prepare_folder(root, val=val, test=test)
    if not any(clips.values()):
        raise FileNotFoundError(f"no video files (.mp4 .avi .mkv .mov .webm) under {root}")
    return clips, root.resolve().name


class Lrs2Subset(str, Enum):
    main = "main"
    pretrain = "pretrain"
    all = "all"


@prep_command("lrs2")
def lrs2(
    root: Path = typer.Option(..., "--root", help="LRS2 release folder: holds mvlrs_v1/{main,pretrain}/ and train.txt val.txt test.txt pretrain.txt."),
    subset: Lrs2Subset = typer.Option(Lrs2Subset.main, "--subset", help="main (official train/val/test lists), pretrain (all to train) or all."),
):
    """Prepare LRS2 (official splits from its list files, transcripts, pretrain word timings) into OUT/lrs2/."""
    from pipeline.recipes.lrs2 import LRS2_DATASET, prepare_lrs2

    clips = prepare_lrs2(root, subset=subset.value)
    if not any(clips.values()):
        raise FileNotFoundError(f"no listed LRS2 clip of --subset {subset.value} found under {root} (see the warnings above)")
    return clips, LRS2_DATASET


@prep_command("lrw")
def lrw(
    root: Path = typer.Option(..., "--root", help="LRW folder: lipread_mp4/ or the folder that holds it (<WORD>/{train,val,test}/<WORD>_NNNNN.mp4)."),
):
    """Prepare LRW (official splits; label = the word; no speaker ids, so not speaker-disjoint) into OUT/lrw/."""
    from pipeline.recipes.lrw import LRW_DATASET, prepare_lrw

    clips = prepare_lrw(root)
    if not any(clips.values()):
        raise FileNotFoundError(f"no LRW clips (<WORD>/{{train,val,test}}/<WORD>_NNNNN.mp4) under {root}")
    return clips, LRW_DATASET


@prep_command("hdtf")
def hdtf(
    root: Path = typer.Option(..., "--root", help="Folder of downloaded HDTF videos (mp4 mkv webm mov), searched recursively by video name."),
    annotations: Path = typer.Option(..., "--annotations", help="HDTF_dataset folder of github.com/MRzzm/HDTF (<GROUP>_annotion_time.txt, <GROUP>_crop_wh.txt, ...)."),
    val: float = typer.Option(0.05, "--val", help="Share of speakers (videos) in the val split (speaker-hashed)."),
    test: float = typer.Option(0.05, "--test", help="Share of speakers (videos) in the test split (speaker-hashed)."),
):
    """Prepare HDTF: each annotated span of each downloaded video, cut and cropped as annotated, into OUT/hdtf/."""
    from pipeline.recipes.hdtf import HDTF_DATASET, prepare_hdtf

    clips = prepare_hdtf(root, annotations, val=val, test=test)
    if not any(clips.values()):
        raise FileNotFoundError(f"no annotated HDTF video with a crop found under {root} (see the warnings above)")
    return clips, HDTF_DATASET


@app.command()
def units(
    dataset: Path = typer.Argument(..., help="A dataset folder written by cals-prep (OUT/NAME)."),
    model: Path = typer.Option(..., "--model", help="Lip-unit model: syncnet_v2.model (a state dict), or a sync-critic run folder / its .safetensors file."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray workers, one model each (default: one per CPU, or one per GPU when CUDA is available)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster ('auto' or ray://host:port); DATASET and --model must be visible to every node."),
    batch_size: int = typer.Option(SYNCNET_BATCH_SIZE, "--batch-size", min=1, help="5-frame windows per forward pass."),
) -> None:
    """Add lip-motion units (lip.npy, one per frame) to every sample, in place and resumably."""
    from pipeline.units import add_lip_units

    try:
        summary = add_lip_units(dataset, model, workers=workers, address=address, batch_size=batch_size)
    except (FileNotFoundError, ValueError, ImportError) as error:
        fail(str(error))
    if summary.samples and summary.failed == summary.samples:
        fail(f"no sample got lip units; see the lip_error column of {dataset / 'manifest.parquet'}", code=1)


@app.command()
def sync(
    dataset: Path = typer.Argument(..., help="A dataset folder written by cals-prep (OUT/NAME)."),
    model: Path = typer.Option(..., "--model", help="syncnet_v2.model (a state dict; syncnet_python's download_model.sh fetches it)."),
    max_offset: int = typer.Option(3, "--max-offset", min=0, help="Drop clips whose AV offset exceeds this many frames (40 ms each) either way."),
    min_conf: float = typer.Option(3.0, "--min-conf", help="Drop clips whose SyncNet confidence (LSE-C) is below this."),
    fix_offset: bool = typer.Option(False, "--fix-offset", help="Shift the audio of each kept clip by its measured offset (and recompute its mel)."),
    vshift: int = typer.Option(SYNCNET_VSHIFT, "--vshift", min=0, help="Search offsets -VSHIFT..+VSHIFT frames (syncnet_python's default)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray workers, one model each (default: one per CPU, or one per GPU when CUDA is available)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster ('auto' or ray://host:port); DATASET and --model must be visible to every node."),
    batch_size: int = typer.Option(SYNCNET_BATCH_SIZE, "--batch-size", min=1, help="Windows per SyncNet forward pass."),
) -> None:
    """Measure each clip's AV offset with SyncNet; drop out-of-sync clips (out_of_sync), optionally fix the offsets."""
    from pipeline.sync_filter import measure_sync

    try:
        measure_sync(dataset, model, max_offset=max_offset, min_conf=min_conf, fix_offset=fix_offset, vshift=vshift,
                     batch_size=batch_size, workers=workers, address=address)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))


@app.command()
def verify(
    dataset: Path = typer.Argument(..., help="A dataset folder written by cals-prep (OUT/NAME)."),
    no_mel: bool = typer.Option(False, "--no-mel", help="Skip recomputing each sample's mel from its audio."),
) -> None:
    """Decode every shard and check every invariant; exit 1 on any problem."""
    from pipeline.verify import verify_dataset

    if not dataset.is_dir():
        fail(f"{dataset} is not a folder")
    report = verify_dataset(dataset, check_mel=not no_mel)
    for problem in report.problems[:50]:
        err.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)
    if len(report.problems) > 50:
        err.print(f"... and {len(report.problems) - 50} more problems")
    status = "[green]OK[/]" if report.ok else f"[red]{len(report.problems)} problems[/]"
    Console().print(f"{dataset}: {report.shards} shards, {report.samples} samples, {report.frames} frames: {status}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def inspect_(
    dataset: Path = typer.Argument(..., help="A dataset folder written by cals-prep (OUT/NAME)."),
    png: Path = typer.Option(Path("sheet.png"), "--png", help="Where to write the contact sheet."),
    samples: int = typer.Option(8, "--samples", min=1, help="Samples (rows) on the sheet."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames per row, evenly spaced."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split."),
) -> None:
    """Write a PNG contact sheet (crops, detection marks, log-mel) and print the manifest summary."""
    import pandas as pd

    from cals.data import MANIFEST_FILE
    from pipeline.inspect import contact_sheet

    if not dataset.is_dir():
        fail(f"{dataset} is not a folder")
    try:
        path = contact_sheet(dataset, png, samples=samples, frames=frames, split=split)
    except FileNotFoundError as error:
        fail(str(error))
    manifest_path = dataset / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = pd.read_parquet(manifest_path)
        table = manifest.groupby(["split", "status"]).agg(clips=("key", "size"), hours=("duration_s", lambda s: s.sum() / 3600))
        Console().print(table.to_string())
        failed = manifest[manifest.status != "ok"]
        if len(failed):
            Console().print(failed.groupby("reason").size().rename("failed clips").to_string())
    Console().print(f"contact sheet: {path}", highlight=False)


inspect_.__name__ = "inspect"
app.registered_commands[-1].name = "inspect"


@app.command()
def stats(dataset: Path = typer.Argument(..., help="A dataset folder written by cals-prep (OUT/NAME).")) -> None:
    """Print the manifest summary: clips, hours, speakers and frames per split; failures by reason."""
    import pandas as pd
    from rich.table import Table

    from cals.data import MANIFEST_FILE
    from pipeline.inspect import manifest_stats

    if not (dataset / MANIFEST_FILE).is_file():
        fail(f"{dataset / MANIFEST_FILE} is missing (not a cals-prep output, or the run never finished)")
    summary = manifest_stats(dataset)
    table = Table(title=f"{dataset}")
    for column in ("split", "clips ok", "clips failed", "hours", "speakers", "frames"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, row in summary.iterrows():
        table.add_row(str(split), f"{int(row.clips_ok)}", f"{int(row.clips_failed)}", f"{row.hours:.3f}", f"{int(row.speakers)}", f"{int(row.frames)}")
    console = Console()
    console.print(table)
    manifest = pd.read_parquet(dataset / MANIFEST_FILE, columns=["status", "reason"])
    reasons = manifest[manifest.status != "ok"]["reason"].value_counts()
    if len(reasons):
        failures = Table(title="failures by reason")
        failures.add_column("reason")
        failures.add_column("clips", justify="right")
        for reason, count in reasons.items():
            failures.add_row(str(reason), str(count))
        console.print(failures)


def main() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    app()


if __name__ == "__main__":
    main()
