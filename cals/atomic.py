"""Local files that appear complete or not at all: write a hidden temp file beside the target,
fsync it, then ``os.replace`` it over the target (atomic on one filesystem).

The one home of the temp-name pattern, ``.NAME.tmp-XXXXXXXX`` (:data:`TEMP_GLOB`), which the
cleaners of an interrupted run look for (:data:`cals.layout.PREP_TEMP_GLOBS`). Used by prep's
local storage, the shard rewrites and the training checkpoints.
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: Glob of the temp files :func:`temp_name` makes (one folder level).
TEMP_GLOB = ".*.tmp-*"
#: Held while a group of files that must appear together is published (a shard's rows part
#: and its tar). Whatever ends this process on purpose (the Ray workers' driver watchdog) takes
#: it first, so a worker stopped because its driver died never leaves half a group behind,
#: e.g. a rows part whose tar it had just removed, while a re-run writes the same shard.
PUBLISH_LOCK = threading.Lock()


def temp_name(name: str) -> str:
    """``dir/.base.tmp-XXXXXXXX`` for the ``/``-separated ``dir/base``: hidden, unique, beside it."""
    folder, base = posixpath.split(name)
    return posixpath.join(folder, f".{base}.tmp-{uuid.uuid4().hex[:8]}")


def temp_path(path: str | Path) -> Path:
    """A fresh :func:`temp_name` beside the local file ``path``."""
    path = Path(path)
    return path.with_name(temp_name(path.name))


def publish(tmp: str | Path, path: str | Path) -> None:
    """fsync the finished local file ``tmp`` and rename it over ``path`` (same folder)."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """``with atomic_write(path) as tmp: write tmp`` → ``path`` holds the new content at the end
    of the block, or its old one (the temp file is removed if the block raises). ``path`` gets
    the permission bits of an ordinary new file (``0o666`` less the umask), whatever the writer
    created ``tmp`` with (safetensors writes ``0o600``)."""
    tmp = temp_path(path)
    try:
        open(tmp, "x").close()  # created as open() creates any file: the mode the umask gives
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        os.chmod(tmp, mode)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
