"""``cals-sync``: SyncNet scoring of clips (AV offset, LSE-D, LSE-C) with syncnet_v2.model.

``cals-sync score PATH --model syncnet_v2.model`` scores a video file, a folder of videos
(searched recursively) or a dataset folder written by ``cals-prep`` (it has manifest.parquet).
``--protocol`` says what the scorer is fed (:mod:`pipeline.sync_report`): ``shards`` (the
samples as stored; raw videos through the prep chain), ``syncnet_python`` (raw videos through
syncnet_python's run_pipeline chain, one score per face track) or ``precropped`` (frames as they
are, resized to 224: Wav2Lip's LRS2/LRS3 protocol).
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cals.constants import SYNCNET_BATCH_SIZE, SYNCNET_VSHIFT
from pipeline.sync_protocols import SyncnetPythonParams
from pipeline.sync_report import PROTOCOLS
from cli.common import DetectorName, MediapipeModel, err, fail, new_app, run_app

app = new_app(__doc__)


_DEFAULTS = SyncnetPythonParams()
Protocol = Enum("Protocol", {name: name for name in PROTOCOLS}, type=str)


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_report(report) -> None:
    """The per-clip table and the one-line corpus summary (``report``: pipeline.sync_report.SyncReport)."""
    summary = report.summary
    table = Table(title=f"{report.scorer} scores ({report.model.name}, protocol {report.protocol}, offsets -{report.vshift}..+{report.vshift})")
    for column, justify in (("clip", "left"), ("frames", "right"), ("offset", "right"), ("LSE-D", "right"), ("LSE-C", "right"), ("error", "left")):
        table.add_column(column, justify=justify)
    for row in report.rows():
        offset = "-" if row["offset"] is None else str(row["offset"])
        frames = "-" if row["num_frames"] is None else str(row["num_frames"])
        table.add_row(row["clip"], frames, offset, _fmt(row["min_dist"]), _fmt(row["conf"]), row["error"] or "")
    if summary.clips:
        table.add_section()
        table.add_row(f"mean ({summary.clips} clip{'s' if summary.clips != 1 else ''})", "", _fmt(summary.mean_offset, 2), _fmt(summary.mean_min_dist), _fmt(summary.mean_conf), "")
    console = Console()
    console.print(table)
    console.print(
        f"{summary.clips} scored, {summary.failed} failed; mean |offset| {_fmt(summary.mean_abs_offset, 2)} frames, "
        f"LSE-D {_fmt(summary.mean_min_dist)}, LSE-C {_fmt(summary.mean_conf)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def score(
    path: Path = typer.Argument(..., help="A video file, a folder of videos, or a cals-prep dataset folder (with manifest.parquet)."),
    model: Path = typer.Option(..., "--model", help="syncnet_v2.model (a state dict; syncnet_python's download_model.sh fetches it), or a sync-critic run folder from `cals-train syncnet` (its distances are between unit vectors: not comparable with published LSE-D)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write per-clip scores and corpus means as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-clip scores as CSV."),
    vshift: int = typer.Option(SYNCNET_VSHIFT, "--vshift", min=0, help="Search offsets -VSHIFT..+VSHIFT frames (syncnet_python's default)."),
    batch_size: int = typer.Option(SYNCNET_BATCH_SIZE, "--batch-size", min=1, help="Windows per SyncNet forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device for SyncNet (cpu, cuda, cuda:1, ...) [default: CUDA when available]."),
    detector: DetectorName = typer.Option(DetectorName.mediapipe, "--detector", help="Face detector for raw videos (as cals-prep)."),
    mediapipe_model: MediapipeModel = typer.Option(MediapipeModel.short, "--mediapipe-model", help="short: faces within ~2 m; full: small/distant faces."),
    protocol: Protocol = typer.Option(PROTOCOLS[0], "--protocol", help="shards: samples as stored (raw videos through cals-prep's chain); syncnet_python: syncnet_python's run_pipeline chain, one score per face track (HDTF-style tables); precropped: frames as they are, resized to 224 (Wav2Lip's LRS2/LRS3 tables)."),
    min_track: int = typer.Option(_DEFAULTS.min_track, "--min-track", min=1, help="syncnet_python: frames a scene and a face track must exceed (syncnet_python 100, LatentSync 50)."),
    s3fd: Optional[Path] = typer.Option(None, "--s3fd", help="syncnet_python: detect with S3FD from this sfd_face.pth (syncnet_python's detector and weights file; a missing file's error says where to get it) instead of MediaPipe."),
    jpeg: bool = typer.Option(_DEFAULTS.jpeg, "--jpeg/--no-jpeg", help="syncnet_python: JPEG round trip of the crops at ffmpeg's default quality, as syncnet_python scores them."),
) -> None:
    """Score lip sync: per clip the AV offset (frames), LSE-D (min dist) and LSE-C (confidence)."""
    from cals.train.loop import resolve_device
    from pipeline.sync_report import ScoreSetupError, score_path

    try:
        with err.status("scoring…"):
            report = score_path(path, model, json_out=json_out, csv_out=csv_out, vshift=vshift, batch_size=batch_size,
                                device=device or str(resolve_device(None)), detector=detector.value, mediapipe_model=mediapipe_model.value,
                                protocol=protocol.value, syncnet_python=replace(_DEFAULTS, min_track=min_track, jpeg=jpeg), s3fd=s3fd)
    except ScoreSetupError as error:
        fail(str(error))
    _print_report(report)
    for written in (json_out, csv_out):
        if written is not None:
            err.print(f"wrote {written}", highlight=False, soft_wrap=True)
    if report.detector:
        err.print(f"detector: {report.detector}", highlight=False, soft_wrap=True)
    if report.summary.clips == 0:
        fail("no clip could be scored (see the error column)", code=1)


@app.callback()
def _root() -> None:
    """Keeps ``score`` a named subcommand (``cals-sync score PATH``)."""


def main() -> None:
    raise SystemExit(run_app(app))


if __name__ == "__main__":
    main()
