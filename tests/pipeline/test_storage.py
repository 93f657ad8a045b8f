"""Output storage: a local folder or an fsspec URL, with the same guarantees (atomic files,
resume, refusal of changed inputs, the manifest and prep.json). URLs are tested through fsspec's
local filesystem (``file://``), which Ray's worker processes share with the driver."""

from __future__ import annotations

import hashlib
import io
import sys

import pytest

from cals.data import iter_samples, shard_paths
from cals.layout import MANIFEST_FILE, PREP_FILE
from pipeline.storage import FsspecStorage, LocalStorage, open_storage
from tests.conftest import FIXTURE_VIDEO, needs_fixtures

pytest.importorskip("fsspec")


def storages(tmp_path) -> list:
    return [LocalStorage(tmp_path / "local" / "ds"), FsspecStorage(f"file://{tmp_path}/url/ds", staging_dir=tmp_path / "staging")]


def visible_files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_open_storage_picks_by_scheme(tmp_path):
    assert isinstance(open_storage(tmp_path), LocalStorage)
    assert isinstance(open_storage(str(tmp_path / "x")), LocalStorage)
    url = open_storage(f"file://{tmp_path}/x/")
    assert isinstance(url, FsspecStorage) and url.location == f"file://{tmp_path}/x"
    assert url.url("_parts/a.parquet") == f"file://{tmp_path}/x/_parts/a.parquet"
    assert open_storage(url) is url


@pytest.mark.parametrize("kind", [0, 1], ids=["local", "file-url"])
def test_write_read_exists_glob_remove(tmp_path, kind):
    storage = storages(tmp_path)[kind]
    storage.makedirs()
    assert storage.glob("*.tar") == [] and not storage.exists("train-000000.tar")
    storage.write_bytes("train-000001.tar", b"b")
    storage.write_bytes("train-000000.tar", b"a")
    storage.write_bytes("val-000000.tar", b"v")
    storage.write_text("_parts/train-000000.parquet", "p")
    storage.write_text("_parts/.train-000000.current", "key")
    assert storage.exists("train-000000.tar") and storage.read_bytes("train-000001.tar") == b"b"
    assert not storage.exists("_parts")  # a folder is not a file
    assert storage.glob("train-*.tar") == ["train-000000.tar", "train-000001.tar"]
    assert storage.glob("*.tar") == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    assert storage.glob("_parts/*.parquet") == ["_parts/train-000000.parquet"]
    assert storage.glob("_parts/.*") == ["_parts/.train-000000.current"]
    assert storage.glob("missing/*.tar") == []
    storage.clean()  # worker markers and temp files go
    assert storage.glob("_parts/.*") == []
    storage.remove("val-000000.tar")
    storage.remove("val-000000.tar")  # missing_ok
    with pytest.raises(FileNotFoundError):
        storage.remove("val-000000.tar", missing_ok=False)
    assert storage.glob("*.tar") == ["train-000000.tar", "train-000001.tar"]


@pytest.mark.parametrize("kind", [0, 1], ids=["local", "file-url"])
def test_staged_write_that_fails_leaves_nothing(tmp_path, kind):
    storage = storages(tmp_path)[kind]
    storage.makedirs()
    storage.write_bytes("train-000000.tar", b"old")
    with pytest.raises(RuntimeError):
        with storage.staged("train-000000.tar") as tmp:
            tmp.write_bytes(b"new, half written")
            raise RuntimeError("the writer crashed")
    with pytest.raises(RuntimeError):
        with storage.staged("train-000001.tar") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer crashed")
    assert storage.read_bytes("train-000000.tar") == b"old"
    assert storage.glob("*") == ["train-000000.tar"]
    assert not tmp.exists(), "the local temp file was removed"


class PutFails:
    """An fsspec filesystem whose upload dies half-way: ``put_file`` writes half the bytes to its
    destination, then raises (a dropped connection)."""

    def __init__(self, fs) -> None:
        self.fs = fs

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def put_file(self, lpath, rpath, **kwargs):
        data = open(lpath, "rb").read()
        with self.fs.open(rpath, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise ConnectionError("upload interrupted")


def test_upload_that_fails_midway_leaves_no_partial_file_under_the_final_name(tmp_path):
    import fsspec

    root = tmp_path / "bucket" / "ds"
    storage = FsspecStorage(f"file://{root}", staging_dir=tmp_path / "staging", fs=PutFails(fsspec.filesystem("file")))
    assert not storage.atomic_put  # file:// uploads to a temp name, then renames
    storage.makedirs()
    (root / "train-000000.tar").write_bytes(b"the previous complete shard")
    for name in ("train-000000.tar", "train-000001.tar", "_parts/train-000001.parquet"):
        with pytest.raises(ConnectionError):
            storage.write_bytes(name, b"0123456789" * 1000)
    assert (root / "train-000000.tar").read_bytes() == b"the previous complete shard"
    assert visible_files(root) == ["train-000000.tar"], "no partial object, no temp object"
    assert list((tmp_path / "staging").iterdir()) == [], "local staged files removed"


def test_object_store_put_is_one_upload_to_the_final_name(tmp_path):
    """On an object store the single PUT is the atomic step: no temp object, no rename; a failed
    PUT leaves the previous object and removes the staged file."""
    import fsspec

    calls = []

    class ObjectStore(PutFails):
        protocol = ("s3", "s3a")

        def put_file(self, lpath, rpath, **kwargs):
            calls.append(rpath)
            if "fail" in rpath:
                raise ConnectionError("upload interrupted")  # an object store discards a failed PUT
            return self.fs.put_file(lpath, rpath)

        def mv(self, *args, **kwargs):
            raise AssertionError("an object store needs no rename")

    root = tmp_path / "bucket"
    root.mkdir()
    storage = FsspecStorage(f"file://{root}", staging_dir=tmp_path / "staging", fs=ObjectStore(fsspec.filesystem("file")))
    assert storage.atomic_put
    storage.write_bytes("ok.tar", b"data")
    with pytest.raises(ConnectionError):
        storage.write_bytes("fail.tar", b"data")
    assert calls == [f"{root}/ok.tar", f"{root}/fail.tar"]
    assert visible_files(root) == ["ok.tar"] and (root / "ok.tar").read_bytes() == b"data"
    assert list((tmp_path / "staging").iterdir()) == []


def test_missing_fsspec_is_a_one_line_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(ImportError, match=r"pip install fsspec s3fs$") as error:
        open_storage("s3://bucket/shards")
    assert "\n" not in str(error.value)
    with pytest.raises(ImportError, match=r"pip install fsspec gcsfs$"):
        shard_paths("gs://bucket/shards/videos")


def test_shard_paths_lists_a_url_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("train-000001.tar", "train-000000.tar", "val-000000.tar", "manifest.parquet"):
        (folder / name).write_bytes(b"")
    url = f"file://{folder}"
    assert shard_paths(url, "train") == [f"{url}/train-000000.tar", f"{url}/train-000001.tar"]
    assert shard_paths(url + "/") == [f"{url}/train-000000.tar", f"{url}/train-000001.tar", f"{url}/val-000000.tar"]
    assert shard_paths(f"{url}/train-{{000000..000001}}.tar") == [f"{url}/train-000000.tar", f"{url}/train-000001.tar"]
    with pytest.raises(FileNotFoundError, match="no 'test' shards"):
        shard_paths(url, "test")


# --- end to end: run_prep into a file:// URL -------------------------------------------------

TWO_CLIPS = ("talk_aoc2_retalking.mp4", "talk_man_mapbg_retalking.mp4")
TINY_SHARDS = 0.001  # MB: one clip per shard


def output_digests(storage) -> dict[str, str]:
    names = storage.glob("*.tar") + storage.glob("_parts/*.parquet") + [MANIFEST_FILE]
    return {name: hashlib.sha256(storage.read_bytes(name)).hexdigest() for name in names}


@needs_fixtures
@pytest.mark.slow
def test_prep_to_a_url_resumes_refuses_and_reads_back_like_a_local_run(tmp_path):
    import json

    from pipeline.prepare_clip import PrepParams
    from pipeline.manifest import read_metadata, read_rows, write_parquet
    from pipeline.recipes.folder import prepare_folder
    from pipeline.run import OutputMismatch, run_prep

    root = tmp_path / "corpus"
    (root / "spk").mkdir(parents=True)
    for name in TWO_CLIPS:
        (root / "spk" / name).symlink_to(FIXTURE_VIDEO / name)
    clips = prepare_folder(root, val=0, test=0)
    url = f"file://{tmp_path}/bucket/shards/corpus"
    run = dict(shard_mb=TINY_SHARDS, workers=1, show_progress=False)

    first = run_prep(clips, url, PrepParams(), **run)
    assert (first.shards_done, first.shards_skipped, first.ok) == (2, 0, 2)
    assert first.out_dir == url
    storage = open_storage(url)
    assert storage.glob("*.tar") == ["train-000000.tar", "train-000001.tar"]
    assert json.loads(storage.read_text(PREP_FILE))["summary"]["clips_ok"] == 2
    assert not list((tmp_path / "bucket").rglob(".*")), "no temp files or markers left"

    again = run_prep(clips, url, PrepParams(), **run)
    assert (again.shards_done, again.shards_skipped, again.ok) == (0, 2, 2)

    with pytest.raises(OutputMismatch, match="min_frames: 25 -> 30"):
        run_prep(clips, url, PrepParams(min_frames=30), **run)

    # --retry-failed: pretend the second shard's clip crashed its worker; only that shard is redone.
    part = "_parts/train-000001.parquet"
    rows, metadata = read_rows(io.BytesIO(storage.read_bytes(part))), read_metadata(io.BytesIO(storage.read_bytes(part)))
    rows[0].update(status="failed", reason="worker_crash", detail="injected", shard=None)
    with storage.staged(part) as tmp:
        write_parquet(rows, tmp, metadata)
    storage.remove("train-000001.tar")
    run_prep(clips, url, PrepParams(), **run)  # the manifest now records the crash
    retried = run_prep(clips, url, PrepParams(), retry_failed=True, **run)
    assert (retried.shards_done, retried.ok) == (1, 2)

    local = tmp_path / "local" / "corpus"
    run_prep(clips, local, PrepParams(), **run)
    assert output_digests(storage) == output_digests(open_storage(local)), "same bytes as a plain-path run"

    from_url = list(iter_samples(url, split="train"))
    from_path = list(iter_samples(local, split="train"))
    assert [s.meta["key"] for s in from_url] == [s.meta["key"] for s in from_path] == sorted(c.key for c in clips["train"])
    for a, b in zip(from_url, from_path):
        assert (a.frames == b.frames).all() and (a.mel == b.mel).all() and (a.audio == b.audio).all()


def test_the_manifest_reserve_holds_its_bytes_for_the_block_and_is_gone_after(tmp_path):
    from cals.layout import RESERVE_FILE
    from pipeline.storage import reserve_bytes, space_reserved

    storage = LocalStorage(tmp_path)
    with space_reserved(storage, RESERVE_FILE, reserve_bytes(3)):
        held = tmp_path / RESERVE_FILE
        assert held.stat().st_size == reserve_bytes(3) and held.stat().st_blocks * 512 >= reserve_bytes(3), "written, not sparse"
    assert not held.exists()
    with pytest.raises(RuntimeError):
        with space_reserved(storage, RESERVE_FILE, 10):
            raise RuntimeError("the run failed")
    assert not held.exists(), "removed whatever happens"
    held.write_bytes(b"left by a killed run")
    storage.clean()
    assert not held.exists(), "the next run's clean() removes a killed run's reserve"
