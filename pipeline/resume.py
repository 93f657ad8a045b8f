"""Resume of a prep run: what makes a shard complete, which digest it must match, which clip a
dead worker was on, and what ``--force`` / ``--retry-failed`` remove before a re-run.

Names are those of :mod:`cals.layout`. A shard is complete when its rows part exists, carries the
digest of this run's parameters and the shard's clips (:func:`clips_digest`), lists the planned
clips in order, and (if it has ok clips) its tar exists too. Anything else is redone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Sequence

from cals.layout import MANIFEST_FILE, PARTS_DIR, marker_name, part_name, tar_name
from pipeline.manifest import ClipSource, read_metadata, read_rows
from pipeline.storage import Storage

if TYPE_CHECKING:
    from pipeline.prepare_clip import PrepParams

#: Key of the digest in a rows part's Parquet metadata.
DIGEST_KEY = "shard_digest"


def clips_digest(clips: Iterable[ClipSource], params: "PrepParams") -> str:
    """SHA-256 (hex) of the parameters and every clip's full description (key, path, split,
    span, crop, transcript, extra) and source file size (bytes, -1 when missing), in order.

    Of one shard's clips: the digest its rows part carries (a complete shard with another is
    stale). Of every clip of the run: prep.json's ``source_digest`` (another one refuses the run
    unless ``--force``)."""
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode())
    for clip in clips:
        size = os.path.getsize(clip.path) if os.path.exists(clip.path) else -1
        digest.update(json.dumps([clip.to_dict(), size], sort_keys=True, default=list).encode())
    return digest.hexdigest()


def shard_is_complete(storage: Storage, shard: str, clips: Sequence[ClipSource], params: "PrepParams") -> bool:
    """True when the shard ``shard``, planned with ``clips``, needs no work (module docstring)."""
    try:
        data = storage.read_bytes(part_name(shard)) if storage.exists(part_name(shard)) else None
    except FileNotFoundError:
        data = None
    if data is None or read_metadata(io.BytesIO(data)).get(DIGEST_KEY) != clips_digest(clips, params):
        return False
    rows = read_rows(io.BytesIO(data))
    if [r["key"] for r in rows if r["source_key"] is None] != [c.key for c in clips]:  # one row per clip, plus its tracks' rows
        return False
    has_ok = any(r["status"] == "ok" for r in rows)
    return not has_ok or storage.exists(tar_name(shard))


def has_output(storage: Storage) -> bool:
    """True when the folder holds at least one complete shard's rows part."""
    return bool(storage.glob(f"{PARTS_DIR}/*.parquet"))


def crashed_clip(storage: Storage, shard: str) -> Optional[str]:
    """The key of the clip the shard's worker was on when it died (its marker), None if unknown."""
    marker = marker_name(shard)
    try:
        return (storage.read_text(marker).strip() or None) if storage.exists(marker) else None
    except FileNotFoundError:
        return None


def remove_unplanned(storage: Storage, planned: set[str]) -> None:
    """``--force``: remove shards and rows parts no longer in the plan (shard names)."""
    for stale in storage.glob("*.tar") + storage.glob(f"{PARTS_DIR}/*.parquet"):
        if stale.rsplit("/", 1)[-1].split(".")[0] not in planned:
            storage.remove(stale)


def forget_failures(storage: Storage, shards: Mapping[str, Sequence[ClipSource]], reasons: Sequence[str]) -> None:
    """``--retry-failed``: remove the rows part of every shard (name → its planned clips) with a
    clip the last manifest records as failed for one of ``reasons``, so that shard is redone."""
    if not storage.exists(MANIFEST_FILE):
        return
    retry = {r["key"] for r in read_rows(io.BytesIO(storage.read_bytes(MANIFEST_FILE))) if r["reason"] in reasons}
    for shard, clips in shards.items():
        if any(c.key in retry for c in clips):
            storage.remove(part_name(shard))
