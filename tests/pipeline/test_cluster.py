"""The same job on an existing Ray cluster: a head started separately with `ray start` on
loopback (2 CPUs), joined with --address, then stopped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cals.data import iter_samples
from tests.conftest import FIXTURE_VIDEO, needs_fixtures

pytestmark = [needs_fixtures, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the `ray` command is not on PATH")
    port = free_port()
    temp = Path("/tmp") / f"cals-ray-{port}"  # short: Ray's socket paths must stay under 107 chars
    start = subprocess.run(
        [ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        shutil.rmtree(temp, ignore_errors=True)


def test_job_runs_on_an_existing_cluster_via_address(tmp_path, ray_head):
    root = tmp_path / "videos" / "spk"
    root.mkdir(parents=True)
    for name in ("talk_aoc2_retalking.mp4", "talk_man_mapbg_retalking.mp4"):
        (root / name).symlink_to(FIXTURE_VIDEO / name)
    out = tmp_path / "shards"
    result = subprocess.run(
        [sys.executable, "-m", "cli.prep", "folder", "--root", str(tmp_path / "videos"), "--out", str(out),
         "--address", ray_head, "--shard-mb", "0.001", "--val", "0", "--test", "0", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        # `ray start` enables Ray's token authentication; a joining driver sends the token
        # (~/.ray/auth_token) when RAY_AUTH_MODE=token, as Ray documents for clients.
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    samples = list(iter_samples(out / "videos"))
    assert sorted(s.num_frames for s in samples) == [125, 125]
    # The cluster still runs after the job (the job joined it, it did not own it).
    status = subprocess.run([shutil.which("ray"), "status", "--address", ray_head], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"})
    assert status.returncode == 0 and "CPU" in status.stdout
