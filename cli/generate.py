"""``cals-generate``: lip-sync a face video or image to an audio track with a trained CALS model.

``cals-generate --face VIDEO_OR_IMAGE --audio WAV_OR_VIDEO --ckpt RUN --out out.mp4`` writes an
H.264 (yuv420p) mp4 at the face input's resolution and 25 fps, with the audio as 16 kHz AAC,
as long as the audio. See :mod:`pipeline.lipsync_video` for the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from enum import Enum

from cals.constants import PASTE_FEATHER
from cals.inference import PASTE_REGIONS
from pipeline.io import ENCODE_CRF
from pipeline.lipsync_video import GenerateParams
from pipeline.stages.crop import CropParams
from cli.common import DetectorName, MediapipeModel, fail, new_app, run_app

app = new_app(__doc__)

PasteRegion = Enum("PasteRegion", {region: region for region in PASTE_REGIONS}, type=str)


@app.command()
def generate(
    face: Path = typer.Option(..., "--face", help="Face video (any ffmpeg format; decoded at 25 fps) or still image."),
    audio: Path = typer.Option(..., "--audio", help="Driving audio: a WAV (any rate, downmixed to 16 kHz mono) or a video's audio track."),
    ckpt: Path = typer.Option(..., "--ckpt", help="CALS model: a cals-train cals run folder, or a .safetensors inside one."),
    out: Path = typer.Option(..., "--out", help="Output mp4."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device of the model (cpu, cuda, cuda:1, ...) [default: CUDA when available]."),
    detector: DetectorName = typer.Option(DetectorName.mediapipe, "--detector", help="Face detector (as cals-prep): mediapipe, sfd, or none (the centre square)."),
    mediapipe_model: MediapipeModel = typer.Option(MediapipeModel.short, "--mediapipe-model", help="short: faces within ~2 m; full: small/distant faces."),
    crop_margin: float = typer.Option(CropParams.margin, "--crop-margin", min=1.0, help="Crop side = margin x the detection box's larger side (use the value the model's shards were prepared with)."),
    feather: float = typer.Option(PASTE_FEATHER, "--feather", min=0.0, max=0.5, help="Seam blend width, share of the crop box side (0: hard paste)."),
    paste: PasteRegion = typer.Option(GenerateParams.paste, "--paste", help="What is pasted back: mouth (the masked lower face, feathered across the mask line; eyes, skin and background stay the source's) or face (the whole crop box)."),
    crf: int = typer.Option(ENCODE_CRF, "--crf", min=0, max=51, help="x264 quality (lower: better, larger)."),
    lossless: bool = typer.Option(False, "--lossless", help="Lossless RGB H.264 (libx264rgb -qp 0) instead of yuv420p: exact pixels, large files, few players."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar (there is none either when stderr is not a terminal)."),
) -> None:
    """Write OUT: the face lip-synced to the audio, as long as the audio."""
    from cals.train.loop import resolve_device
    from pipeline.lipsync_video import InputError, generate_video
    from pipeline.io import EncodeError

    for name, path in (("--face", face), ("--audio", audio), ("--ckpt", ckpt)):
        if not path.exists():
            fail(f"{name} {path} does not exist")
    if out.suffix.lower() != ".mp4":
        fail(f"--out {out} must end in .mp4")
    if not out.parent.is_dir():
        fail(f"cannot write {out}: folder {out.parent} does not exist")
    try:
        device = str(resolve_device(device))
    except RuntimeError as error:
        fail(f"--device {device!r} is not a torch device: {error}")
    params = GenerateParams(
        detector=detector.value,
        mediapipe_model=mediapipe_model.value,
        crop=CropParams(margin=crop_margin),
        feather=feather,
        paste=paste.value,
        lossless=lossless,
        crf=crf,
    )
    from cals.models.cals_model import load_cals_model

    try:
        model = load_cals_model(ckpt, device=device)
    except (FileNotFoundError, ValueError) as error:
        fail(f"--ckpt {ckpt}: {error}")
    try:
        result = generate_video(face, audio, ckpt, out, params, device=device, model=model, show_progress=not quiet)
    except (InputError, EncodeError, FileNotFoundError, ImportError) as error:
        fail(str(error))
    Console().print(
        f"wrote {result.out}: {result.width}x{result.height}, {result.frames} frames at 25 fps, {result.duration_s:.2f} s of audio"
        f"{' (still image)' if result.source_frames == 1 else ' (face video looped)' if result.looped else ''}",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    raise SystemExit(run_app(app))


if __name__ == "__main__":
    main()
