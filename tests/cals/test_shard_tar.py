"""The torch-free shard tar writer (:mod:`cals.shard_tar`): the same bytes as WebDataset's
``TarWriter`` as prep configured it, and prep's worker imports stay free of torch."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds

from cals.shard_format import encode_frames, pack_sample
from cals.shard_tar import ShardTarWriter


def samples() -> list[dict]:
    """Two real packed samples (JPEG frames, mel, FLAC, arrays, json) and a plain one with a private (``_``) member."""
    rng = np.random.default_rng(0)
    out = []
    for index, frames in enumerate((3, 5)):
        crops = rng.integers(0, 255, (frames, 128, 128, 3), dtype=np.uint8)
        out.append(pack_sample(f"spk_clip{index}", encode_frames(crops), "jpeg", rng.standard_normal((4 * frames, 80)).astype(np.float32),
                               rng.integers(-3000, 3000, 640 * frames).astype(np.int16), np.zeros((frames, 4), np.float32),
                               np.ones(frames, np.float32), {"note": "ü", "index": index}))
    out.append({"__key__": "plain", "txt": "text ü".encode(), "_private": b"skipped", "bin": b"\x00" * 1000})
    return out


def write_ours(items: list[dict]) -> bytes:
    stream = io.BytesIO()
    with ShardTarWriter(stream) as tar:
        for item in items:
            tar.write(item)
    return stream.getvalue()


def write_webdataset(items: list[dict]) -> bytes:
    stream = io.BytesIO()
    with wds.TarWriter(stream, mtime=0, user="cals", group="cals", encoder=False) as tar:
        for item in items:
            tar.write(item)
    return stream.getvalue()


def test_the_same_bytes_as_webdatasets_writer():
    ours, theirs = write_ours(samples()), write_webdataset(samples())
    assert ours == theirs
    names = tarfile.open(fileobj=io.BytesIO(ours)).getnames()
    assert "plain._private" not in names and "spk_clip0.json" in names


def test_a_different_writer_is_caught():
    """The comparison can fail: a writer with another mtime writes other bytes."""
    stream = io.BytesIO()
    with wds.TarWriter(stream, mtime=1, user="cals", group="cals", encoder=False) as tar:
        for item in samples():
            tar.write(item)
    assert write_ours(samples()) != stream.getvalue()


def test_a_member_that_is_not_bytes_is_refused_before_anything_is_written():
    stream = io.BytesIO()
    with ShardTarWriter(stream) as tar:
        with pytest.raises(ValueError, match="'arr' of 'k' is ndarray"):
            tar.write({"__key__": "k", "a": b"x", "arr": np.zeros(3)})
        with pytest.raises(ValueError, match="__key__"):
            tar.write({"a": b"x"})
    assert tarfile.open(fileobj=io.BytesIO(stream.getvalue())).getnames() == []


def test_a_prep_worker_imports_no_torch():
    """What a prep worker imports (pipeline.run: the pool, the shard writer, storage) leaves torch
    out: importing it cost every worker 1.8 s of its start (BENCHMARKS, issue 12)."""
    code = "import sys, pipeline.run, pipeline.prepare_shard, pipeline.storage; print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
