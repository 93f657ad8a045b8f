"""Shot changes: PySceneDetect's ``ContentDetector`` fed the frames prep already decodes.

A cut is where the HSV content of a 25 fps frame jumps past ``threshold`` (PySceneDetect's
default 27; at most one cut per ``min_scene_len`` frames, default 15 = 0.6 s). The detector sees
each frame subsampled to at most :data:`SCENE_WIDTH` pixels wide (every k-th pixel, k =
ceil(width / 256); PySceneDetect's own auto-downscale takes floor, which leaves a 320 px frame
whole at twice the cost), so its cost does not grow with the source resolution: measured in
``bench/tracks.py`` (BENCHMARKS.md "Scenes and tracks").

Why ``ContentDetector`` on our frames rather than ffmpeg's ``select='gt(scene,x)'`` score: it
needs no second decode (prep already holds each frame once), it is the detector syncnet_python
and LatentSync use (:mod:`pipeline.sync_protocols` runs it on the file), and its score is the one
their thresholds are tuned for.

Scenes are ``(first, end)`` ranges of 25 fps frame indices, end exclusive, covering the clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Frames are subsampled to about this width before scoring (PySceneDetect's auto-downscale target).
SCENE_WIDTH = 256


@dataclass(frozen=True)
class SceneParams:
    """``threshold``: ContentDetector's HSV-change threshold (its default); ``min_scene_len``:
    frames (25 fps) at least between two cuts (its default)."""

    threshold: float = 27.0
    min_scene_len: int = 15


class SceneSplitter:
    """Feed ``(H, W, 3)`` uint8 RGB frames in order with :meth:`feed`; :attr:`cuts` lists the
    frame indices where a new scene starts (never 0)."""

    def __init__(self, params: SceneParams = SceneParams()) -> None:
        from scenedetect import ContentDetector

        self.params = params
        self._detector = ContentDetector(threshold=params.threshold, min_scene_len=params.min_scene_len)
        self._index = 0
        self.cuts: list[int] = []

    def feed(self, frame: np.ndarray) -> bool:
        """Score one frame; True when a new scene starts at it."""
        step = max(1, -(-frame.shape[1] // SCENE_WIDTH))  # ceil: at most SCENE_WIDTH wide
        small = np.ascontiguousarray(frame[::step, ::step, ::-1])  # RGB -> BGR, as OpenCV decodes
        found = [c for c in self._detector.process_frame(self._index, small) if c > 0]
        self._index += 1
        self.cuts.extend(found)
        return bool(found)

    def ranges(self, num_frames: int) -> list[tuple[int, int]]:
        """The scenes of a ``num_frames`` clip: ``[(first, end)]``, one range when no cut."""
        return scene_ranges(self.cuts, num_frames)


def scene_ranges(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Cut frame indices → ``[(first, end)]`` ranges (end exclusive) covering ``0 .. num_frames``."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < num_frames}), num_frames]
    return list(zip(bounds[:-1], bounds[1:]))
