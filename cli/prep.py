"""``cals-prep``: prepare talking-face corpora into WebDataset shards, verify and inspect them.

Each corpus command (``folder``, ``lrs2``, ...) declares only its own options; the options every
prep run shares (output, detector, crop, Ray, resume) are added by :func:`prep_command`, which
hands the recipe's clips and those options (:class:`pipeline.prep_job.PrepOptions`, same names
and defaults) to :func:`pipeline.prep_job.prepare_dataset`, so each command stays "options plus
one library call".
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from cals.constants import SYNC_MAX_OFFSET, SYNC_MIN_CONF, SYNCNET_BATCH_SIZE, SYNCNET_VSHIFT
from cli.common import DetectorName, MediapipeModel, err, fail, keyword_parameters, new_app, plain_values, register_command, run_app
from pipeline.io import DECODERS
from pipeline.prep_job import NothingPrepared, PrepJobError, PrepOptions, prepare_dataset
from pipeline.recipes.folder import PREP_DEFAULTS as FOLDER_PREP_DEFAULTS
from pipeline.recipes.lrs2 import MAIN_SUBSET as LRS2_DEFAULT_SUBSET, SUBSET_CHOICES as LRS2_SUBSETS
from pipeline.recipes.lrs3 import DEFAULT_SUBSET as LRS3_DEFAULT_SUBSET, LRS3_VAL_SHARE, SUBSET_CHOICES as LRS3_SUBSETS
from pipeline.recipes.voxceleb2 import DEFAULT_SUBSET as VOX2_DEFAULT_SUBSET, SUBSET_CHOICES as VOX2_SUBSETS, VOX2_VAL_SHARE

app = new_app(__doc__)


#: ``--decoder`` choices (pipeline.io.DECODERS).
DecoderName = Enum("DecoderName", {name: name for name in DECODERS}, type=str)


class TracksMode(str, Enum):
    dominant = "dominant"
    all = "all"
    speaker = "speaker"


def _common_options(
    out: str = typer.Option(PrepOptions.out, "--out", help="Output folder (a path, or an fsspec URL such as s3://bucket/shards: needs fsspec and s3fs/gcsfs); the dataset goes to OUT/NAME/."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset folder name [default: the corpus's name]."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N clips of each split (by key): try a recipe on a small part first."),
    speakers: Optional[str] = typer.Option(None, "--speakers", help="Only these speakers (comma-separated ids)."),
    detector: DetectorName = typer.Option(DetectorName(PrepOptions.detector), "--detector", help="Face detector: mediapipe, sfd (S3FD weights in the torch hub cache) or none (centre square)."),
    mediapipe_model: MediapipeModel = typer.Option(MediapipeModel(PrepOptions.mediapipe_model), "--mediapipe-model", help="short: faces within ~2 m (fast); full: small/distant faces."),
    detect_every: int = typer.Option(PrepOptions.detect_every, "--detect-every", min=1, help="Run the detector on every k-th frame, and on the frames between two detections whose score or IoU dropped; boxes in between are interpolated."),
    min_frames: int = typer.Option(PrepOptions.min_frames, "--min-frames", min=1, help="Clips with fewer 25 fps frames fail as too_short."),
    min_face_ratio: float = typer.Option(PrepOptions.min_face_ratio, "--min-face-ratio", min=0.0, max=1.0, help="Fail clips with a face in fewer examined frames than this share."),
    lossless: bool = typer.Option(PrepOptions.lossless, "--lossless", help="Store crops as PNG instead of JPEG (4x larger)."),
    jpeg_quality: int = typer.Option(PrepOptions.jpeg_quality, "--jpeg-quality", min=90, max=100, help="JPEG quality of the crops."),
    crop_margin: float = typer.Option(PrepOptions.crop_margin, "--crop-margin", min=1.0, help="Crop side = margin x the detection box's larger side."),
    smooth_frames: int = typer.Option(PrepOptions.smooth_frames, "--smooth-frames", min=1, help="Centred moving-average window of the box track, frames (odd)."),
    shard_mb: float = typer.Option(PrepOptions.shard_mb, "--shard-mb", min=0.001, help="Largest shard size in MB (planned from probed clip durations; smaller shards, at least 4 per worker, when the corpus allows)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray CPUs for a local run [default: all cores]."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster ('auto' or ray://host:port); OUT must be visible to every node."),
    force: bool = typer.Option(False, "--force", help="Accept an output folder prepared from other inputs or parameters (redo what differs)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo the shards holding clips that failed for a transient reason (worker_crash, internal_error)."),
    units: Optional[Path] = typer.Option(None, "--units", help="After prep, add lip units with this model (as `cals-prep units`): one command from videos to training-ready shards."),
    sync_model: Optional[Path] = typer.Option(None, "--sync-model", help="After prep, measure each clip's AV offset and confidence with this syncnet_v2.model (as `cals-prep sync`)."),
    max_offset: int = typer.Option(PrepOptions.max_offset, "--max-offset", min=0, help="With --sync-model: drop clips whose |AV offset| exceeds this, frames."),
    min_conf: float = typer.Option(PrepOptions.min_conf, "--min-conf", min=0.0, help="With --sync-model: drop clips whose sync confidence is below this."),
    fix_offset: bool = typer.Option(False, "--fix-offset", help="With --sync-model: shift kept clips' audio by the measured offset (mel recomputed)."),
    tracks: Optional[TracksMode] = typer.Option(None, "--tracks", help="dominant: one face track per file (pre-cropped corpora); all: every face track of at least --min-track frames, one sample each (KEY-s<scene>t<track>); speaker: the track SyncNet (--sync-model) finds speaking in each scene [default: speaker with --sync-model, else the corpus's: all for folder, dominant for the others]."),
    scenes: Optional[bool] = typer.Option(None, "--scenes/--no-scenes", help="Split at shot changes (PySceneDetect ContentDetector, threshold 27) before tracking; no track crosses a cut [default: on for folder and hdtf, off for the single-shot corpora]."),
    min_track: int = typer.Option(PrepOptions.min_track, "--min-track", min=1, help="--tracks all|speaker: drop face tracks shorter than this, 25 fps frames (2 s, as LatentSync)."),
    min_face_px: float = typer.Option(PrepOptions.min_face_px, "--min-face-px", min=0.0, help="--tracks all|speaker: drop tracks whose median face box is smaller, source pixels (small_face)."),
    min_sharpness: float = typer.Option(PrepOptions.min_sharpness, "--min-sharpness", min=0.0, help="--tracks all|speaker: drop tracks whose crops' median variance of the Laplacian is lower (blurry)."),
    max_interpolated: float = typer.Option(PrepOptions.max_interpolated, "--max-interpolated", min=0.0, max=1.0, help="--tracks all|speaker: drop tracks with a larger share of examined frames without their own detection (interpolated)."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=0.04, help="Split longer tracks (every --tracks mode) into consecutive samples, at the quietest frame of the last quarter before the limit."),
    decoder: DecoderName = typer.Option(DecoderName(PrepOptions.decoder), "--decoder", help="pyav: decode in-process with PyAV (FFmpeg's filters, no process per clip); ffmpeg: ffprobe + one ffmpeg process per stream (the path of runs before --decoder)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first unexpected error instead of recording it (debugging)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary table."),
) -> None:
    """Template: its parameters are the options every prep command shares."""


COMMON_PARAMETERS = keyword_parameters(_common_options)

Recipe = Callable[..., tuple[dict, str]]


def prep_command(command_name: str, tracks: str = "dominant", scenes: bool = False) -> Callable[[Recipe], Recipe]:
    """Register a corpus command: the decorated function takes the corpus's own options and
    returns ``(clips_by_split, default_dataset_name)``; the shared options and the run are added.
    ``tracks`` / ``scenes``: the corpus's ``--tracks`` / ``--scenes`` defaults (``--tracks``
    becomes ``speaker`` when ``--sync-model`` is given)."""

    def decorator(recipe: Recipe) -> Recipe:
        own = keyword_parameters(recipe)
        common_names = {p.name for p in COMMON_PARAMETERS}

        def command(**options) -> None:
            common = {k: options.pop(k) for k in list(options) if k in common_names}
            if common["tracks"] is None:
                common["tracks"] = "speaker" if common["sync_model"] is not None else tracks
            if common["scenes"] is None:
                common["scenes"] = scenes
            try:
                clips, default_name = recipe(**options)
            except (FileNotFoundError, ValueError) as error:
                fail(str(error))
            try:
                prepare_dataset(clips, PrepOptions(**plain_values(common)), default_name=default_name, command=["cals-prep", *sys.argv[1:]])
            except NothingPrepared as error:
                fail(str(error), code=1)
            except PrepJobError as error:
                fail(str(error))

        register_command(app, command_name, command, [*own, *COMMON_PARAMETERS], recipe.__doc__)
        return recipe

    return decorator


def some_clips(clips: dict, nothing: str) -> dict:
    """A recipe's ``clips``, or FileNotFoundError(``nothing``) when every split is empty."""
    if not any(clips.values()):
        raise FileNotFoundError(nothing)
    return clips


def subset_choices(name: str, choices: tuple[str, ...]) -> type[Enum]:
    """A ``--subset`` choice type from a recipe's ``SUBSET_CHOICES`` (one list of names)."""
    return Enum(name, {choice: choice for choice in choices}, type=str)


Lrs2Subset = subset_choices("Lrs2Subset", LRS2_SUBSETS)
Lrs3Subset = subset_choices("Lrs3Subset", LRS3_SUBSETS)
Vox2Subset = subset_choices("Vox2Subset", VOX2_SUBSETS)


def share_option(split: str, default: float, of: str, more: str = "") -> typer.models.OptionInfo:
    """A ``--val``/``--test`` option: the share of ``of`` (speakers) hashed into ``split``."""
    return typer.Option(default, f"--{split}", help=f"Share of {of} in the {split} split (speaker-hashed{more}).")


@prep_command("folder", **FOLDER_PREP_DEFAULTS)
def folder(
    root: Path = typer.Option(..., "--root", help="Folder of videos (mp4 avi mkv mov webm), searched recursively; speaker = parent folder name."),
    val: float = share_option("val", 0.05, "speakers", "; by clip when too few speakers leave it empty"),
    test: float = share_option("test", 0.05, "speakers", "; by clip when too few speakers leave it empty"),
):
    """Prepare any folder of talking-face videos into OUT/NAME/ shards + manifest.parquet + prep.json."""
    from pipeline.recipes.folder import prepare_folder

    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} does not exist or is not a folder")
    clips = prepare_folder(root, val=val, test=test)
    return some_clips(clips, f"no video files (.mp4 .avi .mkv .mov .webm) under {root}"), root.resolve().name


@prep_command("lrs2")
def lrs2(
    root: Path = typer.Option(..., "--root", help="LRS2 release folder: holds mvlrs_v1/{main,pretrain}/ and train.txt val.txt test.txt pretrain.txt."),
    subset: Lrs2Subset = typer.Option(Lrs2Subset(LRS2_DEFAULT_SUBSET), "--subset", help="main (official train/val/test lists), pretrain (all to train) or all."),
):
    """Prepare LRS2 (official splits from its list files, transcripts, pretrain word timings) into OUT/lrs2/."""
    from pipeline.recipes.lrs2 import LRS2_DATASET, prepare_lrs2

    clips = prepare_lrs2(root, subset=subset.value)
    return some_clips(clips, f"no listed LRS2 clip of --subset {subset.value} found under {root} (see the warnings above)"), LRS2_DATASET


@prep_command("lrs3")
def lrs3(
    root: Path = typer.Option(..., "--root", help="LRS3 folder holding pretrain/ trainval/ test/ (<video_id>/<NNNNN>.mp4 with its .txt)."),
    subset: Lrs3Subset = typer.Option(Lrs3Subset(LRS3_DEFAULT_SUBSET), "--subset", help="trainval (train + val, and the official test), pretrain (train + val) or all."),
    val: float = share_option("val", LRS3_VAL_SHARE, "talks (speakers) of trainval/pretrain", "; LRS3 has no official val"),
):
    """Prepare LRS3 (official test; val carved by talk, speaker-disjoint; transcripts, word timings) into OUT/lrs3/."""
    from pipeline.recipes.lrs3 import LRS3_DATASET, prepare_lrs3

    clips = prepare_lrs3(root, subset=subset.value, val=val)
    return some_clips(clips, f"no LRS3 clip (<video_id>/<NNNNN>.mp4) of --subset {subset.value} found under {root} (see the warnings above)"), LRS3_DATASET


@prep_command("lrw")
def lrw(
    root: Path = typer.Option(..., "--root", help="LRW folder: lipread_mp4/ or the folder that holds it (<WORD>/{train,val,test}/<WORD>_NNNNN.mp4)."),
):
    """Prepare LRW (official splits; label = the word; no speaker ids, so not speaker-disjoint) into OUT/lrw/."""
    from pipeline.recipes.lrw import LRW_DATASET, prepare_lrw

    clips = prepare_lrw(root)
    return some_clips(clips, f"no LRW clips (<WORD>/{{train,val,test}}/<WORD>_NNNNN.mp4) under {root}"), LRW_DATASET


@prep_command("hdtf", scenes=True)
def hdtf(
    root: Path = typer.Option(..., "--root", help="Folder of downloaded HDTF videos (mp4 mkv webm mov), searched recursively by video name."),
    annotations: Path = typer.Option(..., "--annotations", help="HDTF_dataset folder of github.com/MRzzm/HDTF (<GROUP>_annotion_time.txt, <GROUP>_crop_wh.txt, ...)."),
    val: float = share_option("val", 0.05, "speakers (videos)"),
    test: float = share_option("test", 0.05, "speakers (videos)"),
):
    """Prepare HDTF: each annotated span of each downloaded video, cut and cropped as annotated, into OUT/hdtf/."""
    from pipeline.recipes.hdtf import HDTF_DATASET, prepare_hdtf

    clips = prepare_hdtf(root, annotations, val=val, test=test)
    return some_clips(clips, f"no annotated HDTF video with a crop found under {root} (see the warnings above)"), HDTF_DATASET


@prep_command("voxceleb2")
def voxceleb2(
    root: Path = typer.Option(..., "--root", help="VoxCeleb2 folder holding dev/mp4/ and test/mp4/ (<idNNNNN>/<video>/<clip>.mp4; aac/ not needed)."),
    subset: Vox2Subset = typer.Option(Vox2Subset(VOX2_DEFAULT_SUBSET), "--subset", help="all (dev to train + val, the official test), dev or test."),
    val: float = share_option("val", VOX2_VAL_SHARE, "dev speakers"),
):
    """Prepare VoxCeleb2 (official dev/test; speakers from the id folders; val carved by speaker; no transcripts) into OUT/voxceleb2/."""
    from pipeline.recipes.voxceleb2 import VOX2_DATASET, prepare_voxceleb2

    clips = prepare_voxceleb2(root, subset=subset.value, val=val)
    return some_clips(clips, f"no VoxCeleb2 clip (<idNNNNN>/<video>/<clip>.mp4) of --subset {subset.value} found under {root} (see the warnings above)"), VOX2_DATASET


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
    max_offset: int = typer.Option(SYNC_MAX_OFFSET, "--max-offset", min=0, help="Drop clips whose AV offset exceeds this many frames (40 ms each) either way."),
    min_conf: float = typer.Option(SYNC_MIN_CONF, "--min-conf", help="Drop clips whose SyncNet confidence (LSE-C) is below this."),
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
    for warning in report.warnings:
        err.print(f"[yellow]![/] {warning}", highlight=False, soft_wrap=True)
    status = "[green]OK[/]" if report.ok else f"[red]{len(report.problems)} problems[/]"
    Console().print(f"{dataset}: {report.shards} shards, {report.samples} samples, {report.frames} frames: {status}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command("inspect")
def inspect_(
    dataset: Path = typer.Argument(..., help="A dataset folder written by cals-prep (OUT/NAME)."),
    png: Path = typer.Option(Path("sheet.png"), "--png", help="Where to write the contact sheet."),
    samples: int = typer.Option(8, "--samples", min=1, help="Samples (rows) on the sheet."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames per row, evenly spaced."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split."),
) -> None:
    """Write a PNG contact sheet (crops, detection marks, log-mel) and print the manifest summary."""
    from pipeline.inspect import inspect_dataset

    try:
        report = inspect_dataset(dataset, png, samples=samples, frames=frames, split=split)
    except FileNotFoundError as error:
        fail(str(error))
    console = Console()
    if report.by_status is not None:
        console.print(report.by_status.to_string())
        if len(report.failures):
            console.print(report.failures.to_string())
    console.print(f"contact sheet: {report.sheet}", highlight=False)


@app.command()
def stats(dataset: Path = typer.Argument(..., help="A dataset folder written by cals-prep (OUT/NAME).")) -> None:
    """Print the manifest summary: clips, hours, speakers and frames per split; failures by reason."""
    from rich.table import Table

    from pipeline.inspect import manifest_stats

    try:
        summary = manifest_stats(dataset)
    except FileNotFoundError as error:
        fail(str(error))
    table = Table(title=f"{dataset}")
    for column in ("split", "clips ok", "clips failed", "hours", "speakers", "frames"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, row in summary.by_split.iterrows():
        table.add_row(str(split), f"{int(row.clips_ok)}", f"{int(row.clips_failed)}", f"{row.hours:.3f}", f"{int(row.speakers)}", f"{int(row.frames)}")
    console = Console()
    console.print(table)
    if len(summary.failures):
        failures = Table(title="failures by reason")
        failures.add_column("reason")
        failures.add_column("clips", justify="right")
        for reason, count in summary.failures.items():
            failures.add_row(str(reason), str(count))
        console.print(failures)


def main() -> None:
    raise SystemExit(run_app(app))


if __name__ == "__main__":
    main()
