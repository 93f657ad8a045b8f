"""DistributedDataParallel: 2 CPU processes (gloo, loopback only) via torchrun train A2L for a
few steps; the ranks must see different samples and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cals.test_stream import write_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_gloo_ranks_see_different_samples_and_agree(tmp_path):
    write_dataset(tmp_path / "d", [[30, 24, 26], [28, 20, 22], [25, 27, 29], [21, 23, 31]], lip_dim=6)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
               "-m", "cli.train", "a2l", "--shards", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--steps", "6",
               "--batch-size", "2", "--window", "10", "--ckpt-every", "3", "--log-keys", "--quiet",
               "--layers", "1", "--d-model", "32", "--ffn", "64", "--heads", "2", "--device", "cpu"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [set(line.split()[1] + "@" + line.split()[2] for line in (tmp_path / "run" / f"keys-rank{r}.txt").read_text().splitlines()) for r in (0, 1)]
    assert len(seen[0]) >= 6 and len(seen[1]) >= 6
    assert seen[0] != seen[1], "the ranks drew different windows"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ddp = next(r for r in records if r["split"] == "ddp")
    assert ddp["weight_checksum_rank0"] == ddp["weight_checksum_rank1"]
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 6
