"""Recipe for LRW (BBC "Lip Reading in the Wild", 500 words).

Release layout (``corpus_dir`` is the folder that holds ``lipread_mp4``, or ``lipread_mp4``
itself)::

    lipread_mp4/<WORD>/{train,val,test}/<WORD>_NNNNN.mp4   29 frames at 25 fps (1.16 s), 256x256,
                                                           with audio; the word is centred
    lipread_mp4/<WORD>/{train,val,test}/<WORD>_NNNNN.txt   "Text: WORD", "Conf: N" and
                                                           "Duration: 0.53 seconds" (the spoken
                                                           word's length, seconds)

The clip numbers restart in each split folder, so a clip is identified by its relative path.
Decodes nothing and loads no model; reads only the small ``.txt`` files. Odd files (an ``.mp4``
outside ``<WORD>/<split>/``, or not named ``<WORD>_<digits>.mp4``) are logged by path and skipped.
The default ``--min-frames 25`` keeps LRW's 29-frame clips.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

from pipeline.manifest import ClipSource
from pipeline.recipes.folder import SPLITS, make_key

log = logging.getLogger(__name__)

#: Dataset name (the output folder name by default).
LRW_DATASET = "lrw"
#: The release's top folder.
LRW_FOLDER = "lipread_mp4"
VIDEO_SUFFIX = ".mp4"
METADATA_SUFFIX = ".txt"
#: ``Duration: 0.53 seconds`` in a clip's ``.txt``: the spoken word's duration, seconds.
DURATION_LINE = re.compile(r"^\s*Duration:\s*([0-9]*\.?[0-9]+)\s*(?:seconds?)?\s*$", re.MULTILINE)


def find_lrw_root(corpus_dir: str | Path) -> Path:
    """The ``lipread_mp4`` folder: ``corpus_dir/lipread_mp4`` if it exists, else ``corpus_dir``
    itself when it looks like one (a ``<WORD>/<split>/`` folder inside). FileNotFoundError
    otherwise."""
    root = Path(corpus_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    if (root / LRW_FOLDER).is_dir():
        return (root / LRW_FOLDER).resolve()
    if any(child.is_dir() and (child / split).is_dir() for child in root.iterdir() for split in SPLITS):
        return root.resolve()
    raise FileNotFoundError(
        f"{root} is not an LRW release: expected {root / LRW_FOLDER}/ or <WORD>/{{train,val,test}}/ folders in it"
    )


def read_word_duration(path: Path) -> Optional[float]:
    """The ``Duration: X seconds`` value of an LRW ``.txt`` (seconds), or None (logged) when
    the file has no such line."""
    match = DURATION_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        log.warning("%s: no 'Duration: X seconds' line", path)
        return None
    return float(match.group(1))


def prepare_lrw(corpus_dir: str | Path) -> dict[str, list[ClipSource]]:
    """Describe every LRW clip.

    LRW's official train/val/test splits are used as given (the split is the clip's folder).
    LRW publishes no speaker ids, so speaker-disjointness is not available for LRW: a person may
    appear in several splits, and each clip is its own "speaker" (its id,
    ``<WORD>/<split>/<WORD>_NNNNN``), which also makes ``--speakers`` select single clips.

    Returns:
        split → clips, each split sorted by key. A clip has dataset ``lrw``, transcript = the
        word, ``extra = {"label": WORD, "word_duration_s": float | None}`` (the ``.txt``'s
        ``Duration`` in seconds; None when the ``.txt`` or its line is missing). Keys are
        ``<WORD>__<split>__<WORD>_NNNNN-<hash>``.

    Raises:
        FileNotFoundError: ``corpus_dir`` is missing or is not an LRW release.
    """
    root = find_lrw_root(corpus_dir)
    clips: dict[str, list[ClipSource]] = {split: [] for split in SPLITS}
    for video in sorted(root.rglob(f"*{VIDEO_SUFFIX}")):
        relative = video.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        parts = relative.parts
        if len(parts) != 3 or parts[1] not in SPLITS:
            log.warning("%s is not at <WORD>/{train,val,test}/<WORD>_NNNNN.mp4; skipped", video)
            continue
        word, split, name = parts
        if re.fullmatch(rf"{re.escape(word)}_\d+{re.escape(VIDEO_SUFFIX)}", name) is None:
            log.warning("%s is not named %s_<digits>%s; skipped", video, word, VIDEO_SUFFIX)
            continue
        metadata = video.with_suffix(METADATA_SUFFIX)
        if metadata.is_file():
            duration = read_word_duration(metadata)
        else:
            duration = None
            log.warning("%s is missing; clip kept without word_duration_s", metadata)
        clip_id = relative.with_suffix("").as_posix()
        clips[split].append(
            ClipSource(
                key=make_key(relative.as_posix()),
                path=str(video),
                dataset=LRW_DATASET,
                split=split,
                speaker=clip_id,  # LRW has no speaker ids: one "speaker" per clip
                transcript=word,
                extra={"label": word, "word_duration_s": duration},
            )
        )
    for split in clips:
        clips[split].sort(key=lambda c: c.key)
    return clips
