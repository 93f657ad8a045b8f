#!/usr/bin/env python
"""Usage: python bench/cpu_per_frame.py [REPO [WORK]]

CPU-ms per frame of process_clip (--detector none and mediapipe k=3) vs the ffmpeg decode floor's CPU, on LRS2-shaped 2 s clips (process CPU time: robust to a busy machine)."""
import os, resource, sys, time, inspect
from pathlib import Path
HERE = Path(__file__).resolve().parents[1]  # this checkout: its bench/prep.py builds the clips
repo = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE  # the checkout whose process_clip is measured
sys.path.insert(0, str(repo))
os.environ.setdefault("GLOG_minloglevel", "2")
from pipeline.prepare_clip import PrepParams, process_clip
from pipeline.stages.detect import make_detector
from pipeline.recipes.lrs2 import prepare_lrs2, MAIN_SUBSET
from pipeline.recipes.folder import SPLITS
sys.path.insert(1, str(HERE))
import importlib.util
spec = importlib.util.spec_from_file_location("b", str(HERE / "bench" / "prep.py")); b = importlib.util.module_from_spec(spec); sys.modules["b"] = b; spec.loader.exec_module(b)
work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/cpu-per-frame")

import shutil; shutil.rmtree(work, ignore_errors=True)
tree = b.build_lrs2_tree(sorted(b.FIXTURE_DIR.glob("talk_*.mp4")), work / "lrs2", 12)
clips = [c for s in SPLITS for c in prepare_lrs2(tree.root, subset=MAIN_SUBSET)[s]]
paths = [Path(c.path) for c in clips]
c0 = resource.getrusage(resource.RUSAGE_CHILDREN); n = sum(1 for p in paths for _ in b.ffmpeg_frames(p)); c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
floor = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * 1000 / n
print(f"{repo}: {len(clips)} clips {n} frames; ffmpeg decode floor {floor:.2f} CPU-ms/frame (decoder child, excl. python pipe read)")
new = "landmarker" in inspect.signature(process_clip).parameters
for name, params in (("none", PrepParams(detector="none")), ("mediapipe k=3", PrepParams())):
    det = make_detector(params.detector)
    kw = {}
    if new:
        from cals.metrics import MouthLandmarker
        kw["landmarker"] = MouthLandmarker()
    for rep in range(2):
        t0 = time.process_time(); ch0 = resource.getrusage(resource.RUSAGE_CHILDREN); frames = 0
        for c in clips:
            frames += process_clip(c, params, det, **kw).fields["num_frames"]
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() - t0 + (ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime)
    print(f"  {name}: {cpu*1000/frames:.2f} CPU-ms/frame ({frames} frames, 2nd pass); floor / this = {floor/(cpu*1000/frames):.2f}")
