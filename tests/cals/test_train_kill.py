"""kill -9 of a training run at any moment: the newest checkpoint is complete and loads, and
--resume finishes with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cals.train.checkpoint import latest, load_weights
from tests.cals.test_stream import write_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS = 200
FLAGS = ["--batch-size", "2", "--window", "10", "--ckpt-every", "4", "--keep", "2", "--quiet", "--seed", "3",
         "--layers", "1", "--d-model", "32", "--ffn", "64", "--heads", "2", "--dropout", "0", "--device", "cpu"]


def command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli.train", "a2l", "--shards", str(dataset), "--out", str(out), "--steps", str(STEPS), *FLAGS, *extra]


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path):
    write_dataset(tmp_path / "d", [[30, 24], [28, 20]], lip_dim=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run(command(tmp_path / "d", tmp_path / "ref"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]

    job = subprocess.Popen(command(tmp_path / "d", tmp_path / "run"), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = tmp_path / "run" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if pointer.is_file() and json.loads(pointer.read_text())["step"] >= 12:
            break
        assert job.poll() is None, job.communicate()[1][-2000:]
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    killed_at = latest(tmp_path / "run")["step"]
    assert 12 <= killed_at < STEPS, "the kill must land mid-run"
    load_weights(tmp_path / "run")  # the newest checkpoint is complete
    assert len(list((tmp_path / "run").glob("ckpt-*.safetensors"))) <= 2 + 1  # keep 2 (+1 being replaced)

    resumed = subprocess.run(command(tmp_path / "d", tmp_path / "run", "--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_weights(tmp_path / "ref"), load_weights(tmp_path / "run")
    assert latest(tmp_path / "run")["step"] == STEPS
    assert not list((tmp_path / "run").glob(".*.tmp-*")), "the interrupted write's temp files are removed"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, "metrics.jsonl logs no step twice"
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
