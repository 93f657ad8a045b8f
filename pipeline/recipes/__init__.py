"""Corpus recipes: each walks a corpus and returns ``split → [ClipSource]``; none decodes or
loads a model. :func:`select_clips` applies ``--limit`` and ``--speakers``; :func:`corpus_root`,
:func:`carve_val` and :func:`by_split` are steps the recipes share."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from pipeline.manifest import ClipSource
from pipeline.recipes.folder import SPLITS, split_for_speaker


def corpus_root(corpus_dir: str | Path) -> Path:
    """``corpus_dir`` (``~`` expanded) resolved; FileNotFoundError naming ``--root`` when it is
    not a folder."""
    root = Path(corpus_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    return root.resolve()


def carve_val(official: str, speaker: str, val: float) -> str:
    """The split of a clip of the ``official`` split: a ``train`` clip whose speaker's stable
    hash falls in the first ``val`` share goes to ``val`` (how corpora without an official val
    set get one that is speaker-disjoint from train); other splits stay as they are."""
    return split_for_speaker(speaker, val, 0.0) if official == "train" else official


def by_split(clips: Iterable[ClipSource]) -> dict[str, list[ClipSource]]:
    """``{split: clips sorted by key}`` for every split of :data:`~pipeline.recipes.folder.SPLITS`
    (empty ones too); ValueError for a clip of another split."""
    grouped: dict[str, list[ClipSource]] = {split: [] for split in SPLITS}
    for clip in clips:
        if clip.split not in grouped:
            raise ValueError(f"clip {clip.key} has split {clip.split!r}, not one of {', '.join(SPLITS)}")
        grouped[clip.split].append(clip)
    return {split: sorted(found, key=lambda c: c.key) for split, found in grouped.items()}


def select_clips(
    clips_by_split: dict[str, list[ClipSource]], *, limit: Optional[int] = None, speakers: Optional[Sequence[str]] = None
) -> dict[str, list[ClipSource]]:
    """Keep only ``speakers`` (when given), then the first ``limit`` clips of each split by key."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    wanted = {s.strip() for s in speakers if s.strip()} if speakers else None
    selected = {}
    for split, clips in clips_by_split.items():
        kept = sorted((c for c in clips if wanted is None or c.speaker in wanted), key=lambda c: c.key)
        selected[split] = kept[:limit] if limit is not None else kept
    if wanted:
        known = {c.speaker for clips in clips_by_split.values() for c in clips}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"--speakers names speakers not in the corpus: {', '.join(unknown[:10])}")
    return selected
