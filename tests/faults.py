"""Fault injection for the survival tests (the only fakes in the suite): a real detector that
kills its own worker process on frames of one size, as a native crash in a decoder or model
would."""

from __future__ import annotations

import os
import signal

from pipeline.stages.detect import MediapipeDetector

#: Frames of this (height, width) kill the process that detects on them.
CRASH_FRAME_SIZE = (334, 334)


class CrashOnSize:
    """MediaPipe detection, except that a CRASH_FRAME_SIZE frame SIGKILLs the current process."""

    name = "mediapipe"

    def __init__(self) -> None:
        self.inner = MediapipeDetector()

    def __call__(self, frames):
        if any(frame.shape[:2] == CRASH_FRAME_SIZE for frame in frames):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(frames)

    def close(self) -> None:
        self.inner.close()
