"""What the stream's per-sample check (member SHA-1s, mel/lip finite and shaped:
``cals.shard_format.check_raw``) costs the training loader. Not a test.

    python bench/stream_check.py [--clips 16] [--frames 250]

Shards of JPEG face-crop-sized samples (q95, 128x128, frames with texture so each image is of
prep's size) with lip units; the loader streams whole utterances (crops, mel, audio, lip units)
with the check, then with ``check_raw`` replaced by a no-op; same seed, same batches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import webdataset as wds  # noqa: E402

BATCH = 8
BATCHES = 12
REPEATS = 3


def write_shards(folder: Path, clips: int, frames: int) -> float:
    """``clips`` samples of ``frames`` frames in one shard; returns the mean sample size, bytes."""
    from cals.mel import MEL_PARAMS, log_mel
    from cals.shard_format import REQUIRED_META, ClipSample, encode_sample

    rng = np.random.default_rng(0)
    sizes = []
    with wds.TarWriter(str(folder / "train-000000.tar"), encoder=False) as tar:
        for i in range(clips):
            base = rng.integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8)
            video = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)  # blocky texture: ~prep-sized JPEGs
            audio = (rng.standard_normal(640 * frames) * 2000).astype(np.int16)
            meta = {k: None for k in REQUIRED_META}
            meta.update(split="train", frames_detected=frames, mel_params=MEL_PARAMS.to_dict(),
                        lip_units={"kind": "bench", "dim": 1024, "digest": "0"})
            sample = ClipSample(key=f"c{i:03d}", frames=video, mel=log_mel(audio).astype(np.float16), audio=audio,
                                boxes=np.tile(np.array([0, 0, 10, 10], np.float32), (frames, 1)),
                                scores=np.ones(frames, np.float32), meta=meta,
                                lip=rng.standard_normal((frames, 1024)).astype(np.float16))
            raw = encode_sample(sample)
            sizes.append(sum(len(v) for k, v in raw.items() if not k.startswith("__")))
            tar.write(raw)
    return float(np.mean(sizes))


def loader_rate(folder: Path, frames: int) -> float:
    """Samples/s of the stream (no worker processes: the check's share shows undiluted)."""
    from cals.stream import StreamConfig, make_loader

    config = StreamConfig(folder, batch_size=BATCH, max_frames=frames, lip_units=True, shuffle_buffer=4)
    loader = iter(make_loader(config, batches_per_epoch=BATCHES + 1))
    next(loader)
    started = time.perf_counter()
    samples = sum(len(next(loader)["keys"]) for _ in range(BATCHES))
    return samples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=250, help="frames per clip (250: 10 s, the stream's max_frames)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        size = write_shards(folder, args.clips, args.frames)
        with_check, without = [], []
        for _ in range(REPEATS):  # interleaved: load on the shared machine hits both alike
            with_check.append(loader_rate(folder, args.frames))
            with mock.patch("cals.stream.check_raw", lambda raw, skip=(): []):
                without.append(loader_rate(folder, args.frames))
        from cals.shard_format import check_raw

        tar = wds.WebDataset([str(folder / "train-000000.tar")], shardshuffle=False, empty_check=False)
        raws = list(tar)
        started = time.perf_counter()
        for raw in raws:
            assert check_raw(raw) == []
        per_sample = (time.perf_counter() - started) / len(raws)
    a, b = float(np.median(with_check)), float(np.median(without))
    print(f"{args.clips} clips x {args.frames} frames, {size / 1e6:.2f} MB per sample (JPEG q95 crops, mel, audio, lip 1024)")
    print(f"check_raw alone: {1e3 * per_sample:.2f} ms per sample")
    print(f"loader with the check: {a:.1f} samples/s; without: {b:.1f} samples/s; with/without = {a / b:.3f}")


if __name__ == "__main__":
    main()
