"""Write shard tars: WebDataset samples (``KEY.<member>`` entries) into one uncompressed tar.

The writer side of the shard format (:mod:`cals.shard_format` names the members). It writes
exactly the bytes ``webdataset.TarWriter(stream, mtime=0, user="cals", group="cals",
encoder=False)`` writes (``tests/cals/test_shard_tar.py`` compares them), without importing
``webdataset``: that package imports torch (``webdataset.pytorch``), 1.8 s of every prep
worker's start on the bench machine, and prep never needs torch.

Entries of one sample are written in sorted member order, each with mtime 0, mode 0o444 and
owner ``cals:cals``, in the tar module's default (PAX) format, so a re-run writes identical
bytes (resume compares nothing byte-wise, but identical output is what users check).
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO, Mapping, Union

#: Owner (user and group name) of every tar entry.
TAR_OWNER = "cals"
#: Permission bits of every tar entry (read-only, as WebDataset writes them).
TAR_MODE = 0o444

Member = Union[bytes, bytearray, memoryview, str]


class ShardTarWriter:
    """``with ShardTarWriter(stream) as tar: tar.write({"__key__": key, member: bytes, ...})``.

    ``stream`` is a binary file opened for writing (the caller owns and closes it). Members whose
    name starts with ``_`` are skipped (WebDataset's metadata convention); ``str`` values are
    written as UTF-8.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=stream, mode="w|")

    def write(self, sample: Mapping[str, Member]) -> int:
        """Append one sample; return the bytes of its members. Raises ValueError without a
        ``__key__`` or when a member is not bytes or str (before anything is written)."""
        if "__key__" not in sample:
            raise ValueError("sample must contain a __key__")
        key = sample["__key__"]
        members = {}
        for name in sorted(sample):
            if name.startswith("_"):
                continue
            value = sample[name]
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(f"member {name!r} of {key!r} is {type(value).__name__}, not bytes")
            members[name] = value
        total = 0
        for name, value in members.items():
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(value), 0, TAR_MODE
            info.uname = info.gname = TAR_OWNER
            self._tar.addfile(info, io.BytesIO(value))
            total += info.size
        return total

    def close(self) -> None:
        """Write the tar's end blocks (the stream stays open)."""
        self._tar.close()

    def __enter__(self) -> "ShardTarWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
