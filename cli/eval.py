"""``cals-eval``: PSNR, SSIM, LMD, LSE-D and LSE-C of a CALS model on a shard dataset, as the paper's Table 1.

``cals-eval --shards shards/NAME --split test --ckpt RUN [--syncnet syncnet_v2.model | --critic
RUN] [--limit N] [--out report]`` generates every clip of the split (first frame as the
reference), prints the table and, with ``--out``, writes ``report.md`` and ``report.json``
(per-clip numbers). Beside the true-audio row, the table has the model driven by its clip's audio
shifted 20 frames and by another clip's audio, the audio gain (true − shifted), lower-half PSNR
and the FaceMesh mouth-aperture correlation: the rows only an audio-driven model wins. See
:mod:`cals.eval` for the definitions.

``--lse-clips N`` (with ``--syncnet``) also scores LSE as papers do, on the output video: the
first N clips generated, pasted back into their source frames and scored with ``--protocol``
(default: the corpus's, from prep.json: precropped for LRS2/LRS3/LRW, syncnet_python for HDTF and
folders; ``--s3fd sfd_face.pth`` for syncnet_python's detector), the real source spans for the
ground-truth row (:mod:`pipeline.eval_video`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from cli.common import err, fail, new_app, run_app

app = new_app(__doc__)


@app.command()
def evaluate(
    shards: Path = typer.Option(..., "--shards", help="A dataset folder written by cals-prep (OUT/NAME)."),
    ckpt: Path = typer.Option(..., "--ckpt", help="CALS model: a cals-train cals run folder, or a .safetensors inside one."),
    split: str = typer.Option("test", "--split", help="Which split's shards to evaluate."),
    syncnet: Optional[Path] = typer.Option(None, "--syncnet", help="LSE with syncnet_v2.model (syncnet_python's released weights): the published metric."),
    critic: Optional[Path] = typer.Option(None, "--critic", help="LSE with the project's sync critic (a cals-train syncnet run) instead: not on SyncNet's scale."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N clips."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write OUT.md (the table) and OUT.json (per-clip numbers)."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device of the models (cpu, cuda, cuda:1, ...) [default: CUDA when available]."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar and no per-clip progress lines."),
    lse_clips: int = typer.Option(0, "--lse-clips", min=0, help="Also score full-frame LSE (pasted-back output video vs the real source span) on the first N clips; needs --syncnet. 0: off."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Full-frame LSE protocol: syncnet_python or precropped [default: the corpus's, from prep.json]."),
    s3fd: Optional[Path] = typer.Option(None, "--s3fd", help="syncnet_python's sfd_face.pth: the syncnet_python protocol detects with S3FD (else MediaPipe, and the report says so)."),
) -> None:
    """Evaluate a CALS model on a split: the paper's Table 1 (PSNR, SSIM, LMD, LSE-D, LSE-C), lower-half PSNR and mouth-aperture r, with true, shifted and another clip's audio."""
    from cals.eval import evaluate as run_evaluation, report_paths
    from cals.train.loop import resolve_device
    from pipeline.progress import frame_progress, split_frames

    if lse_clips and syncnet is None:
        fail("--lse-clips needs --syncnet syncnet_v2.model (full-frame LSE is SyncNet's published metric)")
    with frame_progress(not quiet) as bar:
        task = bar.add_task(f"{split}: frames", total=split_frames(shards, split, limit))

        def progress(clip) -> None:
            bar.advance(task, clip.frames)
            if not quiet:
                bar.console.print(clip.progress_line(), highlight=False, soft_wrap=True)

        try:
            report = run_evaluation(shards, ckpt, split=split, syncnet=syncnet, critic=critic, limit=limit, out=None,
                                    device=device or str(resolve_device(None)), progress=progress)
        except (FileNotFoundError, ValueError) as error:
            fail(str(error))
    if lse_clips:
        _full_frame(report, ckpt, syncnet, lse_clips, protocol, s3fd, device or str(resolve_device(None)), quiet)
    if out is not None:
        from cals.eval import write_report

        write_report(report, out)
    Console().print(report.to_markdown(), highlight=False, soft_wrap=True, markup=False)
    stats = report.summary()
    if stats["clips"] == 0:
        fail(f"no {split!r} samples in {shards}", code=1)
    if out is not None:
        err.print("wrote " + " and ".join(str(path) for path in report_paths(out)), highlight=False, soft_wrap=True)
    if stats["clips_failed"] == stats["clips"]:
        fail("no clip could be evaluated; see the errors above", code=1)


def _full_frame(report, ckpt: Path, syncnet: Path, clips: int, protocol: Optional[str], s3fd: Optional[Path], device: str, quiet: bool) -> None:
    """Full-frame LSE of the first ``clips`` clips into ``report.full_frame`` (pipeline.eval_video)."""
    from cals.models.cals_model import load_cals_model
    from pipeline.eval_video import FullFrameSettings, full_frame_lse
    from pipeline.sync_report import ScoreSetupError

    def line(clip) -> None:
        if not quiet:
            err.print(f"full-frame {clip.key}: " + (clip.error or f"{len(clip.generated)} generated / {len(clip.real)} real tracks scored"),
                      highlight=False, soft_wrap=True)

    try:
        with err.status("full-frame LSE…"):
            full_frame_lse(report, load_cals_model(ckpt, device=device), FullFrameSettings(syncnet=syncnet, clips=clips, protocol=protocol, s3fd=s3fd),
                           device=device, progress=line)
    except (FileNotFoundError, ValueError, ScoreSetupError) as error:
        fail(str(error))


def main() -> None:
    raise SystemExit(run_app(app))


if __name__ == "__main__":
    main()
