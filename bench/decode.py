#!/usr/bin/env python
"""Benchmark of prep's decode path (issue 12, "no process per clip"): frames/s and CPU-s/frame of
probe + audio + 25 fps RGB frames per clip, every path in the same run, on two sets:

- the full fixture clips (``../shared/fixtures/video/talk_*.mp4``: 512² … 1080x1920 HEVC, 25/30 fps);
- LRS2-shaped clips (2 s, 160x160 H.264 + AAC, cut from the fixtures by
  ``tests.fixture_builders.build_lrs2_tree``, as bench/prep.py builds them).

Paths (each does what prep needs of a clip: MediaInfo, the 16 kHz audio, every frame):

- ``floor``: video only, one ``ffmpeg`` process per clip after ffprobe (bench/prep.py's decode floor);
- ``ffmpeg``: ffprobe + one ffmpeg process for audio + one for video (prep before issue 12);
- ``ffmpeg2``: ffprobe + one ffmpeg process with both streams on two pipes (pipeline.decode_pipes);
- ``pyav``: all in-process with PyAV (pipeline.decode_pyav), no process at all.

``--prep-detectors none,mediapipe`` (default) also times ``process_clip`` (what one prep worker
does per clip: decode, detect/track, JPEG, FLAC, mel, lip top) with each decoder.

Rounds alternate the paths (``--rounds``, the best round of each is kept: the machine is shared).
CPU seconds are this process's plus its waited-for children's (user + system).
Prints a markdown table; ``--results FILE`` writes it too. Quick run: ``python bench/decode.py
--lrs2-clips 10 --rounds 1``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cals.constants import FPS  # noqa: E402
from pipeline.decode_pipes import TwoPipeDecode  # noqa: E402
from pipeline.io import FULL, iter_frames, probe, read_audio  # noqa: E402
from tests.fixture_builders import build_lrs2_tree  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "video"


def floor(path: Path) -> int:
    """Video only through one ffmpeg process (after ffprobe), as bench/prep.py's floor."""
    import subprocess

    info = probe(path, decoder="ffmpeg")
    size = info.width * info.height * 3
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf", f"fps={FPS}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    frames = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        while len(process.stdout.read(size)) == size:
            frames += 1
    return frames


def separate(decoder: str) -> Callable[[Path], int]:
    def run(path: Path) -> int:
        info = probe(path, decoder=decoder)
        read_audio(info, decoder=decoder)
        return sum(1 for _ in iter_frames(info, decoder=decoder))

    return run


def two_pipes(path: Path) -> int:
    info = probe(path, decoder="ffmpeg")
    decode = TwoPipeDecode(info, FULL, 2)
    frames = sum(1 for _ in decode.frames())
    decode.audio()
    return frames


PATHS: dict[str, Callable[[Path], int]] = {
    "floor": floor,
    "ffmpeg": separate("ffmpeg"),
    "ffmpeg2": two_pipes,
    "pyav": separate("pyav"),
}
DESCRIPTIONS = {
    "floor": "video only, ffprobe + 1 ffmpeg process (decode floor)",
    "ffmpeg": "ffprobe + ffmpeg audio + ffmpeg video (before)",
    "ffmpeg2": "ffprobe + 1 ffmpeg, both streams on two pipes",
    "pyav": "in-process PyAV, probe + audio + video (default now)",
}


@dataclass
class Measure:
    frames: int
    wall_s: float
    cpu_s: float

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000 * self.cpu_s / self.frames


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run: Callable[[Path], int], paths: list[Path]) -> Measure:
    cpu, started = cpu_seconds(), time.perf_counter()
    frames = sum(run(path) for path in paths)
    return Measure(frames, time.perf_counter() - started, cpu_seconds() - cpu)


def bench(paths: list[Path], rounds: int, label: str) -> dict[str, Measure]:
    best: dict[str, Measure] = {}
    for number in range(rounds):
        for name, run in PATHS.items():
            result = measure(run, paths)
            print(f"[bench] {label} round {number + 1}: {name} {result.fps:.0f} f/s, {result.cpu_ms_per_frame:.2f} CPU-ms/frame",
                  file=sys.stderr)
            if name not in best or result.wall_s < best[name].wall_s:
                best[name] = result
    return best


def prep_processing(paths: list[Path], rounds: int, label: str, detectors: Sequence[str]) -> dict[str, Measure]:
    """``process_clip`` (1 worker, in this process, no Ray) on every clip with each detector and
    each decoder (``{detector}/{decoder}``), best of ``rounds`` interleaved rounds."""
    import cv2

    from pipeline.io import DECODERS
    from pipeline.manifest import ClipSource
    from pipeline.prepare_clip import PrepParams, process_clip
    from pipeline.stages.detect import make_detector

    cv2.setNumThreads(1)  # as prepare_shard does in every worker
    best: dict[str, Measure] = {}
    for detector_name in detectors:
        detector = make_detector(detector_name, PrepParams.mediapipe_model)
        try:
            for number in range(rounds):
                for decoder in DECODERS:
                    params = PrepParams(detector=detector_name, decoder=decoder)

                    def run(path: Path) -> int:
                        source = ClipSource(key=path.stem, path=str(path), dataset="bench", split="train", speaker="s")
                        return process_clip(source, params, detector).fields["num_frames"]

                    result = measure(run, paths)
                    name = f"{detector_name}/{decoder}"
                    print(f"[bench] {label} round {number + 1}: prep {name} {result.fps:.0f} f/s, "
                          f"{result.cpu_ms_per_frame:.2f} CPU-ms/frame", file=sys.stderr)
                    if name not in best or result.wall_s < best[name].wall_s:
                        best[name] = result
        finally:
            detector.close()
    return best


def prep_table(label: str, results: dict[str, Measure], decode: dict[str, Measure]) -> list[str]:
    rows = [f"**{label}: prep processing** (`process_clip`, 1 worker, no Ray; JPEG + FLAC + lip top included)", "",
            "| detector / decoder | frames/s | CPU-ms/frame | x same detector with `ffmpeg` (f/s) | x decode floor (f/s) |",
            "|---|---|---|---|---|"]
    for name, result in results.items():
        before = results[name.split("/")[0] + "/ffmpeg"]
        rows.append(f"| `{name}` | {result.fps:.0f} | {result.cpu_ms_per_frame:.2f} | {result.fps / before.fps:.2f} | "
                    f"{result.fps / decode['floor'].fps:.2f} |")
    return rows + [""]


def table(label: str, clips: int, results: dict[str, Measure]) -> list[str]:
    before = results["ffmpeg"]
    rows = [f"**{label}** ({clips} clips, {results['floor'].frames} frames)", "",
            "| path | frames/s | CPU-ms/frame | x before (f/s) | x floor (f/s) |", "|---|---|---|---|---|"]
    for name, result in results.items():
        rows.append(f"| `{name}`: {DESCRIPTIONS[name]} | {result.fps:.0f} | {result.cpu_ms_per_frame:.2f} | "
                    f"{result.fps / before.fps:.2f} | {result.fps / results['floor'].fps:.2f} |")
    return rows + [""]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs2-clips", type=int, default=40, help="LRS2-shaped clips to build (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path, best kept (default 3)")
    parser.add_argument("--prep-detectors", default="none,mediapipe",
                        help="also time process_clip with each decoder and these detectors (comma-separated; '' skips)")
    parser.add_argument("--results", type=Path, help="also write the markdown table here")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    fixtures = sorted(FIXTURES.glob("talk_*.mp4"))
    if not fixtures:
        print(f"bench/decode.py: no fixture clips at {FIXTURES}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cals-bench-decode-") as work:
        print(f"[bench] building {args.lrs2_clips} LRS2-shaped clips", file=sys.stderr)
        tree = build_lrs2_tree(fixtures, Path(work) / "lrs2", args.lrs2_clips)
        lrs2 = sorted(tree.root.rglob("*.mp4"))
        results_lrs2 = bench(lrs2, args.rounds, "LRS2-shaped")
        results_full = bench(fixtures, args.rounds, "full clips")
        detectors = [d for d in args.prep_detectors.split(",") if d]
        prep_lrs2 = prep_processing(lrs2, args.rounds, "LRS2-shaped", detectors) if detectors else {}
        prep_full = prep_processing(fixtures, args.rounds, "full clips", detectors) if detectors else {}
    import av

    lines = [f"`python bench/decode.py --lrs2-clips {args.lrs2_clips} --rounds {args.rounds} --prep-detectors "
             f"{args.prep_detectors}` on {platform.node()} "
             f"({platform.processor() or platform.machine()}, shared cores), PyAV {av.__version__}, best of {args.rounds} "
             "interleaved rounds, 1 process (ffmpeg children counted in CPU).", ""]
    lines += table("LRS2-shaped 2 s 160x160", len(lrs2), results_lrs2)
    lines += table("Full fixture clips", len(fixtures), results_full)
    if prep_lrs2:
        lines += prep_table("LRS2-shaped", prep_lrs2, results_lrs2) + prep_table("Full fixture clips", prep_full, results_full)
    text = "\n".join(lines)
    print(text)
    if args.results:
        args.results.write_text(text + "\n", encoding="utf-8")
        print(f"bench/decode.py: wrote {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
