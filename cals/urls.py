"""Locations that are URLs (``s3://``, ``gs://``, ``file://``...), and the fsspec filesystem that
opens them. Its own module, free of WebDataset (and so of torch), because prep's workers need it
too (:mod:`pipeline.storage`); the reader (:mod:`cals.data`) re-exports both functions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: The fsspec backend package of common object-store schemes (named in the missing-library error).
FSSPEC_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


def is_url(location: str | Path) -> bool:
    """True for ``scheme://...`` (s3://, gs://, file://, ...): a location fsspec opens, not a plain path."""
    return isinstance(location, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location) is not None


def url_filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path within it)`` for ``url``; fsspec is imported only here.

    Raises ImportError with a one-line message naming what to install when fsspec or the
    scheme's backend (s3fs, gcsfs, ...) is missing.
    """
    scheme = url.split("://", 1)[0].lower()
    backend = FSSPEC_BACKENDS.get(scheme)
    install = "pip install fsspec" + (f" {backend}" if backend else "")
    try:
        import fsspec
    except ImportError:
        raise ImportError(f"{url}: URLs need fsspec{f' and {backend}' if backend else ''}: {install}") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as error:
        raise ImportError(f"{url}: no fsspec backend for {scheme}:// ({error}): {install}") from None
    except ValueError as error:  # fsspec: "Protocol not known"
        raise ImportError(f"{url}: fsspec cannot open {scheme}:// ({error})") from None
