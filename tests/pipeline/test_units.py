"""``cals-prep units`` on a real prepared dataset: lip.npy in every sample, unit t = the model's
embedding of the window centred on frame t, atomic in-place rewrite, resume, recorded failures,
a dataset that still verifies, the manifest columns.

The model is a randomly initialised SyncNetV2 (the released weights are not available here)."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds

from cals.data import iter_samples
from cals.layout import MANIFEST_FILE
from cals.models.syncnet_v2 import SyncNetV2, load_syncnet_v2
from cals.shard_format import check_members
from pipeline.rewrite import manifest_values, read_report, rewrite_shard, scan_shard, update_manifest
from pipeline.units import UNITS_COLUMNS, add_lip_units, lip_units_job
from pipeline.verify import verify_dataset
from tests.conftest import needs_fixtures
from tests.pipeline.conftest import LIP_CLIPS

pytestmark = [needs_fixtures, pytest.mark.slow]


def reference_units(net, frames: np.ndarray) -> np.ndarray:
    """Every frame's unit computed here: 224x224 bilinear BGR crops, the clip padded with 2
    copies of its first and last frame, the 5 frames centred on t through the lip stream."""
    bgr = np.stack([cv2.resize(frame, (224, 224), interpolation=cv2.INTER_LINEAR)[..., ::-1] for frame in frames])
    padded = np.concatenate([bgr[:1], bgr[:1], bgr, bgr[-1:], bgr[-1:]])
    windows = np.stack([padded[t : t + 5] for t in range(len(frames))]).transpose(0, 4, 1, 2, 3)
    with torch.no_grad():
        return net.forward_lip(torch.from_numpy(np.ascontiguousarray(windows)).float()).numpy()


def raw_samples(dataset):
    for shard in sorted(dataset.glob("*.tar")):
        yield from wds.WebDataset([str(shard)], shardshuffle=False, empty_check=False)


def temp_files(dataset):
    return [p for p in dataset.rglob("*") if ".tmp-" in p.name]


def test_units_in_every_sample_resume_and_verify(dataset_copy):
    dataset, model_file = dataset_copy
    shards = len(list(dataset.glob("*.tar")))  # as the prep run planned them
    summary = add_lip_units(dataset, model_file, workers=1, show_progress=False)
    assert (summary.samples, summary.processed, summary.failed, summary.shards_done) == (len(LIP_CLIPS), len(LIP_CLIPS), 0, shards)

    net = load_syncnet_v2(model_file)
    digest = lip_units_job(model_file).digest
    samples = list(iter_samples(dataset))
    assert len(samples) == len(LIP_CLIPS)
    for sample in samples:
        assert sample.lip is not None and sample.lip.shape == (sample.num_frames, 1024) and sample.lip.dtype == np.float16
        assert sample.meta["lip_units"] == {"kind": "syncnet_v2", "digest": digest, "dim": 1024, "window": 5, "padding": "repeat edge frames"}
        np.testing.assert_allclose(sample.lip.astype(np.float32), reference_units(net, sample.frames), rtol=1e-3, atol=1e-3)
    for raw in raw_samples(dataset):
        assert check_members(raw) == [] and "lip.npy" in json.loads(raw["json"])["member_sha1"]
    report = verify_dataset(dataset)
    assert report.ok, report.problems
    manifest = pd.read_parquet(dataset / MANIFEST_FILE)
    assert list(manifest.columns[-len(UNITS_COLUMNS):]) == [name for name, _ in UNITS_COLUMNS]
    assert (manifest.lip_kind == "syncnet_v2").all() and (manifest.lip_dim == 1024).all() and (manifest.lip_digest == digest).all()
    assert manifest.lip_error.isna().all()
    assert temp_files(dataset) == []

    # Resume: every shard already has these units, so nothing is rewritten (not even the manifest).
    files = sorted(dataset.glob("*.tar")) + [dataset / MANIFEST_FILE]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    again = add_lip_units(dataset, model_file, workers=1, show_progress=False)
    assert (again.shards_skipped, again.shards_done, again.processed) == (shards, 0, 0)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before

    # A shard that does not read is recorded and the run goes on.
    (dataset / "train-000001.tar").write_bytes(b"not a tar")
    broken = add_lip_units(dataset, model_file, workers=1, show_progress=False)
    assert list(broken.shard_failures) == ["train-000001.tar"] and broken.shards_skipped == shards - 1


def test_a_failing_sample_is_recorded_and_keeps_no_units(dataset_copy):
    """Fault injection: the real transform, made to raise on one sample of a two-sample shard."""
    dataset, model_file = dataset_copy
    job = lip_units_job(model_file)
    shard = "train-000000.tar"
    victim, other = [key for key, _, _ in scan_shard(dataset / shard)]
    add_units = job.start("cpu")

    def faulty(raw, meta):
        if raw["__key__"] == victim:
            raise RuntimeError("injected fault")
        return add_units(raw, meta)

    report = rewrite_shard(dataset, shard, job, faulty)
    assert report == read_report(dataset, "units", shard)
    assert report["records"][victim]["status"] == "error" and "injected fault" in report["records"][victim]["detail"]
    assert report["records"][other]["status"] == "done"
    members = {key: members for key, _, members in scan_shard(dataset / shard)}
    assert "lip.npy" not in members[victim] and "lip.npy" in members[other]
    for raw in wds.WebDataset([str(dataset / shard)], shardshuffle=False, empty_check=False):
        assert check_members(raw) == []
    assert verify_dataset(dataset).ok
    assert temp_files(dataset) == []

    # What the driver writes to the manifest for this state: the error, and no units, for the victim.
    scans = {name: scan_shard(dataset / name) for name in ("train-000000.tar", "train-000001.tar")}
    values, drops = manifest_values(dataset, job, scans, {})
    assert update_manifest(dataset, job.manifest_columns, values, drops) and not drops
    manifest = pd.read_parquet(dataset / MANIFEST_FILE).set_index("key")
    assert "injected fault" in manifest.loc[victim, "lip_error"] and pd.isna(manifest.loc[victim, "lip_kind"])
    assert manifest.loc[other, "lip_kind"] == "syncnet_v2" and pd.isna(manifest.loc[other, "lip_error"])
    assert (manifest.status == "ok").all()

    # The next run retries only what is missing: the victim and the other shard's sample.
    mtime = os.stat(dataset / shard).st_mtime_ns
    report = rewrite_shard(dataset, shard, job, add_units)
    assert report["records"][victim]["status"] == "done"
    assert all("lip.npy" in m for _, _, m in scan_shard(dataset / shard)) and os.stat(dataset / shard).st_mtime_ns != mtime


# --- lip units on their own pool, fed as prep writes shards (issue 12) ------------------------


def _overlap_factories(flags, wait_s: float, units: int):
    """A first pool whose last unit waits (up to ``wait_s``) for the follow-up of unit 0 to have
    run, and returns whether it did; follow-up units leave a flag file. Defined here, so Ray
    pickles the classes by value (the tests package is not installed)."""
    from dataclasses import dataclass as frozen_dataclass

    @frozen_dataclass(frozen=True)
    class First:
        def start(self, report):
            def work(unit):
                report(1, 0, 0)
                if unit < units - 1:
                    return True
                deadline = time.time() + wait_s
                while time.time() < deadline and not (flags / "0").exists():
                    time.sleep(0.05)
                return (flags / "0").exists()

            return work

    @frozen_dataclass(frozen=True)
    class Follow:
        def start(self, report):
            def work(unit):
                (flags / str(unit)).write_text("done")
                report(1, 0, 0)
                return unit

            return work

    return First(), Follow()


def test_follow_up_pool_works_while_the_first_pool_still_runs(tmp_path):
    """The last first-pool unit can only see the follow-up of unit 0 if the two pools overlap;
    the broken variant (the follow-ups run after the first pool, the old sequential path) fails
    the same check."""
    from pipeline.ray_pool import Bar, FollowUp, run_pool

    units = [0, 1, 2]
    overlapped, sequential = tmp_path / "overlapped", tmp_path / "sequential"
    overlapped.mkdir()
    sequential.mkdir()

    first, follow = _overlap_factories(overlapped, 120.0, len(units))
    then = FollowUp(follow, Bar("follow", total=None), lambda unit, _: unit)
    result = run_pool(units, first, Bar("first", total=3), workers=1, show_progress=False, then=then)
    assert result.results == {"0": True, "1": True, "2": True} and not result.failures
    assert result.followed == {"0": 0, "1": 1, "2": 2} and not result.follow_failures

    first, follow = _overlap_factories(sequential, 1.0, len(units))
    before = run_pool(units, first, Bar("first", total=3), workers=1, show_progress=False)
    after = run_pool(units, follow, Bar("follow", total=3), workers=1, show_progress=False)
    assert before.results["2"] is False and len(after.results) == 3  # the check rejects it


def test_prep_with_units_makes_them_during_prep(tmp_path):
    """``run_prep(..., then=units_follow_up(...))`` (what ``cals-prep ... --units`` runs): every
    sample has its units when prep returns; add_lip_units then finds every shard done, rewrites
    nothing and writes the manifest columns; the dataset verifies and no temp file is left."""
    from pipeline.prepare_clip import PrepParams
    from pipeline.recipes.folder import prepare_folder
    from pipeline.run import run_prep
    from pipeline.units import units_follow_up
    from tests.conftest import FIXTURE_VIDEO
    from tests.pipeline.conftest import PREPARED_SECONDS, SHARD_MB

    import dataclasses

    (tmp_path / "corpus" / "spk").mkdir(parents=True)
    for name in LIP_CLIPS[:2]:
        (tmp_path / "corpus" / "spk" / name).symlink_to(FIXTURE_VIDEO / name)
    clips = prepare_folder(tmp_path / "corpus", val=0, test=0)
    clips = {split: [dataclasses.replace(c, end_s=PREPARED_SECONDS) for c in found] for split, found in clips.items()}
    torch.manual_seed(0)
    model = tmp_path / "syncnet_random.model"
    torch.save(SyncNetV2().state_dict(), model)
    dataset = tmp_path / "out" / "corpus"
    then = units_follow_up(dataset, model)
    summary = run_prep(clips, dataset, PrepParams(detector="none", min_frames=10), shard_mb=SHARD_MB, workers=1,
                       show_progress=False, then=then)
    assert summary.ok == 2
    digest = lip_units_job(model).digest
    samples = list(iter_samples(dataset))
    assert len(samples) == 2 and all(s.lip is not None and s.meta["lip_units"]["digest"] == digest for s in samples)
    shards = len(list(dataset.glob("*.tar")))
    finish = add_lip_units(dataset, model, workers=1, show_progress=False)
    assert (finish.shards_skipped, finish.shards_done, finish.processed) == (shards, 0, 0)
    manifest = pd.read_parquet(dataset / MANIFEST_FILE)
    assert (manifest.lip_digest == digest).all() and manifest.lip_error.isna().all()
    assert verify_dataset(dataset).ok and temp_files(dataset) == []
