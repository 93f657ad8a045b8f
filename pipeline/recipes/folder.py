"""Recipe for any folder of talking-face videos.

Speaker = the clip's parent folder name; split = a stable hash of the speaker, so a speaker never
crosses splits and adding clips never moves an existing speaker. When too few speakers leave a
requested split (``val`` or ``test`` > 0) empty, that split is filled by clip instead
(:func:`fill_empty_splits`, one warning line): a one-speaker folder still gets val and test
clips, at the price of the same speaker on both sides. Decodes nothing, loads no model.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path

from pipeline.manifest import ClipSource

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
SPLITS = ("train", "val", "test")
#: Characters of the readable part of a key (a hash suffix keeps keys unique).
KEY_STEM_CHARS = 80
#: ``cals-prep folder``'s ``--tracks`` / ``--scenes`` defaults (any footage: every face track
#: of each shot, one sample each, keyed ``KEY-s<scene>t<track>``); PrepParams fields.
PREP_DEFAULTS = {"tracks": "all", "scenes": True}


def stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` (SHA-1), the same on every machine and run."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def split_for_speaker(speaker: str, val: float, test: float) -> str:
    """``test`` for the first ``test`` share of the hash range, ``val`` for the next ``val``."""
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"--val {val} and --test {test} must be >= 0 and sum to < 1")
    fraction = stable_fraction(speaker)
    if fraction < test:
        return "test"
    if fraction < test + val:
        return "val"
    return "train"


def fill_empty_splits(clips: dict[str, list[ClipSource]], val: float, test: float) -> dict[str, list[ClipSource]]:
    """Give each requested split that the speaker hash left empty its share of clips (at least
    one), taken from ``train`` by a stable hash of the clip key; ``train`` keeps at least one.

    Args:
        clips: split → clips, as the speaker hash assigned them.
        val, test: the requested shares of clips (0: the split is not wanted).
    Returns:
        split → clips with the moved clips' ``split`` set; logs one warning when it moves any.
    """
    total = sum(len(found) for found in clips.values())
    missing = [split for split, share in (("test", test), ("val", val)) if share > 0 and not clips[split]]
    if not missing or len(clips["train"]) < 2:
        return clips
    pool = sorted(clips["train"], key=lambda c: stable_fraction(c.key))
    moved = {}
    for split, share in (("test", test), ("val", val)):
        if split in missing and len(pool) > 1:
            count = min(max(1, round(share * total)), len(pool) - 1)
            moved[split], pool = pool[:count], pool[count:]
    result = {**clips, "train": sorted(pool, key=lambda c: c.key)}
    for split, chosen in moved.items():
        result[split] = sorted((replace(c, split=split) for c in chosen), key=lambda c: c.key)
    speakers = len({c.speaker for found in clips.values() for c in found})
    log.warning("%d speaker%s leave%s %s empty: split by clip instead (%s of %d clips), so a speaker is in more than one split",
                speakers, "" if speakers == 1 else "s", "s" if speakers == 1 else "", " and ".join(repr(m) for m in moved),
                ", ".join(f"{len(c)} {split}" for split, c in moved.items()), total)
    return result


def make_key(relative_path: str) -> str:
    """Stable, unique, dot-free sample key from a path relative to the corpus root:
    the sanitised path (``/`` → ``__``) plus 8 hex digits of its SHA-1."""
    stem = relative_path.rsplit(".", 1)[0].replace("/", "__")
    stem = re.sub(r"[^A-Za-z0-9_\-]+", "_", stem).strip("_")[:KEY_STEM_CHARS] or "clip"
    return f"{stem}-{hashlib.sha1(relative_path.encode('utf-8')).hexdigest()[:8]}"


def find_videos(root: Path) -> list[Path]:
    """Video files under ``root`` (recursive, following links, skipping hidden names), sorted."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def prepare_folder(
    corpus_dir: str | Path, *, name: str | None = None, val: float = 0.05, test: float = 0.05
) -> dict[str, list[ClipSource]]:
    """Describe every video under ``corpus_dir``.

    Args:
        corpus_dir: the folder, searched recursively.
        name: dataset name (default: the folder's name).
        val, test: shares of speakers in the val and test splits; a share > 0 whose split the
            speakers leave empty is filled by clip (:func:`fill_empty_splits`).
    Returns:
        split → clips, each split sorted by key. Raises FileNotFoundError for a missing root.
    """
    root = Path(corpus_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    root = root.resolve()
    dataset = name or root.name
    clips: dict[str, list[ClipSource]] = {split: [] for split in SPLITS}
    for path in find_videos(root):
        relative = path.relative_to(root).as_posix()
        speaker = path.parent.name if path.parent != root else root.name
        split = split_for_speaker(speaker, val, test)
        clips[split].append(
            ClipSource(key=make_key(relative), path=str(path), dataset=dataset, split=split, speaker=speaker)
        )
    for split in clips:
        clips[split].sort(key=lambda c: c.key)
    return fill_empty_splits(clips, val, test)
