"""The stream checks what it reads: shards corrupted in the test itself (bit rot in one member,
a truncated tar, a smashed header, a junk .tar), each skipped with one warning and counted, or
a one-line failure under ``on_bad_sample="fail"``; keys validated on read and on rewrite."""

from __future__ import annotations

import json
import logging
import math
import tarfile

import numpy as np
import pytest
import webdataset as wds
from typer.testing import CliRunner

from cals.data import BadData, iter_samples
from cals.shard_format import encode_sample
from cals.stream import StreamConfig, make_dataset, make_loader
from tests.cals.test_stream import synthetic_sample

T = 12


def write_shard(path, keys, lip_dim=4, edit=None):
    """A real shard of JPEG samples (``keys``); ``edit(raw)`` may change one before writing."""
    with wds.TarWriter(str(path), encoder=False) as tar:
        for i, key in enumerate(keys):
            raw = encode_sample(synthetic_sample(key, T, seed=i, lip_dim=lip_dim))
            if edit:
                edit(raw)
            tar.write(raw)
    return path


def rot_member(path, key, member, seed=0):
    """Random bytes over the middle of ``key.member`` inside the tar file (bit rot on disk)."""
    with tarfile.open(path) as tar:
        info = tar.getmember(f"{key}.{member}")
    start, size = info.offset_data + info.size // 4, max(1, info.size // 2)
    with open(path, "r+b") as stream:
        stream.seek(start)
        stream.write(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())


def streamed(folder, **options):
    """Every batch of one unshuffled, unresampled pass (one window per sample)."""
    config = StreamConfig(folder, window=5, batch_size=1, shuffle_buffer=0, resampled=False, lip_units=True, **options)
    return list(make_dataset(config))


def skipped_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "cals.stream"]


def nan_mel(raw):
    """A sample whose mel is NaN but whose SHA-1s hold (a writer bug, not bit rot)."""
    if raw["__key__"] == "b":
        sample = synthetic_sample("b", T, seed=1, lip_dim=4)
        sample.mel[3, 7] = np.nan
        raw.update(encode_sample(sample))


@pytest.mark.parametrize("member", ["mel.npy", "lip.npy", "frames.mjpeg", "nan-mel"])
def test_a_bad_sample_is_skipped_counted_and_named(tmp_path, caplog, member):
    shard = write_shard(tmp_path / "train-000000.tar", ["a", "b", "c"], edit=nan_mel if member == "nan-mel" else None)
    if member != "nan-mel":
        rot_member(shard, "b", member)
    with caplog.at_level(logging.WARNING, logger="cals.stream"):
        batches = streamed(tmp_path)
    assert [k for b in batches for k in b["keys"]] == ["a", "c"]  # every other sample delivered
    assert sum(b["data_errors"] for b in batches) == 1
    [line] = skipped_lines(caplog)
    assert "train-000000.tar:'b'" in line and ("non-finite" in line if member == "nan-mel" else f"{member} fails its SHA-1" in line)
    with pytest.raises(BadData) as failure:
        streamed(tmp_path, on_bad_sample="fail")
    assert "\n" not in str(failure.value) and "train-000000.tar:'b'" in str(failure.value)


def test_wrong_shape_lip_and_missing_member_are_bad_samples(tmp_path):
    def damage(raw):
        if raw["__key__"] == "a":
            raw.update(encode_sample(synthetic_sample("a", T, seed=0, lip_dim=3)))  # json.lip_units.dim 3 ...
            meta = json.loads(raw["json"])
            meta["lip_units"]["dim"] = 4  # ... but the run's units are 4 wide
            raw["json"] = json.dumps(meta).encode()
        if raw["__key__"] == "b":
            del raw["audio.flac"]

    write_shard(tmp_path / "train-000000.tar", ["a", "b", "c"], edit=damage)
    batches = streamed(tmp_path)
    assert [k for b in batches for k in b["keys"]] == ["c"] and sum(b["data_errors"] for b in batches) == 2


@pytest.mark.parametrize("fault", ["truncated", "smashed-header", "junk"])
def test_an_unreadable_shard_is_skipped_with_one_line_naming_it(tmp_path, caplog, fault):
    write_shard(tmp_path / "train-000000.tar", ["a", "b"])
    write_shard(tmp_path / "train-000002.tar", ["e", "f"])
    bad = tmp_path / ("train-000099.tar" if fault == "junk" else "train-000001.tar")
    if fault == "junk":
        bad.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    else:
        write_shard(bad, ["c", "d"])
        blob = bad.read_bytes()
        if fault == "truncated":
            bad.write_bytes(blob[: len(blob) // 3 + 100])  # inside a member of sample c
        else:
            bad.write_bytes(b"\xff" * 512 + blob[512:])  # the first header
    with caplog.at_level(logging.WARNING, logger="cals.stream"):
        batches = streamed(tmp_path)
    assert {"a", "b", "e", "f"} <= {k for b in batches for k in b["keys"]}
    [line] = skipped_lines(caplog)
    assert bad.name in line and "\n" not in line
    with pytest.raises(BadData, match=bad.name):
        streamed(tmp_path, on_bad_sample="fail")


def test_no_readable_shard_is_one_line_also_when_resampled(tmp_path):
    for n in range(2):
        (tmp_path / f"train-00000{n}.tar").write_bytes(b"not a tar" * 100)
    for resampled in (False, True):
        config = StreamConfig(tmp_path, window=5, batch_size=1, resampled=resampled)
        with pytest.raises(BadData, match=r"no usable sample in 2 shard\(s\): 2 unreadable"):
            next(iter(make_dataset(config)))
    rotten = write_shard(tmp_path / "train-000000.tar", ["a"])
    rot_member(rotten, "a", "mel.npy")
    with pytest.raises(BadData, match="1 bad sample"):  # readable, but nothing usable: no endless skipping
        next(iter(make_dataset(StreamConfig(tmp_path, window=5, batch_size=1))))


def test_loader_workers_carry_their_counts_in_the_batches(tmp_path):
    for n in range(2):
        shard = write_shard(tmp_path / f"train-00000{n}.tar", [f"s{n}-{i}" for i in range(3)])
        rot_member(shard, f"s{n}-1", "frames.mjpeg")
    config = StreamConfig(tmp_path, window=5, batch_size=2, shuffle_buffer=0, num_workers=2)
    batches = list(make_loader(config, batches_per_epoch=6))
    assert sum(b["data_errors"] for b in batches) >= 2  # each worker met its bad sample at least once
    assert all(k.endswith(("-0", "-2")) for b in batches for k in b["keys"])
    with pytest.raises(BadData) as failure:
        list(make_loader(StreamConfig(**{**config.__dict__, "on_bad_sample": "fail"}), batches_per_epoch=6))
    assert "\n" not in str(failure.value) and "frames.mjpeg fails its SHA-1" in str(failure.value)


def test_iter_samples_checks_with_a_handler_policy(tmp_path):
    shard = write_shard(tmp_path / "train-000000.tar", ["a", "b", "c"])
    rot_member(shard, "c", "mel.npy")
    with pytest.raises(BadData, match=r"train-000000.tar:'c': member mel.npy fails its SHA-1"):
        list(iter_samples(tmp_path))
    with pytest.warns(UserWarning, match="mel.npy fails its SHA-1"):
        assert [s.key for s in iter_samples(tmp_path, handler=wds.warn_and_continue)] == ["a", "b"]
    (tmp_path / "train-000001.tar").write_bytes(b"junk" * 300)
    with pytest.raises(BadData, match="unreadable shard .*train-000001.tar"):
        list(iter_samples([str(tmp_path / "train-000001.tar")]))


def test_invalid_keys_are_refused_on_read_and_never_written_back(tmp_path):
    from pipeline.rewrite import SampleOutcome, read_report, rewrite_shard, scan_shard

    def rename(raw):
        if raw["__key__"] == "b":
            raw["__key__"] = "b c"  # a space: verify rejects it, WebDataset keeps it
    shard = write_shard(tmp_path / "train-000000.tar", ["a", "b"], edit=rename)
    assert [k for b in streamed(tmp_path) for k in b["keys"]] == ["a"]

    class Touch:
        name, manifest_columns, error_column = "touch", (), "touch_error"

        def is_done(self, meta, members):
            return "touched" in meta

    def transform(raw, meta):
        return SampleOutcome(raw={**raw, "json": json.dumps({**meta, "touched": True}).encode()})

    report = rewrite_shard(tmp_path, shard.name, Touch(), transform)
    assert report["records"]["b c"]["status"] == "error" and "invalid sample key" in report["records"]["b c"]["detail"]
    assert [key for key, _, _ in scan_shard(shard)] == ["a"]
    assert read_report(tmp_path, "touch", shard.name)["records"]["a"]["status"] == "done"


def test_cals_train_a2l_trains_past_a_corrupted_sample(tmp_path):
    from cals.train.checkpoint import load_weights
    from cli.train import app

    (tmp_path / "d").mkdir()
    shard = write_shard(tmp_path / "d" / "train-000000.tar", [f"s{i}" for i in range(4)], lip_dim=6)
    rot_member(shard, "s2", "mel.npy")
    result = CliRunner().invoke(app, ["a2l", "--shards", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--steps", "4",
                                      "--batch-size", "2", "--window", "10", "--ckpt-every", "4", "--log-every", "1", "--quiet",
                                      "--layers", "1", "--d-model", "32", "--ffn", "64", "--heads", "2"])
    assert result.exit_code == 0, result.output
    assert all(bool(t.isfinite().all()) for t in load_weights(tmp_path / "run").values() if t.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("data_errors", 0) for r in records if r["split"] == "train") >= 1
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r and r["loss"] is not None)
