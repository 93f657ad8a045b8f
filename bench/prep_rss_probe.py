"""Child process of ``bench/prep.py``'s memory test: ``process_clip`` on one clip, then its peak
memory and timing as one JSON line on stdout.

Run from the repository root: ``python -m bench.prep_rss_probe CLIP DETECTOR``. Printed keys:
``frames`` (25 fps frames prepared), ``wall_s`` (seconds in process_clip), ``sample_bytes``
(bytes of the encoded sample), ``vm_hwm_kib`` (peak resident memory, /proc/self/status VmHWM,
KiB), ``maxrss_self_kib`` / ``maxrss_ffmpeg_kib`` (getrusage peak RSS of this process and of its
largest child, the ffmpeg decoder, KiB).
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(argv: list[str]) -> None:
    import cv2

    from pipeline.manifest import ClipSource
    from pipeline.prepare_clip import PrepParams, process_clip
    from pipeline.stages.detect import make_detector

    cv2.setNumThreads(1)  # as prepare_shard does in every worker
    path, detector_name = argv
    params = PrepParams(detector=detector_name)
    detector = make_detector(params.detector, params.mediapipe_model)
    source = ClipSource(key="long", path=path, dataset="bench", split="train", speaker="long")
    started = time.perf_counter()
    result = process_clip(source, params, detector)
    wall_s = time.perf_counter() - started
    detector.close()
    with open("/proc/self/status", encoding="utf-8") as handle:
        status = dict(line.split(":", 1) for line in handle if ":" in line)
    print(json.dumps({
        "frames": result.fields["num_frames"],
        "wall_s": wall_s,
        "sample_bytes": sum(len(v) for v in result.sample.values() if isinstance(v, bytes)),
        "vm_hwm_kib": int(status["VmHWM"].split()[0]),
        "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_ffmpeg_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
