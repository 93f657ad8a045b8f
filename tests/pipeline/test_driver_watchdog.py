"""A worker whose driver died exits, but never in the middle of publishing a shard's files.

The watchdog (pipeline.ray_pool.Driver.watch) takes cals.atomic.PUBLISH_LOCK before it ends
the process; prepare_shard holds that lock while it removes the old tar, writes the rows part
and puts the new tar. Without it, a worker stopped between those steps leaves a part with no
tar beside a re-run writing the same shard (seen in test_survival under load). The broken
variant (the watchdog on a lock of its own) is run too, to show the check can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = """
import socket, subprocess, sys, threading, time
import pipeline.ray_pool as pool
from cals.atomic import PUBLISH_LOCK
if sys.argv[2] == "broken":
    pool.PUBLISH_LOCK = threading.Lock()
dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
started = threading.Event()
def publish():
    with PUBLISH_LOCK:
        started.set()
        time.sleep(1.0)
        open(sys.argv[1], "w").write("complete")
threading.Thread(target=publish).start()
started.wait()
pool.Driver(socket.gethostname(), dead.pid, None).watch()
time.sleep(30)
"""


def run_worker(tmp_path, variant: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / variant), variant], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def test_the_watchdog_waits_for_a_publish_then_ends_the_worker(tmp_path):
    result, seconds = run_worker(tmp_path, "fixed")
    assert result.returncode == 1, result.stderr  # ended by the watchdog, not after its 30 s sleep
    assert seconds < 25
    assert (tmp_path / "fixed").read_text() == "complete"


def test_without_the_shared_lock_the_worker_dies_mid_publish(tmp_path):
    result, _ = run_worker(tmp_path, "broken")
    assert result.returncode == 1, result.stderr
    assert not (tmp_path / "broken").exists()
