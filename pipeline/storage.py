"""Where a dataset folder lives: a local path, or an fsspec URL (s3://, gs://, file://, ...).

:class:`Storage` is the only way :mod:`pipeline.run` and :mod:`pipeline.prepare_shard` touch the
output. Names are relative to the dataset folder, ``/``-separated (``train-000000.tar``,
``_parts/train-000000.parquet``). Every write is atomic: the content is made complete in a
local file first (:meth:`Storage.staged`), then published under its final name in one step
(:meth:`Storage.put_file`), so a crash never leaves a partial file or object under a final name.

- :class:`LocalStorage`: the temp file sits beside its final name (``.NAME.tmp-XXXXXXXX``) and
  is fsynced and renamed (:mod:`cals.atomic`, as every local atomic write).
- :class:`FsspecStorage`: the temp file sits in a local staging folder. On an object store
  (:data:`ATOMIC_PUT_PROTOCOLS`) one upload publishes it: an object appears only when its PUT
  (or multipart upload) completes. On any other fsspec filesystem (``file://``, sftp, ...) it is
  uploaded to a temp name beside its final one, then renamed (``fs.mv``).

fsspec is imported only for URLs (:func:`cals.urls.url_filesystem`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from cals.atomic import publish, temp_name
from cals.errors import no_space_raised_as_one_line
from cals.urls import is_url, url_filesystem
from cals.layout import PARTS_DIR, PREP_TEMP_GLOBS

#: fsspec protocols whose single upload is atomic (object stores): no temp object, no rename.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})


class Storage:
    """A dataset folder. Use :func:`open_storage` (or :meth:`Storage.open`) to get one."""

    location: str  # the folder as given: a path or a URL (for messages)

    @staticmethod
    def open(location: "str | Path | Storage") -> "Storage":
        return open_storage(location)

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def url(self, name: str = "") -> str:
        """The full path/URL of ``name`` (the folder itself for ``""``)."""
        raise NotImplementedError

    def makedirs(self) -> None:
        """Create the folder (and ``_parts``) where the storage has folders."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def glob(self, pattern: str) -> list[str]:
        """Sorted names matching ``pattern`` (one folder level, e.g. ``_parts/*.parquet``)."""
        raise NotImplementedError

    def remove(self, name: str, missing_ok: bool = True) -> None:
        raise NotImplementedError

    def staging_path(self, name: str) -> Path:
        """A fresh local file path to build ``name``'s content in before :meth:`put_file`."""
        raise NotImplementedError

    def put_file(self, local_path: str | Path, name: str) -> None:
        """Publish the finished local file ``local_path`` as ``name``, atomically; the local file
        is consumed (moved or deleted) on success and left to the caller on failure."""
        raise NotImplementedError

    @contextlib.contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """``with storage.staged(name) as tmp: write tmp`` → ``name`` appears complete at the
        end of the block, or not at all (the temp file is removed if the block or upload fails)."""
        tmp = self.staging_path(name)
        try:
            yield tmp
            self.put_file(tmp, name)
        finally:
            tmp.unlink(missing_ok=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.staged(name) as tmp:
            tmp.write_bytes(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def clean(self, patterns: Sequence[str] = PREP_TEMP_GLOBS) -> None:
        """Remove what an interrupted run left: the names matching ``patterns`` (default: prep's
        temp files and worker markers, :data:`cals.layout.PREP_TEMP_GLOBS`)."""
        for pattern in patterns:
            for name in self.glob(pattern):
                self.remove(name)


#: Bytes of the manifest reserve (:func:`space_reserved`): a fixed part plus a share per clip, at
#: most :data:`RESERVE_MAX_BYTES` (a manifest row is a few hundred bytes of Parquet).
RESERVE_BASE_BYTES = 256 * 1024
RESERVE_BYTES_PER_CLIP = 1024
RESERVE_MAX_BYTES = 256 * 1024 * 1024


def reserve_bytes(clips: int) -> int:
    """The manifest reserve for a run of ``clips`` source clips, bytes."""
    return min(RESERVE_MAX_BYTES, RESERVE_BASE_BYTES + RESERVE_BYTES_PER_CLIP * clips)


@contextlib.contextmanager
def space_reserved(storage: "Storage", name: str, nbytes: int) -> Iterator[None]:
    """Hold ``nbytes`` of the disk under a local ``storage`` as the file ``name`` for the block,
    so what is written after it (the manifest) still fits on a disk the block filled. The file
    holds zeros (written: space a sparse file would not hold) and is removed when the block ends,
    whatever happens. Object stores do not fill up: nothing is held there. Raises
    :class:`cals.errors.NoSpaceError` (one line) when the disk cannot hold the reserve, before
    the block runs."""
    path = storage.root / name if isinstance(storage, LocalStorage) and nbytes > 0 else None
    try:
        if path is not None:
            chunk = bytes(min(nbytes, 1 << 20))
            with no_space_raised_as_one_line(str(path)), open(path, "wb") as stream:
                for start in range(0, nbytes, len(chunk)):
                    stream.write(chunk[: nbytes - start])
                stream.flush()
                os.fsync(stream.fileno())
        yield
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


class LocalStorage(Storage):
    """A local (or shared-disk) folder: temp file beside the final name, fsync, ``os.replace``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(root)

    def url(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)

    def makedirs(self) -> None:
        (self.root / PARTS_DIR).mkdir(parents=True, exist_ok=True)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def glob(self, pattern: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern) if p.is_file())

    def remove(self, name: str, missing_ok: bool = True) -> None:
        (self.root / name).unlink(missing_ok=missing_ok)

    def staging_path(self, name: str) -> Path:
        return self.root / temp_name(name)

    def put_file(self, local_path: str | Path, name: str) -> None:
        final = self.root / name
        source = Path(local_path)
        if source.parent != final.parent:  # staged elsewhere: copy beside the final name first
            beside = self.root / temp_name(name)
            try:
                shutil.copyfile(source, beside)
                self.put_file(beside, name)
            finally:
                beside.unlink(missing_ok=True)
            source.unlink()
            return
        publish(source, final)


class FsspecStorage(Storage):
    """A folder at an fsspec URL; finished files are staged locally, then published by one put."""

    def __init__(self, url: str, staging_dir: Optional[str | Path] = None, fs: Any = None) -> None:
        self.location = url.rstrip("/")
        if fs is None:
            fs, path = url_filesystem(self.location)
        else:
            path = fs._strip_protocol(self.location)
        self.fs = fs
        self.path = path.rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.atomic_put = any(p in ATOMIC_PUT_PROTOCOLS for p in protocols)
        self._staging_dir = Path(staging_dir) if staging_dir else None

    def __getstate__(self) -> dict[str, Any]:  # Ray ships storages to workers: no local staging folder
        return {**self.__dict__, "_staging_dir": None}

    def _full(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def url(self, name: str = "") -> str:
        return f"{self.location}/{name}" if name else self.location

    def makedirs(self) -> None:
        if not self.atomic_put:  # object stores have no folders
            self.fs.makedirs(self._full(PARTS_DIR), exist_ok=True)

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache()  # other processes (Ray workers) write here: no stale listings
        return self.fs.isfile(self._full(name))

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self._full(name))

    def glob(self, pattern: str) -> list[str]:
        self.fs.invalidate_cache()
        folder, base = posixpath.split(pattern)
        try:
            entries = self.fs.ls(self._full(folder), detail=True)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            leaf = posixpath.basename(entry["name"].rstrip("/"))
            if entry.get("type") == "file" and fnmatch.fnmatchcase(leaf, base):
                names.append(posixpath.join(folder, leaf))
        return sorted(names)

    def remove(self, name: str, missing_ok: bool = True) -> None:
        try:
            self.fs.rm_file(self._full(name))
        except FileNotFoundError:
            if not missing_ok:
                raise

    @property
    def staging_dir(self) -> Path:
        """The local folder finished files wait in before upload (the one given, else a fresh
        folder in ``$CALS_STAGING`` or the system temp folder, removed with this object)."""
        if self._staging_dir is not None:
            self._staging_dir.mkdir(parents=True, exist_ok=True)
        else:
            base = os.environ.get("CALS_STAGING") or None
            if base:
                os.makedirs(base, exist_ok=True)
            self._staging_dir = Path(tempfile.mkdtemp(prefix="cals-staging-", dir=base))
            weakref.finalize(self, shutil.rmtree, str(self._staging_dir), True)
        return self._staging_dir

    def staging_path(self, name: str) -> Path:
        return self.staging_dir / f"{uuid.uuid4().hex[:8]}-{posixpath.basename(name)}"

    def put_file(self, local_path: str | Path, name: str) -> None:
        local_path = Path(local_path)
        final = self._full(name)
        if self.atomic_put:
            self.fs.put_file(str(local_path), final)  # one PUT: the object appears complete or not at all
        else:
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            tmp = self._full(temp_name(name))
            try:
                self.fs.put_file(str(local_path), tmp)
                self.fs.mv(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.fs.rm_file(tmp)
                raise
        local_path.unlink(missing_ok=True)


def open_storage(location: "str | Path | Storage") -> Storage:
    """The :class:`Storage` of a dataset folder: ``location`` as is if already one, an
    :class:`FsspecStorage` for ``scheme://`` URLs, else a :class:`LocalStorage`."""
    if isinstance(location, Storage):
        return location
    if is_url(location):
        return FsspecStorage(str(location))
    return LocalStorage(location)
