"""``cals-prep inspect`` and ``stats``: what a person looks at.

:func:`inspect_dataset` (``inspect``) writes the contact sheet and tallies the manifest by split
and status; :func:`manifest_stats` (``stats``) totals it per split.

The contact sheet: each row is one sample, ``frames`` crops evenly spaced over the clip (green
border: a real detection on that frame, orange: interpolated/held box), then the clip's log-mel
under them, and a caption with key, split, frames and detection coverage. Below the rows, the
corpus histograms from the manifest: clip length, detection coverage, failure reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from cals.constants import CROP_SIZE
from cals.data import iter_samples
from cals.layout import MANIFEST_FILE

CAPTION_HEIGHT = 16
MEL_HEIGHT = 48
BORDER = 3
DETECTED_COLOUR = (40, 200, 60)
FILLED_COLOUR = (240, 150, 20)


def _mel_image(mel: np.ndarray, width: int) -> np.ndarray:
    """(rows, 80) log-mel → (MEL_HEIGHT, width, 3) uint8, low frequencies at the bottom."""
    from PIL import Image

    values = mel.astype(np.float32).T[::-1]
    low, high = np.percentile(values, [2, 99.5])
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    gray = (scaled * 255).astype(np.uint8)
    image = Image.fromarray(gray).resize((width, MEL_HEIGHT), Image.BILINEAR)
    plane = np.asarray(image)
    return np.stack([plane, (plane * 0.6).astype(np.uint8), 255 - plane], axis=-1)


def contact_sheet(dataset: str | Path, out_png: str | Path, samples: int = 8, frames: int = 8, split: str | None = None) -> Path:
    """Write a contact sheet of the first ``samples`` samples of ``dataset`` to ``out_png``."""
    from PIL import Image, ImageDraw

    cell = CROP_SIZE + 2 * BORDER
    width = frames * cell
    rows = []
    for sample in islice(iter_samples(dataset, split=split), samples):
        T = sample.num_frames
        picks = np.linspace(0, T - 1, frames).round().astype(int)
        strip = np.zeros((cell, width, 3), np.uint8)
        for column, index in enumerate(picks):
            colour = DETECTED_COLOUR if sample.scores[index] > 0 else FILLED_COLOUR
            x = column * cell
            strip[:, x : x + cell] = colour
            strip[BORDER : BORDER + CROP_SIZE, x + BORDER : x + BORDER + CROP_SIZE] = sample.frames[index]
        caption = Image.new("RGB", (width, CAPTION_HEIGHT), (20, 20, 20))
        meta = sample.meta
        text = (
            f"{sample.key}  [{meta['split']}]  T={T} ({T / 25:.1f}s)  "
            f"detected {meta['frames_detected']}/{meta.get('frames_examined', T)}  faces<= {meta['faces_seen']}"
        )
        ImageDraw.Draw(caption).text((4, 2), text, fill=(235, 235, 235))
        rows.extend([np.asarray(caption), strip, _mel_image(sample.mel, width)])
    if not rows:
        raise FileNotFoundError(f"no samples to show in {dataset}")
    manifest_path = Path(dataset) / MANIFEST_FILE
    if manifest_path.is_file():
        import pandas as pd

        plots = histogram_image(pd.read_parquet(manifest_path), width)
        rows.append(plots)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_png)
    return out_png


def histogram_image(manifest: "pd.DataFrame", width: int) -> np.ndarray:
    """Three panels as an ``(H, width, 3)`` uint8 image: length of ok clips (s), detection
    coverage of ok clips (share of examined frames with a face), failed clips by reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = manifest[manifest.status == "ok"]
    failed = manifest[manifest.status == "failed"]  # not the "source" rows of tracked clips
    dpi = 100
    figure, axes = plt.subplots(1, 3, figsize=(width / dpi, 2.6), dpi=dpi)
    axes[0].hist(ok["duration_s"].dropna(), bins=30, color="#3b7dd8")
    axes[0].set(title=f"clip length, {len(ok)} ok clips", xlabel="seconds", ylabel="clips")
    axes[1].hist(ok["detect_ratio"].dropna(), bins=np.linspace(0, 1, 21), color="#28a745")
    axes[1].set(title="detection coverage", xlabel="share of examined frames with a face", ylabel="clips")
    counts = failed["reason"].value_counts()
    axes[2].barh(counts.index.tolist() or ["none"], counts.tolist() or [0], color="#e8590c")
    axes[2].set(title=f"failures: {len(failed)} of {len(manifest)} clips", xlabel="clips")
    figure.tight_layout()
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return image


@dataclass(frozen=True)
class Inspection:
    """What ``cals-prep inspect`` shows: the contact sheet written, and (None without a
    manifest) clips and hours per split and status, failed clips per reason (by reason)."""

    sheet: Path
    by_status: "Optional[pd.DataFrame]" = None
    failures: "Optional[pd.Series]" = None


def inspect_dataset(dataset: str | Path, png: str | Path, samples: int = 8, frames: int = 8, split: str | None = None) -> Inspection:
    """Write the contact sheet of ``dataset`` to ``png`` (:func:`contact_sheet`) and tally its
    manifest. Raises FileNotFoundError when ``dataset`` is not a folder or has no sample."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise FileNotFoundError(f"{dataset} is not a folder")
    sheet = contact_sheet(dataset, png, samples=samples, frames=frames, split=split)
    manifest_path = dataset / MANIFEST_FILE
    if not manifest_path.is_file():
        return Inspection(sheet)
    import pandas as pd

    manifest = pd.read_parquet(manifest_path)
    by_status = manifest.groupby(["split", "status"]).agg(clips=("key", "size"), hours=("duration_s", lambda s: s.sum() / 3600))
    failures = manifest[manifest.status == "failed"].groupby("reason").size().rename("failed clips")
    return Inspection(sheet, by_status, failures)


@dataclass(frozen=True)
class ManifestStats:
    """``by_split``: per split (and ``all``), clips ok and failed, hours of prepared video,
    speakers, frames; ``failures``: failed clips per reason, most first."""

    by_split: "pd.DataFrame"
    failures: "pd.Series"


def manifest_stats(dataset: str | Path) -> ManifestStats:
    """The manifest summary of ``dataset``; FileNotFoundError when it has no manifest."""
    import pandas as pd

    manifest_path = Path(dataset) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing (not a cals-prep output, or the run never finished)")
    manifest = pd.read_parquet(manifest_path)
    ok, failed = manifest.status == "ok", manifest.status == "failed"  # "source" rows: neither
    table = manifest.assign(ok=ok, failed=failed, hours=manifest["duration_s"].where(ok, 0.0) / 3600, frames=manifest["num_frames"].where(ok, 0))
    summary = table.groupby("split").agg(
        clips_ok=("ok", "sum"), clips_failed=("failed", "sum"), hours=("hours", "sum"),
        speakers=("speaker", "nunique"), frames=("frames", "sum"),
    )
    summary.loc["all"] = [ok.sum(), failed.sum(), summary["hours"].sum(), manifest["speaker"].nunique(), summary["frames"].sum()]
    return ManifestStats(summary, manifest[failed]["reason"].value_counts())
