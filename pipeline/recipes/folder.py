"""Recipe for any folder of talking-face videos.

Speaker = the clip's parent folder name; split = a stable hash of the speaker, so a speaker never
crosses splits and adding clips never moves an existing speaker. Decodes nothing, loads no model.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from pipeline.manifest import ClipSource

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
SPLITS = ("train", "val", "test")
#: Characters of the readable part of a key (a hash suffix keeps keys unique).
KEY_STEM_CHARS = 80


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
    return clips
