"""Recipe for VoxCeleb2 (Chung, Nagrani and Zisserman, Interspeech 2018), the video release.

Release layout (``corpus_dir`` is the folder holding ``dev/`` and ``test/``; the ``vox2_dev_mp4``
parts, once joined, unzip to ``dev/mp4/``, and ``vox2_test_mp4.zip`` to ``mp4/``, to be put in
``test/``)::

    corpus_dir/
        dev/mp4/<idNNNNN>/<video>/<NNNNN>.mp4    224x224, 25 fps face tracks with audio;
                                                 <idNNNNN> a celebrity (5,994 in dev),
                                                 <video> the YouTube id it was cut from
        test/mp4/<idNNNNN>/<video>/<NNNNN>.mp4   the official test set (118 other people)
        dev/aac/..., test/aac/...                the audio-only release (.m4a): optional,
                                                 not read (the .mp4 files carry their audio)

Speaker = the ``idNNNNN`` folder (a person: dev and test share none). Splits: ``test/`` is the
official test split; ``dev/`` is train except a ``val`` share of speakers carved by a stable hash
of the id (:func:`pipeline.recipes.folder.split_for_speaker`, default :data:`VOX2_VAL_SHARE`,
about as many people as test), so val is speaker-disjoint from train. No transcripts.

Decodes nothing and loads no model. Odd files are logged by path and skipped: an ``.mp4`` not
at ``<idNNNNN>/<video>/<clip>.mp4``, or under a speaker folder not named ``id`` + digits.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pipeline.manifest import ClipSource
from pipeline.recipes import by_split, carve_val, corpus_root
from pipeline.recipes.folder import make_key, split_for_speaker

log = logging.getLogger(__name__)

#: Dataset name (the output folder name by default).
VOX2_DATASET = "voxceleb2"
#: The release's parts, the split of each one's clips before the val carve, and the folder
#: inside a part that holds the videos (beside the optional audio-only ``aac``).
DEV_PART = "dev"
TEST_PART = "test"
PART_SPLIT = {DEV_PART: "train", TEST_PART: "test"}
VIDEO_FOLDER = "mp4"
AUDIO_FOLDER = "aac"
VIDEO_SUFFIX = ".mp4"
#: Values of ``subset`` and the parts each one reads.
SUBSET_PARTS = {"all": (DEV_PART, TEST_PART), DEV_PART: (DEV_PART,), TEST_PART: (TEST_PART,)}
SUBSET_CHOICES = tuple(SUBSET_PARTS)
DEFAULT_SUBSET = "all"
#: Share of the dev speakers carved into val by a stable hash of their id (~120 of 5,994 people,
#: about the size of the official test set).
VOX2_VAL_SHARE = 0.02
#: A VoxCeleb speaker folder: ``id`` and digits (``id00012``).
SPEAKER_ID = re.compile(r"id\d+")


def _video_folders(root: Path, subset: str) -> list[tuple[str, Path]]:
    """``[(part, part/mp4 folder)]`` of ``subset``; FileNotFoundError naming what is missing."""
    if subset not in SUBSET_PARTS:
        raise ValueError(f"--subset must be one of {', '.join(SUBSET_CHOICES)}, got {subset!r}")
    folders = []
    for part in SUBSET_PARTS[subset]:
        videos = root / part / VIDEO_FOLDER
        if not videos.is_dir():
            hint = (
                f"only the audio-only {part}/{AUDIO_FOLDER}/ is there: unzip the vox2_{part}_mp4 release into {videos}"
                if (root / part / AUDIO_FOLDER).is_dir()
                else f"is --root the folder holding {', '.join(f'{p}/' for p in SUBSET_PARTS['all'])}? "
                f"(--subset {DEV_PART} or {TEST_PART} reads one part)"
            )
            raise FileNotFoundError(f"VoxCeleb2 video folder {videos} is missing (needed for --subset {subset}): {hint}")
        folders.append((part, videos))
    return folders


def prepare_voxceleb2(
    corpus_dir: str | Path, *, subset: str = DEFAULT_SUBSET, val: float = VOX2_VAL_SHARE
) -> dict[str, list[ClipSource]]:
    """Describe the VoxCeleb2 clips of ``subset``.

    Args:
        corpus_dir: the folder holding ``dev/mp4/`` and ``test/mp4/``.
        subset: ``all`` (dev → train/val, test → test), ``dev`` or ``test`` (one part).
        val: share of the dev speakers carved into val by a stable hash (0: no val).

    Returns:
        split → clips, each split sorted by key. A clip has dataset ``voxceleb2``; speaker = its
        ``idNNNNN`` folder; no transcript; ``extra`` = ``{"subset": "dev" | "test",
        "voxceleb2_id": "<idNNNNN>/<video>/<clip>", "video": "<video>"}``. Keys come from the path
        relative to ``corpus_dir`` (``dev__mp4__id00012__<video>__00001-<hash>``).

    Raises:
        FileNotFoundError: ``corpus_dir`` or the ``<part>/mp4`` folder of a part of ``subset``
            is missing. ValueError: an unknown ``subset``, a bad ``val``.
    """
    split_for_speaker("", val, 0.0)  # validate the share before walking anything
    root = corpus_root(corpus_dir)
    found = []
    for part, videos in _video_folders(root, subset):
        for video in sorted(videos.rglob(f"*{VIDEO_SUFFIX}")):
            parts = video.relative_to(videos).parts
            if any(p.startswith(".") for p in parts):
                continue
            if len(parts) != 3:
                log.warning("%s is not at <idNNNNN>/<video>/<clip>%s; skipped", video, VIDEO_SUFFIX)
                continue
            speaker, source_video, _ = parts
            if SPEAKER_ID.fullmatch(speaker) is None:
                log.warning("%s: speaker folder %r is not id + digits; skipped", video, speaker)
                continue
            found.append(
                ClipSource(
                    key=make_key(video.relative_to(root).as_posix()),
                    path=str(video),
                    dataset=VOX2_DATASET,
                    split=carve_val(PART_SPLIT[part], speaker, val),
                    speaker=speaker,
                    extra={
                        "subset": part,
                        "voxceleb2_id": f"{speaker}/{source_video}/{video.stem}",
                        "video": source_video,
                    },
                )
            )
    return by_split(found)
