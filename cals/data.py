"""The one shard reader: WebDataset shards → decoded :class:`~cals.shard_format.ClipSample`.

Used by ``cals-prep verify``/``inspect``, the tests, and (later) the trainer. Only this module and
:mod:`cals.shard_format` know member names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import webdataset as wds

from cals.shard_format import ClipSample, decode_sample

#: File names beside the shards in a dataset folder.
MANIFEST_FILE = "manifest.parquet"
PREP_FILE = "prep.json"


def shard_paths(source: str | Path | Sequence[str], split: str | None = None) -> list[str]:
    """Resolve shards to read.

    Args:
        source: a dataset folder (``OUT/<name>``: every ``<split>-NNNNNN.tar`` in it), a brace
            pattern (``data/train-{000000..000009}.tar``), or a list of paths/URLs.
        split: with a folder, only that split's shards.
    Returns:
        Sorted shard paths/URLs. Raises FileNotFoundError when a folder holds none.
    """
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    text = str(source)
    path = Path(text)
    if path.is_dir():
        pattern = f"{split}-*.tar" if split else "*.tar"
        found = sorted(str(p) for p in path.glob(pattern) if p.is_file())
        if not found:
            which = f"{split!r} shards" if split else "shards"
            raise FileNotFoundError(f"no {which} in {path} (expected files like {pattern})")
        return found
    import braceexpand

    return list(braceexpand.braceexpand(text))


def iter_samples(
    source: str | Path | Sequence[str],
    split: str | None = None,
    frames: bool = True,
    handler: Callable[[Exception], bool] = wds.reraise_exception,
) -> Iterator[ClipSample]:
    """Yield decoded samples in shard order (no shuffling).

    Args:
        source, split: as :func:`shard_paths`.
        frames: decode the face crops (``False`` leaves ``frames`` empty: fast metadata/audio scans).
        handler: WebDataset error policy; the default re-raises (loud).
    Yields:
        ClipSample with frames ``(T,128,128,3)`` uint8, mel ``(4T,80)`` float16, audio ``(640T,)``
        int16, boxes ``(T,4)`` float32, scores ``(T,)`` float32.
    """
    urls = shard_paths(source, split)
    dataset = wds.WebDataset(urls, shardshuffle=False, handler=handler, empty_check=False)
    dataset = dataset.map(lambda raw: decode_sample(raw, frames=frames), handler=handler)
    yield from dataset
