"""``cals-sync``: SyncNet scoring of clips (AV offset, LSE-D, LSE-C) with syncnet_v2.model.

``cals-sync score PATH --model syncnet_v2.model`` scores a video file, a folder of videos
(searched recursively) or a dataset folder written by ``cals-prep`` (it has manifest.parquet).
Raw videos go through the prep pipeline's own chain with its default settings (25 fps, face
detection and tracking, 128x128 crops, 16 kHz audio), so a video scores exactly as the sample
``cals-prep`` makes of it with the same defaults.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from cals.constants import SYNCNET_BATCH_SIZE, SYNCNET_VSHIFT
from cli.common import DetectorName, MediapipeModel, err, fail

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

#: Columns of the --csv file, in order.
CSV_COLUMNS = ("clip", "num_frames", "offset", "min_dist", "conf", "error")


def _iter_videos(videos: list[Path], root: Path, detector: Any, params: Any) -> Iterator[tuple[str, Any]]:
    """``(display name, (frames, audio) or error text)`` per video, through the prep chain
    (``params``: pipeline.prepare_clip.PrepParams); closes ``detector`` at the end."""
    from cals.shard_format import decode_sample
    from pipeline.prepare_clip import process_clip
    from pipeline.errors import ClipError
    from pipeline.manifest import ClipSource
    from pipeline.recipes.folder import make_key

    try:
        for video in videos:
            name = video.relative_to(root).as_posix() if video != root else video.name
            source = ClipSource(key=make_key(name), path=str(video.resolve()), dataset="sync", split="test", speaker="")
            try:
                sample = decode_sample(process_clip(source, params, detector).sample)
            except ClipError as error:
                yield name, str(error)
                continue
            yield name, (sample.frames, sample.audio)
    finally:
        detector.close()


def _iter_shards(dataset: Path) -> Iterator[tuple[str, Any]]:
    from cals.data import iter_samples

    for sample in iter_samples(dataset):
        yield sample.key, (sample.frames, sample.audio)


def _write_outputs(rows: list[dict[str, Any]], summary: dict[str, Any], model: Path, json_out: Optional[Path], csv_out: Optional[Path]) -> None:
    if json_out is not None:
        json_out.write_text(json.dumps({"model": str(model), "clips": rows, "summary": summary}, indent=2) + "\n")
    if csv_out is not None:
        with csv_out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@app.command()
def score(
    path: Path = typer.Argument(..., help="A video file, a folder of videos, or a cals-prep dataset folder (with manifest.parquet)."),
    model: Path = typer.Option(..., "--model", help="syncnet_v2.model (a state dict; syncnet_python's download_model.sh fetches it), or a sync-critic run folder from `cals-train syncnet` (its distances are between unit vectors: not comparable with published LSE-D)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write per-clip scores and corpus means as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-clip scores as CSV."),
    vshift: int = typer.Option(SYNCNET_VSHIFT, "--vshift", min=0, help="Search offsets -VSHIFT..+VSHIFT frames (syncnet_python's default)."),
    batch_size: int = typer.Option(SYNCNET_BATCH_SIZE, "--batch-size", min=1, help="Windows per SyncNet forward pass."),
    device: str = typer.Option("cpu", "--device", help="torch device for SyncNet (cpu, cuda, cuda:1, ...)."),
    detector: DetectorName = typer.Option(DetectorName.mediapipe, "--detector", help="Face detector for raw videos (as cals-prep)."),
    mediapipe_model: MediapipeModel = typer.Option(MediapipeModel.short, "--mediapipe-model", help="short: faces within ~2 m; full: small/distant faces."),
) -> None:
    """Score lip sync: per clip the AV offset (frames), LSE-D (min dist) and LSE-C (confidence)."""
    import torch

    from cals.data import MANIFEST_FILE
    from cals.models.syncnet_v2 import load_syncnet_v2
    from cals.sync_score import ClipScore, score_samples, summarise

    if not path.exists():
        fail(f"{path} does not exist")
    for out in (json_out, csv_out):
        if out is not None and not out.parent.is_dir():
            fail(f"cannot write {out}: folder {out.parent} does not exist")
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        fail(f"--device {device!r} is not a torch device: {error}")
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device}: CUDA is not available to this torch build")
    from cals.models.lip_units import model_kind

    try:
        kind = model_kind(model)
        if kind == "sync_critic":
            from cals.models.sync_critic import load_critic, score_samples as score_with_critic

            network = load_critic(model, device=torch_device)
        else:
            network = load_syncnet_v2(model, device=torch_device)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))

    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        inputs = _iter_shards(path)
    else:
        from pipeline.recipes.folder import VIDEO_EXTENSIONS, find_videos

        videos = find_videos(path) if path.is_dir() else [path]
        if not videos:
            fail(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) and no {MANIFEST_FILE} in {path}")
        from pipeline.prepare_clip import PrepParams
        from pipeline.stages.detect import make_detector

        try:
            face_detector = make_detector(detector.value, mediapipe_model.value)
        except (FileNotFoundError, ImportError, ValueError) as error:
            fail(str(error))
        params = PrepParams(detector=detector.value, mediapipe_model=mediapipe_model.value)
        inputs = _iter_videos(videos, path, face_detector, params)

    results: list[ClipScore] = []
    with err.status("scoring…"):
        for key, item in inputs:
            if isinstance(item, str):
                results.append(ClipScore(key=key, num_frames=None, error=item))
            else:
                if kind == "sync_critic":
                    results.extend(score_with_critic([(key, *item)], network, vshift=vshift))
                else:
                    results.extend(score_samples([(key, *item)], network, vshift=vshift, batch_size=batch_size))
    rows = [r.to_dict() for r in results]
    summary = summarise(results)

    scorer = "sync critic" if kind == "sync_critic" else "SyncNet"
    table = Table(title=f"{scorer} scores ({model.name}, offsets -{vshift}..+{vshift})")
    for column, justify in (("clip", "left"), ("frames", "right"), ("offset", "right"), ("LSE-D", "right"), ("LSE-C", "right"), ("error", "left")):
        table.add_column(column, justify=justify)
    for row in rows:
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
    _write_outputs(rows, summary.to_dict(), model, json_out, csv_out)
    if summary.clips == 0:
        fail("no clip could be scored (see the error column)", code=1)


@app.callback()
def _root() -> None:
    """Keeps ``score`` a named subcommand (``cals-sync score PATH``)."""


def main() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    app()


if __name__ == "__main__":
    main()
