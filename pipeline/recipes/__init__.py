"""Corpus recipes: each walks a corpus and returns ``split → [ClipSource]``; none decodes or
loads a model. :func:`select_clips` applies ``--limit`` and ``--speakers``."""

from __future__ import annotations

from typing import Optional, Sequence

from pipeline.manifest import ClipSource


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
