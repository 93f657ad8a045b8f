"""The one shard reader: WebDataset shards → decoded :class:`~cals.shard_format.ClipSample`.

Used by ``cals-prep verify``/``inspect``, the tests, and the trainer's scans (lip-unit spec, mean
unit). Samples are decoded by :func:`cals.shard_format.decode_sample`; the training stream
(:mod:`cals.stream`) reads one window at a time through the same ``shard_format.read_*``
functions, so member names live in :mod:`cals.shard_format` alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import webdataset as wds

from cals.shard_format import FRAME_CODECS, ClipSample, check_raw, decode_sample
from cals.urls import is_url, url_filesystem

log = logging.getLogger(__name__)


class BadData(ValueError):
    """A sample that fails the reader's checks, an unreadable shard, or a stream left with no
    usable sample. The message is one line naming the shard (and the sample's key).

    Raised in a DataLoader worker, it reaches the trainer rebuilt by torch from the worker's whole
    traceback text; only that text's last line (``cals.data.BadData: <message>``) is kept.
    """

    def __init__(self, message: str) -> None:
        lines = str(message).strip().splitlines() or [""]
        super().__init__(lines[-1].removeprefix(f"{__name__}.{type(self).__qualname__}: "))


def describe_error(error: BaseException) -> str:
    """``Type: message`` of an error WebDataset passed on, without what it appended (the stream
    and URL arguments, the `` @ <file object>`` suffix)."""
    text = str(error.args[0]).split(" @ ", 1)[0] if error.args else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def sample_name(raw: dict) -> str:
    """``<shard>:<key>`` of a raw sample, for messages."""
    return f"{raw.get('__url__', '?')}:{raw.get('__key__')!r}"


def checked_sample(raw: dict, frames: bool = True) -> ClipSample:
    """A raw sample decoded after :func:`cals.shard_format.check_raw`; raises BadData naming the
    shard and key otherwise. ``frames=False``: the frames member is neither hashed nor decoded."""
    problems = check_raw(raw, skip=() if frames else tuple(FRAME_CODECS.values()))
    if problems:
        raise BadData(f"bad sample {sample_name(raw)}: {'; '.join(problems)}")
    try:
        return decode_sample(raw, frames=frames)
    except (ValueError, RuntimeError) as error:  # an image or the FLAC does not decode
        raise BadData(f"bad sample {sample_name(raw)}: does not decode ({error})") from None


def skip_with_warning(error: Exception) -> bool:
    """A ``handler`` for :func:`iter_samples`: log the one-line error as a warning and go on."""
    log.warning("skipped %s", error)
    return True


def read_shard(url: str, on_error: Callable[[Exception], None]) -> Iterator[dict]:
    """The raw samples of one shard, read with WebDataset's tar stages. An error reading the tar
    (not a tar, a smashed header, truncated) is handed to ``on_error`` as one BadData naming the
    file, and the rest of the shard is skipped (a tar stream cannot resynchronise)."""

    def handler(error: Exception) -> bool:
        on_error(BadData(f"unreadable shard {url}: {describe_error(error)}"))
        return False

    yield from wds.tarfile_samples([dict(url=url)], handler=handler)

#: URL schemes WebDataset opens itself (curl); every other ``scheme://`` is opened with fsspec.
WDS_SCHEMES = ("http", "https")


def _opened_with_fsspec(url: str) -> bool:
    return is_url(url) and url.split("://", 1)[0].lower() not in WDS_SCHEMES


def _no_shards(folder: str, split: str | None, pattern: str, tars: Iterable[Any]) -> str:
    """The error for a folder without the wanted shards, naming the splits it does hold."""
    which = f"{split!r} shards" if split else "shards"
    present = sorted({Path(str(t)).name.rsplit("-", 1)[0] for t in tars})
    holds = f"; it holds {', '.join(repr(s) for s in present)}" if present else ""
    return f"no {which} in {folder} (expected files like {pattern}){holds}"


def shard_paths(source: str | Path | Sequence[str], split: str | None = None) -> list[str]:
    """Resolve shards to read.

    Args:
        source: a dataset folder (``OUT/<name>``: every ``<split>-NNNNNN.tar`` in it; a local path
            or an fsspec URL such as ``s3://bucket/shards/videos``), a brace pattern
            (``data/train-{000000..000009}.tar``), or a list of paths/URLs.
        split: with a folder, only that split's shards.
    Returns:
        Sorted shard paths/URLs. Raises FileNotFoundError when a folder holds none.
    """
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    text = str(source)
    pattern = f"{split}-*.tar" if split else "*.tar"
    if _opened_with_fsspec(text) and "{" not in text:
        fs, root = url_filesystem(text)
        if fs.isdir(root):
            found = sorted(fs.unstrip_protocol(p) for p in fs.glob(f"{root.rstrip('/')}/{pattern}"))
            if not found:
                raise FileNotFoundError(_no_shards(text, split, pattern, fs.glob(f"{root.rstrip('/')}/*.tar")))
            return found
    path = Path(text)
    if not is_url(text) and path.is_dir():
        found = sorted(str(p) for p in path.glob(pattern) if p.is_file())
        if not found:
            raise FileNotFoundError(_no_shards(str(path), split, pattern, path.glob("*.tar")))
        return found
    import braceexpand

    return list(braceexpand.braceexpand(text))


def every_shard(urls):
    """Node splitter of a full scan: every rank reads every shard (iter_samples is not a
    training stream; the trainer's stream splits shards by rank in cals.stream)."""
    return urls


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
        handler: WebDataset error policy for a bad sample (:func:`checked_sample`) or an unreadable
            shard, each given as one BadData naming the shard (and key); the default re-raises
            (loud), ``wds.warn_and_continue`` skips with a warning.
    Yields:
        ClipSample with frames ``(T,128,128,3)`` uint8, mel ``(4T,80)`` float16, audio ``(640T,)``
        int16, boxes ``(T,4)`` float32, scores ``(T,)`` float32.
    """
    urls = shard_paths(source, split)
    decode = lambda raw: checked_sample(raw, frames=frames)  # noqa: E731
    handler = _one_line(handler)
    if any(_opened_with_fsspec(u) for u in urls):
        # WebDataset's stages with an fsspec opener (webdataset 1.0.2 cannot open s3:// itself).
        from webdataset.filters import pipelinefilter
        from webdataset.tariterators import group_by_keys, tar_file_expander

        yield from wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.single_node_only,
            wds.split_by_worker,
            _fsspec_opener(handler),
            pipelinefilter(tar_file_expander)(handler=handler),
            pipelinefilter(group_by_keys)(handler=handler),
            wds.map(decode, handler=handler),
        )
        return
    dataset = wds.WebDataset(urls, shardshuffle=False, handler=handler, empty_check=False, nodesplitter=every_shard)
    yield from dataset.map(decode, handler=handler)


def _one_line(handler: Callable[[Exception], bool]) -> Callable[[Exception], bool]:
    """``handler`` given every error as one BadData line: a WebDataset tar-stage error names the
    shard (the URL WebDataset appends last); a BadData passes unchanged."""

    def wrapped(error: Exception) -> bool:
        if not isinstance(error, BadData):
            url = next((a for a in reversed(error.args) if isinstance(a, str) and a.endswith(".tar")), "?")
            error = BadData(f"unreadable shard {url}: {describe_error(error)}")
        return handler(error)

    return wrapped


def _fsspec_opener(handler: Callable[[Exception], bool]) -> Callable[[Iterator[dict]], Iterator[dict]]:
    """A WebDataset stage: ``{url}`` → ``{url, stream}``, fsspec URLs opened with fsspec (closed
    once their tar is read), others with WebDataset's own ``gopen``."""

    def opener(sources: Iterator[dict]) -> Iterator[dict]:
        for source in sources:
            url = source["url"]
            try:
                if _opened_with_fsspec(url):
                    fs, path = url_filesystem(url)
                    stream = fs.open(path, "rb")
                else:
                    stream = wds.gopen(url)
            except Exception as error:  # noqa: BLE001 - the caller's handler decides
                error.args = error.args + (url,)
                if handler(error):
                    continue
                break
            try:
                yield dict(url=url, stream=stream)
            finally:
                stream.close()

    return opener
