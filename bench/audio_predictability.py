#!/usr/bin/env python
"""How much of the mouth the audio can predict in the fixture data (issue 10): the ceiling a
bounded CALS learning run works under, measured without any network.

Every ``talk_*`` fixture clip is prepared as prep does (MediaPipe crops); FaceMesh gives each
frame's mouth aperture (:meth:`cals.metrics.MouthLandmarker.measure`); each clip is cut in time
(first 80 % train, last 20 % held out, as ``tests/cals/test_cals_learning.py`` and
``bench/learning.py`` cut it). A ridge regression from the frame's log-mel (its 4 rows x 80 bins,
± ``--context`` frames, standardised per clip on its train part) to the aperture (standardised
per clip) is fitted on the train frames of (a) talk_aoc2 alone (the learning test's clip, 100
train frames) and (b) all six clips (~1,080 train frames), and scored on the held-out frames:
Pearson r of predicted vs real aperture with the clip's **true** audio and with its audio
shifted by ``AUDIO_SHIFT_FRAMES`` (:func:`cals.eval.shifted_mel`, as ``cals-eval``). An
audio-driven predictor has r(true) clearly above r(shifted); where it does not even for this
linear model, no generator trained on that data can show audio dependence on held-out frames.

Run: ``python bench/audio_predictability.py --work /tmp/apb`` (about 1 min on one core).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cals.constants import MEL_ROWS_PER_FRAME, N_MELS  # noqa: E402

TRAIN_SHARE = 0.8
SINGLE_CLIP = "talk_aoc2"


def mel_features(mel: np.ndarray, frames: int, context: int) -> np.ndarray:
    """``(frames, (2·context + 1)·320)``: each frame's 4 mel rows, with its ± context neighbours (edges repeated)."""
    per_frame = mel.reshape(-1, MEL_ROWS_PER_FRAME * N_MELS)[:frames]
    padded = np.pad(per_frame, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([padded[i : i + frames] for i in range(2 * context + 1)], axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/audio-predictability"))
    parser.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures" / "video")
    parser.add_argument("--context", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--ridge", type=float, nargs="+", default=[100.0, 1000.0, 10000.0])
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from cals.data import iter_samples
    from cals.eval import shifted_mel
    from cals.metrics import MouthLandmarker
    from pipeline.prepare_clip import PrepParams
    from pipeline.recipes.folder import prepare_folder
    from pipeline.run import run_prep

    shards = args.work / "shards"
    if not shards.exists():
        root = args.work / "corpus"
        for clip in sorted(args.fixtures.glob("talk_*.mp4")):
            (root / clip.stem).mkdir(parents=True, exist_ok=True)
            (root / clip.stem / clip.name).symlink_to(clip)
        run_prep(prepare_folder(root, val=0, test=0), shards, PrepParams(detector="mediapipe"), workers=1, show_progress=False)
    clips = []
    with MouthLandmarker() as landmarker:
        for sample in iter_samples(shards):
            aperture = landmarker.measure(sample.frames).aperture
            clips.append((sample.key.split("__")[0], sample.mel, shifted_mel(sample.mel), aperture))
    print("| train set | train frames | context ± frames | ridge | held-out r, true audio | held-out r, shifted audio | per clip (true) |")
    print("|---|---|---|---|---|---|---|")
    for label, chosen in ((f"{SINGLE_CLIP} only", [c for c in clips if c[0].startswith(SINGLE_CLIP)]), (f"all {len(clips)} clips", clips)):
        for context in args.context:
            for ridge in args.ridge:
                train_x, train_y, held = [], [], []
                for _, mel, shifted, aperture in chosen:
                    frames = len(aperture)
                    cut = int(TRAIN_SHARE * frames)
                    x, xs = mel_features(mel, frames, context), mel_features(shifted, frames, context)
                    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-3
                    y = (aperture - np.nanmean(aperture[:cut])) / np.nanstd(aperture[:cut])
                    train_x.append((x[:cut] - mean) / std)
                    train_y.append(y[:cut])
                    held.append(((x[cut:] - mean) / std, (xs[cut:] - mean) / std, y[cut:]))
                x, y = np.concatenate(train_x), np.concatenate(train_y)
                ok = ~np.isnan(y)
                weights = np.linalg.solve(x[ok].T @ x[ok] + ridge * np.eye(x.shape[1]), x[ok].T @ y[ok])

                def r(a: np.ndarray, b: np.ndarray) -> float:
                    keep = ~np.isnan(b)
                    return float(np.corrcoef(a[keep], b[keep])[0, 1])

                true = [r(h @ weights, y) for h, _, y in held]
                shifted = [r(s @ weights, y) for _, s, y in held]
                print(f"| {label} | {int(ok.sum())} | {context} | {ridge:g} | {np.mean(true):.3f} | {np.mean(shifted):.3f} | "
                      f"{', '.join(f'{v:.2f}' for v in true)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
