#!/usr/bin/env python
"""Benchmark of lip units (issue 12, "lip units 5x cheaper"): frames/s before and after.

Same run, same clips, same process, for the two lip-unit models at full size with random
weights (speed does not depend on the weights):

- ``syncnet_v2``: :class:`cals.models.syncnet_v2.SyncNetV2` (syncnet_python's layout, 224x224 BGR);
- ``sync_critic``: :class:`cals.models.sync_critic.SyncCritic` with the default
  :class:`SyncCriticConfig` (64x128 mouth, VGG-M widths).

Modes of :class:`cals.models.lip_units.LipUnitModel` (``--batch-size`` units per forward pass):

- ``windows`` (**before**, the baseline): ``embed(..., mode="windows")``, the T 5-frame windows;
- ``clip``: ``embed(...)``, one chunked pass over each edge-padded clip;
- ``many``: ``embed_many(clips)``, all clips in one stream of passes.

Each repeat runs the three modes back to back (so they share the machine's load); the best of
``--repeats`` counts. Also reported: the max abs difference of ``clip`` and ``many`` units from
``windows`` (the test's 1e-5 check, in this run). The clips are random uint8 128x128 RGB crops
(``--clips`` clips of ``--frames`` frames: by default 4 LRS2-sized 2 s clips at 25 fps).

Prints a markdown table and, with ``--results``, writes it with the run's facts as JSON.
Run: ``python bench/units.py --results units.json`` (about 2 minutes on 1 CPU thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cals.constants import SYNCNET_BATCH_SIZE  # noqa: E402
from cals.models.lip_units import CriticLipUnits, LipUnitModel, SyncNetLipUnits  # noqa: E402
from cals.models.sync_critic import SyncCritic, SyncCriticConfig  # noqa: E402
from cals.models.syncnet_v2 import SyncNetV2  # noqa: E402

MODES = ("windows", "clip", "many")


def models(device: torch.device) -> dict[str, LipUnitModel]:
    """Both lip-unit models, full size, random weights, eval mode on ``device``."""
    torch.manual_seed(0)
    return {
        "syncnet_v2": SyncNetLipUnits(SyncNetV2().to(device).eval(), "random", "0" * 64, device),
        "sync_critic": CriticLipUnits(SyncCritic(SyncCriticConfig()).to(device).eval(), "random", "0" * 64, device),
    }


def run_mode(model: LipUnitModel, clips: list[np.ndarray], mode: str, batch_size: int) -> tuple[float, list[np.ndarray]]:
    """Seconds to embed every clip in ``mode``, and the units."""
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    if mode == "many":
        units = model.embed_many(clips, batch_size)
    else:
        units = [model.embed(clip, batch_size, mode=mode) for clip in clips]
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, units


def measure(model: LipUnitModel, clips: list[np.ndarray], batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Best-of-``repeats`` frames/s per mode, ratio to ``windows``, max abs diff to ``windows``."""
    frames = sum(len(clip) for clip in clips)
    model.embed(clips[0][:5], batch_size)  # warm-up (allocator, oneDNN primitives)
    best = {mode: float("inf") for mode in MODES}
    diffs = {mode: 0.0 for mode in MODES}
    for repeat in range(repeats):
        reference = None
        for mode in MODES:
            seconds, units = run_mode(model, clips, mode, batch_size)
            best[mode] = min(best[mode], seconds)
            if reference is None:
                reference = units
            else:
                diffs[mode] = max(diffs[mode], max(float(np.abs(a - b).max()) for a, b in zip(units, reference)))
            print(f"  {model.kind} repeat {repeat + 1}/{repeats} {mode}: {frames / seconds:.2f} frames/s", file=sys.stderr, flush=True)
    return {
        mode: {"seconds": best[mode], "frames_per_s": frames / best[mode], "ratio": best["windows"] / best[mode], "max_abs_diff": diffs[mode]}
        for mode in MODES
    }


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| model | windows (before) f/s | one pass per clip f/s | clips in one stream f/s | ratio clip / windows | ratio stream / windows | max abs diff |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, modes in results.items():
        diff = max(modes["clip"]["max_abs_diff"], modes["many"]["max_abs_diff"])
        lines.append(
            f"| {kind} | {modes['windows']['frames_per_s']:.2f} | {modes['clip']['frames_per_s']:.2f} | {modes['many']['frames_per_s']:.2f} "
            f"| {modes['clip']['ratio']:.2f}x | {modes['many']['ratio']:.2f}x | {diff:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4, help="clips (default 4)")
    parser.add_argument("--frames", type=int, default=50, help="frames per clip (default 50: 2 s at 25 fps)")
    parser.add_argument("--batch-size", type=int, default=SYNCNET_BATCH_SIZE, help=f"units per forward pass (default {SYNCNET_BATCH_SIZE})")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the three modes; the best counts (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--models", default="syncnet_v2,sync_critic", help="comma-separated (default both)")
    parser.add_argument("--results", type=Path, help="write the table and the run's facts here (JSON)")
    args = parser.parse_args(argv)
    if min(args.clips, args.frames, args.batch_size, args.repeats, args.threads) < 1:
        parser.error("--clips, --frames, --batch-size, --repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (args.frames, 128, 128, 3), dtype=np.uint8) for _ in range(args.clips)]
    available = models(device)
    results = {}
    for kind in args.models.split(","):
        if kind not in available:
            parser.error(f"--models: unknown model {kind!r} (known: {', '.join(available)})")
        with torch.no_grad():
            results[kind] = measure(available[kind], clips, args.batch_size, args.repeats)
    text = table(results)
    facts = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "torch": torch.__version__,
        "device": str(device),
        "threads": args.threads,
        "clips": args.clips,
        "frames_per_clip": args.frames,
        "batch_size": args.batch_size,
        "results": results,
        "table": text,
    }
    print(text)
    if args.results is not None:
        from cals.atomic import atomic_write

        with atomic_write(args.results) as tmp:
            tmp.write_text(json.dumps(facts, indent=2))
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
