"""Prep on a full disk: the shard that hit ENOSPC leaves nothing (no temp file, marker, rows part
or tar), its clips become ``no_space`` rows, the run ends with one line and a non-zero exit, and
the summary counts only the shards that exist. Once with an injected fault, once for real on a
3 MB tmpfs (root only)."""

from __future__ import annotations

import contextlib
import errno
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from cals.errors import NoSpaceError
from cals.layout import MANIFEST_FILE, PARTS_DIR
from pipeline.prepare_clip import PrepParams
from pipeline.prepare_shard import ShardPlan, prepare_shard
from pipeline.recipes.folder import prepare_folder
from pipeline.storage import LocalStorage
from tests.conftest import FIXTURE_VIDEO, needs_fixtures
from tests.pipeline.test_survival import cli_command, kill_session, output_digests, reference, start_job, wait_for_parts  # noqa: F401 (reference: a fixture)

pytestmark = needs_fixtures
REPO = Path(__file__).resolve().parents[2]
#: Seconds a worker may outlive its killed driver (pipeline.ray_pool.DRIVER_POLL_S plus exit).
WORKER_EXIT_S = 5
CLIPS = ("talk_aoc2_retalking.mp4", "talk_man_mapbg_retalking.mp4", "talk_man_suit_retalking_vfr.mp4", "talk_hdtf_aoc_sadtalker.mp4")


def corpus(root: Path, names=CLIPS) -> Path:
    (root / "spk").mkdir(parents=True)
    for name in names:
        (root / "spk" / name).symlink_to(FIXTURE_VIDEO / name)
    return root


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's ``size=``, e.g. ``3m``) mounted at ``mount`` for the block;
    skips the test where mounting is not permitted (not root)."""
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def everything(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_while_publishing_the_tar_leaves_nothing_of_the_shard(tmp_path, monkeypatch):
    """The rows part is published first; a full disk on the tar must take the part back too, or
    the manifest would hold ok rows pointing at a tar that is not there."""
    clips = prepare_folder(corpus(tmp_path / "c", CLIPS[:1]), val=0, test=0)["train"]
    publish = LocalStorage.put_file

    def full_on_tars(self, local_path, name):
        if name.endswith(".tar"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / name))
        return publish(self, local_path, name)

    monkeypatch.setattr(LocalStorage, "put_file", full_on_tars)
    out = tmp_path / "out"
    with pytest.raises(NoSpaceError, match="no space left on device .*train-000000.tar"):
        prepare_shard(ShardPlan("train-000000", "train", tuple(clips)), out, PrepParams(detector="none"))
    assert everything(out) == [], "no temp file, marker, part or tar is left"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_prep_onto_a_3mb_tmpfs_is_one_line_no_space_and_keeps_what_was_written(tmp_path, workers):
    """With 2 workers the shards fill the disk in whatever order they finish; the manifest still
    fits because the run held its room from the start (pipeline.storage.space_reserved)."""
    with tmpfs(tmp_path / "mnt", "3m") as mount:
        command = [sys.executable, "-m", "cli.prep", "folder", "--root", str(corpus(tmp_path / "c")), "--out", str(mount),
                   "--workers", str(workers), "--shard-mb", "0.001", "--val", "0", "--test", "0", "--detector", "none", "--quiet"]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        dataset = mount / "c"
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(errors) == 1 and "no space left on device" in errors[0] and "re-run the same command" in errors[0]
        assert "Traceback" not in result.stderr and "Token authentication" not in result.stderr
        manifest = pd.read_parquet(dataset / MANIFEST_FILE)
        tars = sorted(p.name for p in dataset.glob("*.tar"))
        parts = sorted(p.stem for p in (dataset / PARTS_DIR).glob("*.parquet"))
        assert 0 < len(tars) < len(CLIPS) and [Path(t).stem for t in tars] == parts
        assert set(manifest.loc[manifest.status == "ok", "shard"]) == set(tars), "every ok row's tar exists"
        assert set(manifest.loc[manifest.status != "ok", "reason"]) == {"no_space"}
        assert not [p for p in dataset.rglob(".*")], "no temp files or markers left"


def test_a_disk_too_full_for_the_manifest_reserve_stops_before_any_work(tmp_path):
    """The run holds the manifest's room first; a disk that cannot hold it ends the run at once
    with one line naming the reserve file (no Ray start, no shard work lost later)."""
    with tmpfs(tmp_path / "mnt", "128k") as mount:
        command = [sys.executable, "-m", "cli.prep", "folder", "--root", str(corpus(tmp_path / "c", CLIPS[:1])), "--out", str(mount),
                   "--workers", "1", "--val", "0", "--test", "0", "--detector", "none", "--quiet"]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(errors) == 1 and "no space left on device writing" in errors[0] and ".manifest-reserve" in errors[0], errors
        assert "Traceback" not in result.stderr
        assert not list((mount / "c").glob("*.tar")) and not list((mount / "c").glob(".*")), "nothing started, nothing left"


@pytest.mark.slow
def test_killed_driver_leaves_no_worker_behind_and_a_rerun_is_identical(tmp_path, reference):
    """kill -9 of the driver: its ShardWorker processes exit within seconds (they went on for two
    more shards before), so an immediate re-run cannot overlap them, and it ends byte-identical."""
    root, expected = reference
    out = tmp_path / "out"
    job = start_job(root, out)
    try:
        wait_for_parts(out / "corpus", 1, job)
        job.send_signal(signal.SIGKILL)
        job.wait()
        deadline = time.time() + WORKER_EXIT_S
        while time.time() < deadline and shard_workers(job.pid):
            time.sleep(0.2)
        assert shard_workers(job.pid) == [], f"ShardWorker processes outlived their driver by {WORKER_EXIT_S} s"
    finally:
        kill_session(job.pid)
    rerun = subprocess.run(cli_command(root, out), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert output_digests(out / "corpus") == expected


def shard_workers(session: int) -> list[str]:
    return subprocess.run(["pgrep", "-s", str(session), "-f", "ShardWorker"], capture_output=True, text=True).stdout.split()
