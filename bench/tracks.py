"""Cost of scene detection and of ``--tracks all`` per frame, against the plain prep of a clip.

Builds (ffmpeg) the test video of tests/pipeline/test_tracks.py from two fixture clips: 3 s of
talk_aoc2 then 3 s of talk_man_mapbg, 320x320, one hard cut; and a 1280x720 version of it (the
scene detector's subsampling should keep its cost flat). Then, per video, the median of
``--repeat`` runs of :func:`pipeline.prepare_tracks.process_source` (one worker, MediaPipe short):

- ``plain``: ``--tracks dominant --no-scenes`` (today's prep, the baseline of the ratios);
- ``dominant + scenes``: the same with ContentDetector fed every decoded frame;
- ``all + scenes``: every track, two decodes (the folder default);

and the scene detectors alone on the decoded frames: ``SceneSplitter.feed`` per frame, and
ffmpeg's own scene score (``select='gt(scene,0.3)'``, a decode of its own) per frame.

    python bench/tracks.py [--repeat 3]

Prints a Markdown table (BENCHMARKS.md "Scenes and tracks").
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = REPO.parent / "shared" / "fixtures" / "video"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def build(folder: Path, side: str) -> Path:
    """The cut video at ``side`` (``WxH``)."""
    a, b = str(FIXTURES / "talk_aoc2_retalking.mp4"), str(FIXTURES / "talk_man_mapbg_retalking.mp4")
    width, height = side.split("x")
    scale = f"setpts=PTS-STARTPTS,scale={width}:{height}:force_original_aspect_ratio=decrease,pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,fps=25,setsar=1"
    out = folder / f"cut_{side}.mp4"
    ffmpeg("-i", a, "-i", b, "-filter_complex",
           f"[0:v]trim=0:3,{scale}[a];[1:v]trim=0:3,{scale}[b];"
           "[0:a]atrim=0:3,asetpts=PTS-STARTPTS,aresample=16000[x];[1:a]atrim=0:3,asetpts=PTS-STARTPTS,aresample=16000[y];"
           "[a][x][b][y]concat=n=2:v=1:a=1[v][au]",
           "-map", "[v]", "-map", "[au]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-c:a", "aac", str(out))
    return out


def timed(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from pipeline.io import Window, iter_frames, probe
    from pipeline.manifest import ClipSource
    from pipeline.prepare_clip import PrepParams
    from pipeline.prepare_tracks import process_source
    from pipeline.stages.detect import make_detector
    from pipeline.stages.scenes import SceneSplitter

    detector = make_detector("mediapipe", "short")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cals-bench-tracks-") as tmp:
        for side in ("320x320", "1280x720"):
            video = build(Path(tmp), side)
            info = probe(video)
            frames = list(iter_frames(info, Window(None, None, None)))
            count = len(frames)
            source = ClipSource(key="cut", path=str(video), dataset="bench", split="train", speaker="s")
            runs = {
                "plain (dominant, no scenes)": PrepParams(),
                "dominant + scenes": PrepParams(scenes=True),
                "all + scenes": PrepParams(tracks="all", scenes=True),
            }
            process_source(source, PrepParams(), detector)  # warm-up (MediaPipe graph, caches)
            seconds = {name: timed(lambda p=params: process_source(source, p, detector), args.repeat) for name, params in runs.items()}
            samples = {name: len(process_source(source, params, detector).samples) for name, params in runs.items()}

            def feed_all() -> None:
                splitter = SceneSplitter()
                for frame in frames:
                    splitter.feed(frame)
                assert splitter.cuts == [75], splitter.cuts

            feed = timed(feed_all, args.repeat)
            score = timed(lambda: ffmpeg("-i", str(video), "-vf", "select='gt(scene,0.3)'", "-an", "-f", "null", "-"), args.repeat)
            base = seconds["plain (dominant, no scenes)"]
            for name, value in seconds.items():
                rows.append((side, name, samples[name], 1000 * value / count, value / base))
            rows.append((side, "ContentDetector alone (SceneSplitter.feed)", "-", 1000 * feed / count, feed / base))
            rows.append((side, "ffmpeg scene score alone (own decode)", "-", 1000 * score / count, score / base))
    detector.close()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, python {platform.python_version()}; {count} frames per video, median of {args.repeat}")
    print("| video | run | samples | ms/frame | x plain |")
    print("|---|---|---|---|---|")
    for side, name, samples, ms, ratio in rows:
        print(f"| {side} | {name} | {samples} | {ms:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
