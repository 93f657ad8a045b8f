"""Recipe for LRS2 (BBC "Lip Reading Sentences 2", the ``lrs2_v1`` release).

Release layout (``corpus_dir`` is the folder that holds ``mvlrs_v1`` and the list files)::

    corpus_dir/
        mvlrs_v1/main/<video_id>/<utt>.mp4       160x160, 25 fps face tracks, with audio
        mvlrs_v1/main/<video_id>/<utt>.txt       "Text:  THE SENTENCE" and "Conf:  N" lines
        mvlrs_v1/pretrain/<video_id>/<utt>.mp4   longer clips for pre-training
        mvlrs_v1/pretrain/<video_id>/<utt>.txt   as above, then a blank line, the header
                                                 "WORD START END ASDSCORE" and one row per word:
                                                 "THE 0.10 0.25 4.2" (seconds from the clip start)
        train.txt val.txt test.txt pretrain.txt  one "<video_id>/<utt>" per line, optionally
                                                 followed by a flag ("6330311066473698535/00011 NF")

(Some copies keep the list files inside ``mvlrs_v1/``; they are found there too.)

Splits are the official ones, from the list files: a ``main`` clip goes to the split of the list
that names it (train/val/test), every ``pretrain`` clip goes to train. Decodes nothing and loads
no model; it only reads the list files and the small ``.txt`` transcripts. Odd files (a listed
clip without its ``.mp4``, an ``.mp4`` in no list, a ``.txt`` without a ``Text:`` line) are logged
by path and, for clips without video, skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.manifest import ClipSource
from pipeline.recipes.folder import SPLITS, make_key

log = logging.getLogger(__name__)

#: Dataset name (the output folder name by default).
LRS2_DATASET = "lrs2"
#: Folder of the release that holds the ``main`` and ``pretrain`` clip folders.
CORPUS_FOLDER = "mvlrs_v1"
#: Clip folders (subsets) of the release.
MAIN_SUBSET = "main"
PRETRAIN_SUBSET = "pretrain"
#: Values of ``subset``: one clip folder, or both.
SUBSET_CHOICES = (MAIN_SUBSET, PRETRAIN_SUBSET, "all")
#: The list file of each split of ``main``.
MAIN_LIST_FILES = {split: f"{split}.txt" for split in SPLITS}
#: The list file of ``pretrain``, and the split its clips go to.
PRETRAIN_LIST_FILE = "pretrain.txt"
PRETRAIN_SPLIT = "train"
VIDEO_SUFFIX = ".mp4"
TRANSCRIPT_SUFFIX = ".txt"
#: Prefix of the transcript line of a clip's ``.txt``.
TEXT_PREFIX = "Text:"
#: Header line of the word-timing table of a pretrain ``.txt``.
WORD_TABLE_HEADER = ("WORD", "START", "END", "ASDSCORE")


def _list_plan(subset: str) -> list[tuple[str, dict[str, str]]]:
    """``[(clip folder, {split: list file name})]`` for ``subset``."""
    if subset not in SUBSET_CHOICES:
        raise ValueError(f"--subset must be one of {', '.join(SUBSET_CHOICES)}, got {subset!r}")
    plan = []
    if subset in (MAIN_SUBSET, "all"):
        plan.append((MAIN_SUBSET, dict(MAIN_LIST_FILES)))
    if subset in (PRETRAIN_SUBSET, "all"):
        plan.append((PRETRAIN_SUBSET, {PRETRAIN_SPLIT: PRETRAIN_LIST_FILE}))
    return plan


def find_list_file(root: Path, name: str) -> Path:
    """``root/name``, else ``root/mvlrs_v1/name``; FileNotFoundError naming both if neither is a file."""
    for candidate in (root / name, root / CORPUS_FOLDER / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"LRS2 list file {name} not found: looked for {root / name} and {root / CORPUS_FOLDER / name}"
    )


def read_list(path: Path) -> list[str]:
    """Clip ids (``<video_id>/<utt>``) of an LRS2 list file, in file order.

    A line is the id, optionally followed by whitespace and a flag (``NF``, ``MV``, a duration),
    which is dropped. Blank lines are ignored; a line whose first token is not
    ``<folder>/<name>`` is logged and skipped.
    """
    ids = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        clip_id = tokens[0]
        parts = clip_id.split("/")
        if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
            log.warning("%s:%d: not a <video_id>/<utt> clip id, skipped: %r", path, number, line)
            continue
        ids.append(clip_id)
    return ids


def parse_transcript(path: Path) -> tuple[Optional[str], Optional[list[list[Any]]]]:
    """Read an LRS2 ``.txt``: ``(transcript, words)``.

    ``transcript`` is the ``Text:`` line without its prefix, stripped (None, logged, when the
    line is missing). ``words`` is the table after the ``WORD START END ASDSCORE`` header as
    ``[[word, start_s, end_s], ...]`` (seconds from the clip start; None when the file has no
    table, as in ``main``). A malformed table row is logged and left out.
    """
    transcript: Optional[str] = None
    words: Optional[list[list[Any]]] = None
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        stripped = line.strip()
        if words is not None:
            if not stripped:
                continue
            fields = stripped.split()
            try:
                words.append([fields[0], float(fields[1]), float(fields[2])])
            except (IndexError, ValueError):
                log.warning("%s:%d: malformed word-timing row, left out: %r", path, number, line)
        elif tuple(stripped.split()) == WORD_TABLE_HEADER:
            words = []
        elif transcript is None and stripped.startswith(TEXT_PREFIX):
            transcript = stripped[len(TEXT_PREFIX) :].strip()
    if transcript is None:
        log.warning("%s: no %r line; clip kept without a transcript", path, TEXT_PREFIX)
    return transcript, words


def read_transcript_beside(video: Path) -> tuple[Optional[str], Optional[list[list[Any]]]]:
    """:func:`parse_transcript` of the ``.txt`` beside ``video`` (LRS2 and LRS3 share the
    format); ``(None, None)``, logged by path, when there is none."""
    text_file = video.with_suffix(TRANSCRIPT_SUFFIX)
    if text_file.is_file():
        return parse_transcript(text_file)
    log.warning("%s is missing; clip kept without a transcript", text_file)
    return None, None


def prepare_lrs2(corpus_dir: str | Path, *, subset: str = MAIN_SUBSET) -> dict[str, list[ClipSource]]:
    """Describe the LRS2 clips of ``subset`` (``main``, ``pretrain`` or ``all``).

    Args:
        corpus_dir: the LRS2 release folder (holds ``mvlrs_v1/`` and the list files).
        subset: ``main`` (train/val/test from train.txt/val.txt/test.txt), ``pretrain`` (all in
            train, from pretrain.txt) or ``all`` (both).

    Returns:
        split → clips, each split sorted by key. A clip has dataset ``lrs2``; speaker = its
        ``<video_id>`` folder; transcript = the ``Text:`` line; ``extra`` = ``{"subset": "main" |
        "pretrain", "lrs2_id": "<video_id>/<utt>"}`` plus, for files with a timing table
        (pretrain), ``"words": [[word, start_s, end_s], ...]``. Keys come from the path relative
        to ``mvlrs_v1`` (``main__<video_id>__<utt>-<hash>``), so main and pretrain never clash.

    Raises:
        FileNotFoundError: ``corpus_dir``, ``mvlrs_v1``, a clip folder or a list file of
            ``subset`` is missing. ValueError: an unknown ``subset``.
    """
    plan = _list_plan(subset)
    root = Path(corpus_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    root = root.resolve()
    corpus = root / CORPUS_FOLDER
    if not corpus.is_dir():
        raise FileNotFoundError(f"{root} has no {CORPUS_FOLDER}/ folder: is it the LRS2 release folder?")
    # Check everything the subset needs before walking anything.
    resolved_plan = []
    for folder, list_names in plan:
        if not (corpus / folder).is_dir():
            raise FileNotFoundError(f"LRS2 clip folder {corpus / folder} is missing (needed for --subset {subset})")
        resolved_plan.append((folder, {split: find_list_file(root, name) for split, name in list_names.items()}))

    clips: dict[str, list[ClipSource]] = {split: [] for split in SPLITS}
    for folder, list_files in resolved_plan:
        listed: dict[str, str] = {}  # clip id -> split
        for split, list_file in list_files.items():
            for clip_id in read_list(list_file):
                if clip_id in listed:
                    log.warning("%s: %s is already in the %s list; kept there", list_file, clip_id, listed[clip_id])
                    continue
                listed[clip_id] = split
        for clip_id, split in listed.items():
            video = corpus / folder / f"{clip_id}{VIDEO_SUFFIX}"
            if not video.is_file():
                log.warning("%s is listed but missing; skipped", video)
                continue
            transcript, words = read_transcript_beside(video)
            extra: dict[str, Any] = {"subset": folder, "lrs2_id": clip_id}
            if words is not None:
                extra["words"] = words
            clips[split].append(
                ClipSource(
                    key=make_key(f"{folder}/{clip_id}{VIDEO_SUFFIX}"),
                    path=str(video),
                    dataset=LRS2_DATASET,
                    split=split,
                    # LRS2 has no speaker labels: the folder is a BBC programme (video) id. One
                    # programme holds several people, and a person can appear in many programmes.
                    speaker=clip_id.split("/")[0],
                    transcript=transcript,
                    extra=extra,
                )
            )
        for video in sorted((corpus / folder).rglob(f"*{VIDEO_SUFFIX}")):
            relative = video.relative_to(corpus / folder)
            if relative.with_suffix("").as_posix() not in listed:
                log.warning("%s is in no list file of --subset %s; skipped", video, subset)
    for split in clips:
        clips[split].sort(key=lambda c: c.key)
    return clips
