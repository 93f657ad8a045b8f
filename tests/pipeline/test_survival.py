"""Runs that survive: a job killed mid-way (driver, or one worker) and re-run ends byte-identical
to an uninterrupted one; a clip that kills its worker twice is recorded, its neighbours kept;
changed inputs are refused unless --force; --retry-failed redoes transient failures."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cals.layout import MANIFEST_FILE
from pipeline.prepare_clip import PrepParams
from pipeline.prep_job import PrepOptions
from pipeline.recipes.folder import PREP_DEFAULTS, prepare_folder
from pipeline.run import OutputMismatch, run_prep
from pipeline.verify import verify_dataset
from tests.conftest import FIXTURE_VIDEO, ffmpeg, needs_fixtures

pytestmark = [needs_fixtures, pytest.mark.slow]

CLIPS = ("talk_aoc2_retalking.mp4", "talk_man_mapbg_retalking.mp4", "talk_man_suit_retalking_vfr.mp4", "talk_hdtf_aoc_sadtalker.mp4")
TINY_SHARDS = 0.001  # MB: one clip per shard, so a run has several units to interrupt
REPO = Path(__file__).resolve().parents[2]


def make_corpus(root: Path) -> Path:
    (root / "spk").mkdir(parents=True)
    for name in CLIPS:
        (root / "spk" / name).symlink_to(FIXTURE_VIDEO / name)
    return root


def output_digests(dataset: Path) -> dict[str, str]:
    files = sorted(dataset.glob("*.tar")) + sorted((dataset / "_parts").glob("*.parquet")) + [dataset / MANIFEST_FILE]
    return {f.relative_to(dataset).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with :func:`cli_command`'s parameters (``cals-prep folder``'s
    defaults): what every interrupted-and-resumed CLI run must equal."""
    root = make_corpus(tmp_path_factory.mktemp("ref") / "corpus")
    out = tmp_path_factory.mktemp("refout") / "corpus"
    run_prep(prepare_folder(root, val=0, test=0), out, folder_cli_params(), shard_mb=TINY_SHARDS, workers=1, show_progress=False)
    digests = output_digests(out)
    assert sum(name.endswith(".tar") for name in digests) == len(CLIPS)
    return root, digests  # samples record their source path: interrupted runs read the same root


def folder_cli_params() -> PrepParams:
    """The PrepParams of :func:`cli_command`: ``cals-prep folder``'s own defaults (its
    --tracks/--scenes from the recipe, the rest from PrepOptions), as the CLI builds them."""
    return PrepOptions(**PREP_DEFAULTS).prep_params()


def cli_command(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cli.prep", "folder", "--root", str(root), "--out", str(out), "--workers", "1",
            "--shard-mb", str(TINY_SHARDS), "--val", "0", "--test", "0", "--quiet"]


def start_job(root: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_command(root, out), cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_parts(dataset: Path, count: int, job: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((dataset / "_parts").glob("*.parquet"))) >= count:
            return
        assert job.poll() is None, f"the job ended early: {job.communicate()[1][-2000:]!r}"
        time.sleep(0.1)
    pytest.fail(f"no {count} complete shards within {timeout} s")


def kill_session(session_id: int) -> None:
    """SIGKILL what is left of a job's process session (Ray's agents outlive a killed driver)."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    for line in listing:
        fields = line.split()
        if len(fields) == 2 and int(fields[1]) == session_id:
            try:
                os.kill(int(fields[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_driver_killed_midway_then_rerun_equals_uninterrupted(tmp_path, reference):
    root, expected = reference
    out = tmp_path / "out"
    job = start_job(root, out)
    try:
        wait_for_parts(out / "corpus", 1, job)
        job.send_signal(signal.SIGKILL)
        job.wait()
    finally:
        kill_session(job.pid)
    done_before = len(list((out / "corpus" / "_parts").glob("*.parquet")))
    assert 1 <= done_before < len(CLIPS), "the kill must land mid-run"
    assert not (out / "corpus" / MANIFEST_FILE).exists()
    rerun = subprocess.run(cli_command(root, out), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert output_digests(out / "corpus") == expected
    assert not list((out / "corpus").glob(".*")), "temp files were cleaned up"


def test_worker_killed_midway_is_replaced_and_output_equals_uninterrupted(tmp_path, reference):
    root, expected = reference
    out = tmp_path / "out"
    job = start_job(root, out)
    try:
        wait_for_parts(out / "corpus", 1, job)
        workers = subprocess.run(["pgrep", "-s", str(job.pid), "-f", "ShardWorker"], capture_output=True, text=True).stdout.split()
        assert workers, "no ShardWorker process found"
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-2000:]
    finally:
        kill_session(job.pid)
    assert output_digests(out / "corpus") == expected


def test_clip_that_kills_its_worker_twice_is_recorded_and_its_neighbours_kept(tmp_path):
    root = make_corpus(tmp_path / "corpus")
    ffmpeg("-i", str(FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"), "-vf", "scale=334:334", "-t", "2", "-c:a", "aac", str(root / "spk" / "crasher.mp4"))
    params = PrepParams(detector="tests.faults:CrashOnSize")
    summary = run_prep(prepare_folder(root, val=0, test=0), tmp_path / "out", params, shard_mb=1000, workers=1, show_progress=False)
    rows = pd.DataFrame(summary.rows).set_index(summary.rows and "key")
    crasher = rows[rows.source.str.endswith("crasher.mp4")].iloc[0]
    assert crasher.status == "failed" and crasher.reason == "worker_crash"
    assert "died 2 times" in crasher.detail
    assert (rows.status == "ok").sum() == len(CLIPS), "the clips sharing its shard are kept"
    assert verify_dataset(tmp_path / "out").ok


def test_changed_inputs_are_refused_unless_forced(tmp_path):
    root = make_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    clips = prepare_folder(root, val=0, test=0)
    clips["train"] = clips["train"][:2]
    run_prep(clips, out, PrepParams(), shard_mb=TINY_SHARDS, workers=1, show_progress=False)
    everything = prepare_folder(root, val=0, test=0)
    with pytest.raises(OutputMismatch, match="2 clips added, 0 removed"):
        run_prep(everything, out, PrepParams(), shard_mb=TINY_SHARDS, workers=1, show_progress=False)
    with pytest.raises(OutputMismatch, match="min_frames: 25 -> 30"):
        run_prep(clips, out, PrepParams(min_frames=30), shard_mb=TINY_SHARDS, workers=1, show_progress=False)
    summary = run_prep(everything, out, PrepParams(), shard_mb=TINY_SHARDS, workers=1, show_progress=False, force=True)
    assert summary.ok == len(CLIPS)
    assert verify_dataset(out).ok


def test_retry_failed_redoes_only_transient_failures(tmp_path):
    root = make_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    run_prep(prepare_folder(root, val=0, test=0), out, PrepParams(), shard_mb=TINY_SHARDS, workers=1, show_progress=False)
    # Pretend one shard's clip failed transiently: drop its tar and mark its row.
    from cals.atomic import atomic_write
    from pipeline.manifest import read_metadata, read_rows, write_parquet

    part = sorted((out / "_parts").glob("*.parquet"))[1]
    rows, metadata = read_rows(part), read_metadata(part)
    rows[0].update(status="failed", reason="worker_crash", detail="injected", shard=None)
    with atomic_write(part) as tmp:
        write_parquet(rows, tmp, metadata)
    (out / f"{part.stem}.tar").unlink()
    clips = prepare_folder(root, val=0, test=0)
    stale = run_prep(clips, out, PrepParams(), shard_mb=TINY_SHARDS, workers=1, show_progress=False)
    assert stale.shards_done == 0 and stale.failures == {"worker_crash": 1}, "without the flag, a complete shard stays"
    retried = run_prep(clips, out, PrepParams(), shard_mb=TINY_SHARDS, workers=1, show_progress=False, retry_failed=True)
    assert retried.shards_done == 1 and retried.ok == len(CLIPS)
    assert verify_dataset(out).ok
