"""``cals-prep inspect``: a PNG contact sheet of samples, for a person to look at.

Each row is one sample: ``frames`` crops evenly spaced over the clip (green border: a real
detection on that frame, orange: interpolated/held box), then the clip's log-mel under them,
and a caption with key, split, frames and detection coverage.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np

from cals.constants import CROP_SIZE
from cals.data import iter_samples

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
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_png)
    return out_png
