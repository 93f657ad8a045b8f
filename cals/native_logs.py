"""Keep the start-up chatter of MediaPipe's native code off the user's terminal.

MediaPipe 0.10.21 (TFLite, absl, glog) writes a few lines straight to file descriptor 2 when a
graph is built and on its first inference, from C++ and from its own threads, so neither
``GLOG_minloglevel`` nor ``TF_CPP_MIN_LOG_LEVEL`` nor Python's ``sys.stderr`` reaches them::

    INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    W0000 00:00:... inference_feedback_manager.cc:114] Feedback manager requires a model ...

:func:`native_stderr_quiet` redirects descriptor 2 into a temp file around a block (build the
graph and run it once there), then restores it and replays every captured line that is not one
of :data:`NATIVE_NOISE`, so a real error is never swallowed. With ``CALS_DEBUG`` or
``CALS_VERBOSE`` set (``--debug`` / ``--verbose`` on any ``cals-*`` command) it does nothing.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

#: The environment variable (any value but "" or "0") that turns this quieting off and makes
#: every ``cals-*`` command show tracebacks (:func:`cli.common.debug_requested`).
DEBUG_ENV = "CALS_DEBUG"
#: The environment variable (same values) that only turns this quieting off: what
#: ``--verbose`` on any ``cals-*`` command sets.
VERBOSE_ENV = "CALS_VERBOSE"
#: Side (pixels) of the blank frame a MediaPipe graph runs once at build, inside
#: native_stderr_quiet, so its first-inference lines are kept off the terminal too.
WARM_UP_SIDE = 64
#: Lines MediaPipe's native code prints on an ordinary start, dropped by native_stderr_quiet.
NATIVE_NOISE = (
    re.compile(r"^INFO: Created TensorFlow Lite .*delegate"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^[IW]\d{4} [\d:. ]+\s+\d+ \S+\.cc:\d+\] "),
)


def is_native_noise(line: str) -> bool:
    """Whether ``line`` is one of MediaPipe's ordinary start-up lines (:data:`NATIVE_NOISE`)."""
    return any(pattern.match(line) for pattern in NATIVE_NOISE)


def _set(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def debug_env_set() -> bool:
    """Whether :data:`DEBUG_ENV` asks for everything to be shown (tracebacks too)."""
    return _set(DEBUG_ENV)


def verbose_env_set() -> bool:
    """Whether native log lines are to be shown (:data:`VERBOSE_ENV` or :data:`DEBUG_ENV`)."""
    return _set(VERBOSE_ENV) or _set(DEBUG_ENV)


@contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Capture file descriptor 2 during the block; afterwards replay what is not native noise."""
    if verbose_env_set():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines() if not is_native_noise(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()
