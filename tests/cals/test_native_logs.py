"""MediaPipe's native start-up lines stay off the terminal; real errors written to fd 2 do not.

Each case runs in a subprocess, since the lines go to file descriptor 2 from C++, past Python's
``sys.stderr``. ``CALS_DEBUG=1`` turns the quieting off: the same code then prints the lines,
which shows the check below can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cals.native_logs import DEBUG_ENV, VERBOSE_ENV, is_native_noise

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUILD_AND_RUN = """
import numpy as np
from pipeline.stages.detect import make_detector
from cals.metrics import MouthLandmarker
detector = make_detector("mediapipe")
detector([np.zeros((96, 96, 3), np.uint8)])
with MouthLandmarker() as landmarker:
    landmarker(np.zeros((1, 96, 96, 3), np.uint8))
print("done")
"""


def run_python(code: str, debug: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, DEBUG_ENV: "1" if debug else "", VERBOSE_ENV: ""}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)


def test_noise_patterns_match_mediapipes_lines_only():
    assert is_native_noise("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    assert is_native_noise("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert is_native_noise("W0000 00:00:1796164774.822384    9948 inference_feedback_manager.cc:114] Feedback manager requires")
    assert not is_native_noise("error: shard train-000000.tar does not read")
    assert not is_native_noise("Traceback (most recent call last):")


@pytest.mark.parametrize("debug", [False, True])
def test_building_and_running_mediapipe_prints_no_native_lines(debug):
    result = run_python(BUILD_AND_RUN, debug)
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines() if is_native_noise(line)]
    if debug:  # the broken variant (no quieting): the lines are there, so the check can fail
        assert noise, result.stderr
    else:
        assert noise == [], result.stderr


def test_a_real_line_written_to_fd_2_inside_the_block_is_replayed():
    code = (
        "import os\nfrom cals.native_logs import native_stderr_quiet\n"
        "with native_stderr_quiet():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    os.write(2, b'a real problem\\n')\n"
    )
    result = run_python(code, debug=False)
    assert result.stderr.splitlines() == ["a real problem"]


def test_verbose_on_a_command_shows_the_native_lines():
    """A command run through the ``cals-*`` edge (cli.common.run_app) that builds the MediaPipe
    detector shows its native lines with ``--verbose`` and none without."""
    code = "from pipeline.stages.detect import make_detector; from cli.common import run_app; import typer\n" \
           "app = typer.Typer()\n@app.command()\ndef build():\n    make_detector('mediapipe')\n" \
           "import sys; sys.exit(run_app(app, sys.argv[1:]))\n"
    env = {**os.environ, DEBUG_ENV: "", VERBOSE_ENV: ""}
    quiet = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    loud = subprocess.run([sys.executable, "-c", code, "--verbose"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert not any(is_native_noise(line) for line in quiet.stderr.splitlines()), quiet.stderr
    assert any(is_native_noise(line) for line in loud.stderr.splitlines()), loud.stderr
