"""Benchmark the training side: lip-unit extraction, the streaming loader, and step times of the
sync critic, A2L and CALS at the paper's sizes; plus CALS generation. Not a test.

    python bench/train.py --work /tmp/bench-train [--device cpu|cuda] [--results FILE]

Everything is measured in the same run on shards made from the fixture clips: prep (mediapipe)
is the baseline that unit extraction is compared with; loader throughput is set against the
models' step times to show whether data loading can keep up.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "video"
#: Whole-utterance cap and batch of the loader/step measurements (paper: whole utterances).
BATCH = 8
UTTERANCE_FRAMES = 100
LOADER_BATCHES = 12
STEP_REPEATS = 3


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def timed(function: Callable[[], Any], repeats: int = STEP_REPEATS, device: str = "cpu") -> float:
    """Median seconds of ``function`` over ``repeats`` runs after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def prepare_dataset(work: Path) -> tuple[Path, float, int]:
    """Prep the talk_* fixture clips (mediapipe); returns (dataset, processing seconds, frames)."""
    from pipeline.prepare_clip import PrepParams
    from pipeline.recipes.folder import prepare_folder
    from pipeline.run import run_prep

    corpus = work / "corpus"
    (corpus / "spk").mkdir(parents=True, exist_ok=True)
    for clip in sorted(FIXTURES.glob("talk_*.mp4")):
        target = corpus / "spk" / clip.name
        if not target.exists():
            target.symlink_to(clip)
    clips = prepare_folder(corpus, val=0, test=0)
    dataset = work / "shards" / "corpus"
    shutil.rmtree(dataset, ignore_errors=True)
    summary = run_prep(clips, dataset, PrepParams(), shard_mb=2, workers=1, show_progress=False)
    return dataset, summary.process_s, summary.frames


def add_units(dataset: Path, work: Path) -> float:
    """Lip units with a random-weight SyncNet v2 (the real weights are not available here)."""
    from cals.models.syncnet_v2 import SyncNetV2
    from pipeline.units import add_lip_units

    model = work / "syncnet_v2_random.model"
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), model)
    started = time.perf_counter()
    add_lip_units(dataset, model, workers=1, show_progress=False)
    return time.perf_counter() - started


def loader_rate(dataset: Path, workers: int) -> tuple[float, float]:
    """(samples/s, frames/s) of the training stream: whole utterances up to 100 frames, crops,
    mel, audio and lip units decoded and collated, ``workers`` loader processes."""
    from cals.stream import StreamConfig, make_loader

    config = StreamConfig(dataset, batch_size=BATCH, max_frames=UTTERANCE_FRAMES, num_workers=workers, lip_units=True, shuffle_buffer=20)
    loader = iter(make_loader(config, batches_per_epoch=LOADER_BATCHES + 2))
    next(loader)
    next(loader)  # workers started, buffers filled
    samples = frames = 0
    started = time.perf_counter()
    for _ in range(LOADER_BATCHES):
        batch = next(loader)
        samples += len(batch["keys"])
        frames += int(batch["lengths"].sum())
    seconds = time.perf_counter() - started
    return samples / seconds, frames / seconds


def a2l_step(device: str) -> float:
    """Seconds per A2L optimizer step at the paper's sizes (6 x 512, FFN 2048, 8 heads, units
    1024), batch 8 x 100 frames."""
    from cals.losses import masked_unit_loss
    from cals.models.a2l import A2LConfig, AudioToLip

    model = AudioToLip(A2LConfig()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    mel = torch.randn(BATCH, 4 * UTTERANCE_FRAMES, 80, device=device)
    lip = torch.randn(BATCH, UTTERANCE_FRAMES, 1024, device=device)
    real = torch.ones(BATCH, UTTERANCE_FRAMES, dtype=torch.bool, device=device)
    masked = torch.rand(BATCH, UTTERANCE_FRAMES, device=device) < 0.5

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            predicted = model(mel, real, masked)
        loss = masked_unit_loss(predicted.float(), lip, masked)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed(step, device=device)


def critic_step(device: str) -> float:
    """Seconds per sync-critic step, default widths, batch 8 windows of 45 frames, K = 7."""
    from cals.losses import multiway_matching_loss
    from cals.models.sync_critic import SyncCritic, SyncCriticConfig

    model = SyncCritic(SyncCriticConfig()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    frames = torch.rand(BATCH, 45, 3, 128, 128, device=device)
    mel = torch.randn(BATCH, 180, 80, device=device) - 3

    def step() -> None:
        video, audio = model(frames, mel)  # (B, 41, D) each: every window of the sequence
        loss, _ = multiway_matching_loss(video, audio, offsets=7, temperature=0.07)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed(step, device=device)


def cals_numbers(device: str, work: Path, dataset: Path) -> tuple[float, float]:
    """(generation frames/s, seconds per CALS training step: A2L + generator + discriminator,
    both optimizers) at the default sizes, 128x128, windows of the CalsConfig default length,
    batch 2 real windows from the shards."""
    from cals.models.cals_model import CalsConfig, load_cals_model, save_random_cals_model

    config = CalsConfig()
    run = save_random_cals_model(work / "cals_random", config)
    model = load_cals_model(run, device=device)
    frames = 50
    mel = torch.randn(1, 4 * frames, 80, device=device)
    reference = torch.rand(3, 128, 128, device=device)
    targets = torch.rand(frames, 3, 128, 128, device=device)
    generation = timed(lambda: model.generate(mel, reference, targets), repeats=2, device=device)

    from cals.stream import StreamConfig, make_dataset
    from cals.train.cals import CalsTask
    from cals.train.config import TrainConfig

    task = CalsTask(config)  # no critic: lambda3 = 0, the sync loss is not in this step time
    train = TrainConfig(shards=str(dataset), out=str(work / "cals_step"), window=config.window, batch_size=2, device=device)
    task.setup(torch.device(device), train, distributed=False)
    stream = StreamConfig(dataset, batch_size=2, window=config.window, lip_units=True, shuffle_buffer=0)
    batch = next(iter(make_dataset(stream)))
    counter = iter(range(10**6))

    def step() -> None:
        task.train_step(batch, next(counter), 1e-4)

    return frames / generation, timed(step, repeats=2, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", type=Path, default=None, help="markdown results (default WORK/results.md)")
    parser.add_argument("--skip-cals", action="store_true", help="skip the CALS generation/step measurements")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cals-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[tuple[str, str, str]] = []

    print("[bench] prep (baseline) and lip units", flush=True)
    dataset, prep_s, frames = prepare_dataset(work)
    units_s = add_units(dataset, work)
    rows.append(("prep, 1 worker, mediapipe (baseline)", f"{frames / prep_s:.1f} frames/s", f"{frames} frames in {prep_s:.1f} s"))
    rows.append(("lip units (SyncNet v2 lip stream, 1 worker)", f"{frames / units_s:.1f} frames/s", f"{units_s:.1f} s; share of prep + units time: {100 * units_s / (prep_s + units_s):.0f}%"))

    print("[bench] loader", flush=True)
    for workers in (0, 1, 2):
        samples_s, frames_s = loader_rate(dataset, workers)
        per = max(workers, 1)
        rows.append((f"loader, {workers} worker process(es)", f"{samples_s:.1f} samples/s, {frames_s:.0f} frames/s",
                     f"{frames_s / per:.0f} frames/s per worker; batch {BATCH}, whole utterances <= {UTTERANCE_FRAMES} frames, crops + mel + audio + units"))
        if workers == 2:
            loader_batch_s = BATCH / samples_s

    print("[bench] model steps", flush=True)
    a2l_s = a2l_step(args.device)
    rows.append(("A2L step, paper sizes (6 x 512, FFN 2048, 8 heads, D 1024)", f"{1000 * a2l_s:.0f} ms/step",
                 f"batch {BATCH} x {UTTERANCE_FRAMES} frames on {args.device}; the 2-worker loader needs {1000 * loader_batch_s:.0f} ms per batch: "
                 f"expected data wait {100 * max(0.0, loader_batch_s - a2l_s) / max(loader_batch_s, a2l_s):.0f}%"))
    critic_s = critic_step(args.device)
    rows.append(("sync critic step, default widths", f"{1000 * critic_s:.0f} ms/step", f"batch {BATCH} windows of 45 frames, K = 7, on {args.device}"))
    if not args.skip_cals:
        print("[bench] CALS", flush=True)
        from cals.models.cals_model import DEFAULT_WINDOW

        try:
            generation_fps, cals_s = cals_numbers(args.device, work, dataset)
            rows.append(("CALS generation (A2L + L2F), default sizes", f"{generation_fps:.1f} frames/s", f"50 frames, 128x128, on {args.device}"))
            rows.append(("CALS train step (A2L + G + D), default sizes", f"{1000 * cals_s:.0f} ms/step",
                         f"batch 2 windows of {DEFAULT_WINDOW} frames, 128x128, no critic, on {args.device}"))
        except (RuntimeError, ValueError) as error:  # a report with the other rows beats none
            rows.append(("CALS", "failed", f"{type(error).__name__}: {error}"))

    header = [
        "## Training-side benchmark",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| what | value | detail |",
        "|---|---|---|",
    ]
    text = "\n".join(header + [f"| {a} | {b} | {c} |" for a, b, c in rows]) + "\n"
    results = args.results or work / "results.md"
    results.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
