"""Benchmark what CALS learns from the audio in a bounded run: the whole ``cals-train`` recipe
(sync critic → the critic's lip units → A2L → CALS with the critic's sync loss) on the fixture
clips, then ``cals-eval`` on frames it never trained on. Not a test.

    python bench/learning.py --work /tmp/bench-learning [--steps 300] [--device cpu|cuda] [--tiny/--paper] [--results FILE]
                             [--lip-teacher none|mouth] [--recon-lower-weight W] [--unit-norm]

``--lip-teacher`` and ``--recon-lower-weight`` are the CALS stage's options of the same names
(README "Options against the audio-blind shortcut"; default: the paper's method).

Data: every ``talk_*`` fixture clip prepared with MediaPipe, each cut in time (frames
``[0, 0.8 T)`` train, the rest the ``test`` split: held-out frames of seen speakers, the only
held-out data a handful of clips allows). Measured in the same run:

- the trained model with its clip's true audio, with the audio shifted
  :data:`~cals.constants.AUDIO_SHIFT_FRAMES` frames and with another clip's audio (the
  ``cals-eval`` table, LSE by the run's own critic);
- the **baseline**: the same model audio-blind (:class:`cals.eval.ZeroUnits`, lip units zeroed),
  whose audio gain is 0 by construction, and the audio-blind *paste* frames (target upper part +
  reference lower part) for lower-half PSNR.

The headline numbers: held-out aperture r for true vs shifted audio, the audio gain in lower-half
PSNR, and both against the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.train import machine, prepare_dataset  # noqa: E402

#: Share of each clip's frames that is trained on (the rest is held out).
TRAIN_SHARE = 0.8
#: The held-out split's name (what cals-eval reads).
HELD_OUT = "test"


def paste_lower_psnr(shards: Path) -> float:
    """Frame-pooled lower-half PSNR of the paste baseline on the held-out split: each clip's first
    frame is the reference (as cals-eval), the target's rows above the mask line are given."""
    from cals.data import iter_samples
    from cals.metrics import lower_psnr_frames, mask_top_row

    values = []
    for sample in iter_samples(shards, split=HELD_OUT):
        truth = sample.frames
        paste = np.broadcast_to(truth[0], truth.shape).copy()
        top = mask_top_row(truth.shape[1])
        paste[:, :top] = truth[:, :top]
        values.append(lower_psnr_frames(paste[1:], truth[1:]))
    return float(np.concatenate(values).mean())


def main() -> None:
    from cals.eval import EvalReport, ZeroUnits, critic_scorer, evaluate, evaluate_model, write_report
    from cals.data import iter_samples
    from cals.models.cals_model import load_cals_model
    from cals.models.sync_critic import SyncCriticConfig
    from cals.models.tiny import TINY_CRITIC
    from cals.train.config import TrainConfig
    from cals.train.loop import run
    from cals.train.sync_critic import SyncCriticTask, SyncLossConfig, min_window
    from pipeline.train_recipe import RecipeConfig, run_recipe
    from pipeline.units import add_lip_units
    from tests.fixture_builders import split_in_time

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each recipe stage")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper", action="store_true", help="paper model sizes (default: the tiny test sizes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    parser.add_argument("--results", type=Path, default=None, help="also write the numbers as JSON here")
    parser.add_argument("--lip-teacher", default=RecipeConfig.lip_teacher, help="CALS stage: none (the paper's) or mouth (teacher forcing)")
    parser.add_argument("--unit-norm", action="store_true", help="CALS stage: layer-normalised units, LeakyReLU lip MLP")
    parser.add_argument("--recon-lower-weight", type=float, default=RecipeConfig.recon_lower_weight, help="CALS stage: weight of the mouth rows in L_recon")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "steps_per_stage": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                     "sizes": "paper" if args.paper else "tiny", "device": args.device, "lip_teacher": args.lip_teacher,
                     "recon_lower_weight": args.recon_lower_weight, "unit_norm": args.unit_norm}

    started = time.perf_counter()
    dataset, _, frames = prepare_dataset(work)
    results["prep_s"], results["frames"] = time.perf_counter() - started, frames
    print(f"prepared {frames} frames in {results['prep_s']:.0f} s", flush=True)

    # the recipe's stage 1 on the train frames only; its units go into the whole clips (stage 2 needs
    # a cals-prep dataset), which are then cut; the recipe then finds both stages done
    started = time.perf_counter()
    runs = work / "runs"
    config = RecipeConfig(steps_per_stage=args.steps, batch_size=args.batch_size, lr=args.lr, device=args.device,
                          tiny=not args.paper, workers=1, ckpt_every=args.steps, lip_teacher=args.lip_teacher,
                          recon_lower_weight=args.recon_lower_weight, unit_norm=args.unit_norm)
    critic_only = work / "split-no-units"
    split_in_time(iter_samples(dataset, split="train"), critic_only, TRAIN_SHARE, held_out=HELD_OUT)
    critic, loss = (TINY_CRITIC if config.tiny else SyncCriticConfig()), SyncLossConfig()
    run(SyncCriticTask(critic, loss), TrainConfig(shards=str(critic_only), out=str(runs / "sync"), steps=args.steps, batch_size=args.batch_size,
                                                  lr=args.lr, device=args.device, window=min_window(critic, loss), ckpt_every=args.steps),
        show_progress=False)
    add_lip_units(dataset, runs / "sync", workers=1, show_progress=False, fail_fast=True)
    split = work / "split"
    split_in_time(iter_samples(dataset, split="train"), split, TRAIN_SHARE, held_out=HELD_OUT)
    run_recipe(split, runs, config, show_progress=False)
    results["train_s"] = time.perf_counter() - started
    print(f"recipe: {results['train_s']:.0f} s", flush=True)

    started = time.perf_counter()
    report = evaluate(split, runs / "cals", split=HELD_OUT, critic=runs / "sync", out=work / "report", device=args.device,
                      progress=lambda clip: print(clip.progress_line(), flush=True))
    blind = EvalReport(shards=str(split), split=HELD_OUT, ckpt=str(runs / "cals") + " (lip units zeroed)", scorer=report.scorer)
    evaluate_model(ZeroUnits(load_cals_model(runs / "cals", device=args.device)), blind)
    write_report(blind, work / "report-audio-blind")
    results["eval_s"] = time.perf_counter() - started
    table, blind_table = report.rows(), blind.rows()
    results["table"], results["audio_blind_table"] = table, blind_table
    results["paste_lower_psnr"] = paste_lower_psnr(split)
    paired_true, paired_shifted = report.paired_rows()  # on the clips long enough to shift
    blind_true, blind_shifted = blind.paired_rows()
    results["paired"] = {"true": paired_true, "shifted": paired_shifted, "audio_blind_true": blind_true, "audio_blind_shifted": blind_shifted}
    results["headline"] = {
        "clips_with_shift": report.summary()["shifted_clips"],
        "aperture_r_true": paired_true["aperture r"],
        "aperture_r_shifted": paired_shifted["aperture r"],
        "aperture_r_audio_blind_true": blind_true["aperture r"],
        "aperture_r_audio_blind_shifted": blind_shifted["aperture r"],
        "lower_psnr_gain_db": report.audio_gain()["PSNR-lower"],
        "lower_psnr_gain_db_audio_blind": blind.audio_gain()["PSNR-lower"],
        "lower_psnr_true_db": table[report.method]["PSNR-lower"],
        "lower_psnr_paste_db": results["paste_lower_psnr"],
    }
    print(report.to_markdown())
    print(blind.to_markdown())
    print(json.dumps(results["headline"], indent=2))
    if args.results is not None:
        args.results.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
