"""Recipe for LRS3 (TED/TEDx "Lip Reading Sentences 3", the ``lrs3`` v0.4 release).

Release layout (``corpus_dir`` is the folder the three zips ``lrs3_pretrain``, ``lrs3_trainval``
and ``lrs3_test_v0.4`` were unpacked into)::

    corpus_dir/
        pretrain/<video_id>/<NNNNN>.mp4   224x224, 25 fps face tracks with audio (long utterances)
        pretrain/<video_id>/<NNNNN>.txt   "Text:  THE SENTENCE", "Conf:  N", "Ref:  <video_id>",
                                          then, after a blank line, the face-box table
                                          "FRAME X Y W H" (one row per source frame) and/or the
                                          word table "WORD START END ASDSCORE" with one row per
                                          word: "THE 0.10 0.25 4.2" (seconds from the clip start)
        trainval/<video_id>/<NNNNN>.mp4   the same for the sentence-level clips
        trainval/<video_id>/<NNNNN>.txt
        test/<video_id>/<NNNNN>.mp4       the official test set: its speakers are in neither
        test/<video_id>/<NNNNN>.txt       pretrain nor trainval

``<video_id>`` is the YouTube id of one TED talk: the speaker id here (one talk, one speaker; a
person who gave two talks counts as two speakers).

Splits. ``test/`` is the official test split. LRS3 has no official validation set: papers hold
out about a thousand trainval utterances at random (AV-HuBERT: 1,200), which puts the
same talks on both sides. Here ``val`` is carved **by speaker** instead: the talks whose stable
hash falls in the first ``val`` share (:func:`pipeline.recipes.folder.split_for_speaker`,
default :data:`LRS3_VAL_SHARE`, about 1,000 trainval utterances) go to val, the rest to train.
``pretrain`` is opt-in (``subset="pretrain"`` or ``"all"``, as LRS2's pretrain): its clips go
through the same hash, so a val talk's pretrain clips are in val too and val stays
speaker-disjoint from train.

Decodes nothing and loads no model; reads only the small ``.txt`` files. Odd files are logged
by path: an ``.mp4`` not at ``<video_id>/<NNNNN>.mp4`` is skipped, a clip without its ``.txt``
(or a ``.txt`` without a ``Text:`` line) is kept without a transcript, a ``.txt`` without its
``.mp4`` is counted in one warning. A clip folder holding ``.txt`` files but no video (the
text-only ``lrs3_v0.4_txt`` release, which needs the YouTube downloads) is an error.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pipeline.manifest import ClipSource
from pipeline.recipes import by_split, carve_val, corpus_root
from pipeline.recipes.folder import make_key, split_for_speaker
from pipeline.recipes.lrs2 import TRANSCRIPT_SUFFIX, VIDEO_SUFFIX, read_transcript_beside

log = logging.getLogger(__name__)

#: Dataset name (the output folder name by default).
LRS3_DATASET = "lrs3"
#: Clip folders of the release.
PRETRAIN_FOLDER = "pretrain"
TRAINVAL_FOLDER = "trainval"
TEST_FOLDER = "test"
#: The split of each clip folder's clips before the val carve (test is official; the others
#: are train unless their speaker hashes into val).
FOLDER_SPLIT = {PRETRAIN_FOLDER: "train", TRAINVAL_FOLDER: "train", TEST_FOLDER: "test"}
#: Values of ``subset`` and the clip folders each one reads.
SUBSET_FOLDERS = {
    TRAINVAL_FOLDER: (TRAINVAL_FOLDER, TEST_FOLDER),
    PRETRAIN_FOLDER: (PRETRAIN_FOLDER,),
    "all": (PRETRAIN_FOLDER, TRAINVAL_FOLDER, TEST_FOLDER),
}
SUBSET_CHOICES = tuple(SUBSET_FOLDERS)
DEFAULT_SUBSET = TRAINVAL_FOLDER
#: Share of the train talks (speakers) carved into val, by a stable hash of the talk id.
LRS3_VAL_SHARE = 0.03
#: A clip file name: five digits.
CLIP_NAME = re.compile(r"\d{5}")


def _clip_folders(root: Path, subset: str) -> list[Path]:
    """The clip folders ``subset`` reads; FileNotFoundError naming the first one missing."""
    if subset not in SUBSET_FOLDERS:
        raise ValueError(f"--subset must be one of {', '.join(SUBSET_CHOICES)}, got {subset!r}")
    folders = [root / name for name in SUBSET_FOLDERS[subset]]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(
                f"LRS3 clip folder {folder} is missing (--subset {subset} reads {', '.join(f'{n}/' for n in SUBSET_FOLDERS[subset])}): "
                "is --root the folder the lrs3 zips were unpacked into?"
            )
    return folders


def _walk(folder: Path) -> tuple[list[Path], int]:
    """``(the .mp4 files of folder at <video_id>/<NNNNN>.mp4, sorted; the number of .txt files
    without an .mp4 beside them)``; other ``.mp4`` files are logged and skipped."""
    videos = []
    for video in sorted(folder.rglob(f"*{VIDEO_SUFFIX}")):
        parts = video.relative_to(folder).parts
        if any(part.startswith(".") for part in parts):
            continue
        if len(parts) != 2 or CLIP_NAME.fullmatch(video.stem) is None:
            log.warning("%s is not at <video_id>/<NNNNN>%s; skipped", video, VIDEO_SUFFIX)
            continue
        videos.append(video)
    texts = [t for t in folder.glob(f"*/*{TRANSCRIPT_SUFFIX}") if not t.name.startswith(".")]
    orphans = sum(1 for t in texts if not t.with_suffix(VIDEO_SUFFIX).is_file())
    if not videos and texts:
        raise FileNotFoundError(
            f"{folder} holds {len(texts)} .txt files but no {VIDEO_SUFFIX}: the text-only LRS3 release "
            "(lrs3_v0.4_txt) needs the videos of the lrs3_pretrain/trainval/test zips"
        )
    return videos, orphans


def prepare_lrs3(
    corpus_dir: str | Path, *, subset: str = DEFAULT_SUBSET, val: float = LRS3_VAL_SHARE
) -> dict[str, list[ClipSource]]:
    """Describe the LRS3 clips of ``subset``.

    Args:
        corpus_dir: the folder holding ``pretrain/``, ``trainval/`` and ``test/``.
        subset: ``trainval`` (trainval → train/val, test → test), ``pretrain`` (pretrain →
            train/val) or ``all`` (the three folders).
        val: share of the train talks (speakers) carved into val by a stable hash (0: no val).

    Returns:
        split → clips, each split sorted by key. A clip has dataset ``lrs3``; speaker = its
        ``<video_id>`` folder (a TED talk); transcript = the ``Text:`` line; ``extra`` =
        ``{"subset": "pretrain" | "trainval" | "test", "lrs3_id": "<video_id>/<NNNNN>"}`` plus
        ``"words": [[word, start_s, end_s], ...]`` when the ``.txt`` has a word table. Keys come
        from the path relative to ``corpus_dir`` (``trainval__<video_id>__<NNNNN>-<hash>``), so
        the same id in two folders never clashes.

    Raises:
        FileNotFoundError: ``corpus_dir`` or a clip folder of ``subset`` is missing, or a clip
            folder has transcripts but no videos. ValueError: an unknown ``subset``, a bad ``val``.
    """
    split_for_speaker("", val, 0.0)  # validate the share before walking anything
    root = corpus_root(corpus_dir)
    found = []
    for folder in _clip_folders(root, subset):
        videos, orphans = _walk(folder)
        if orphans:
            log.warning("%s: %d .txt files have no %s beside them; skipped", folder, orphans, VIDEO_SUFFIX)
        for video in videos:
            speaker = video.parent.name
            transcript, words = read_transcript_beside(video)
            extra: dict[str, Any] = {"subset": folder.name, "lrs3_id": f"{speaker}/{video.stem}"}
            if words is not None:
                extra["words"] = words
            found.append(
                ClipSource(
                    key=make_key(video.relative_to(root).as_posix()),
                    path=str(video),
                    dataset=LRS3_DATASET,
                    split=carve_val(FOLDER_SPLIT[folder.name], speaker, val),
                    speaker=speaker,
                    transcript=transcript,
                    extra=extra,
                )
            )
    clips = by_split(found)
    _warn_test_overlap(clips)
    return clips


def _warn_test_overlap(clips: dict[str, list[ClipSource]]) -> None:
    """Log the talks found both in test and in train/val (the release says there are none)."""
    test_speakers = {c.speaker for c in clips["test"]}
    shared = sorted(test_speakers & {c.speaker for split in ("train", "val") for c in clips[split]})
    if shared:
        log.warning("%d LRS3 test talks also appear in pretrain/trainval (%s): test is not speaker-disjoint here",
                    len(shared), ", ".join(shared[:5]))
