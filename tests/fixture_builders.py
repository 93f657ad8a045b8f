"""Builders of test and benchmark media from the shared fixture clips (ffmpeg, argument lists,
no shell): looped corpora, a long 720p clip, a fake LRS2 release tree, and small release trees of
real clips for the other recipes (LRS3, VoxCeleb2: :func:`build_release_tree`).

Used by ``bench/prep.py`` and by the tests (``tests/cli/test_recipes_cli.py``), so both measure
and check the same inputs.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cals.constants import FPS
from pipeline.errors import ClipError
from pipeline.io import probe
from pipeline.recipes.folder import SPLITS, prepare_folder
from pipeline.recipes.lrs2 import CORPUS_FOLDER, MAIN_LIST_FILES, MAIN_SUBSET

#: Size of the long clip of the memory test (the fixture scaled and padded to it).
LONG_WIDTH, LONG_HEIGHT = 1280, 720
#: Accept a stream-copied loop whose duration is at least this share of the one asked for.
LOOP_DURATION_TOLERANCE = 0.9

#: The fake LRS2 main tree: clips of this length, cut from the fixtures in order (looped when a
#: fixture runs out), 160x160 like the release, this many clips per <video_id> folder.
LRS2_CLIP_SECONDS = 2.0
LRS2_SIZE = 160
LRS2_CLIPS_PER_FOLDER = 10
#: Folder names: 19-digit numbers like the release's BBC programme ids.
LRS2_FOLDER_ID_BASE = 6_000_000_000_000_000_000
#: Split of the i-th clip: i % LRS2_SPLIT_EVERY == LRS2_SPLIT_SLOTS[split] for val and test, else
#: train. Test lines carry a flag as in the release ("<video_id>/<utt> NF").
LRS2_SPLIT_EVERY = 10
LRS2_SPLIT_SLOTS = {"val": 8, "test": 9}
LRS2_TEST_FLAG = "NF"
LRS2_TEXT = "Text:  {text}\nConf:  {conf}\n"
LRS2_WORDS = ("THE", "PEOPLE", "WHO", "WORK", "HERE", "KNOW", "WHAT", "THEY", "ARE", "DOING", "EVERY", "DAY")
#: Encoder settings of the LRS2 clips: H.264 as below, AAC 16 kHz mono, a keyframe at every cut.
LRS2_AAC_ARGS = ["-c:a", "aac", "-b:a", "64k", "-ar", "16000", "-ac", "1"]

#: Encoder settings for every clip these builders have to (re-)encode.
X264_ARGS = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
AAC_ARGS = ["-c:a", "aac", "-b:a", "128k"]
FFMPEG_BASE = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y"]


@dataclass(frozen=True)
class Lrs2Tree:
    """The fake LRS2 release: its folder, clips per split, ``<video_id>`` folders and seconds."""

    root: Path
    split_counts: dict[str, int]
    folders: int
    seconds: float

    @property
    def clips(self) -> int:
        return sum(self.split_counts.values())


def run_ffmpeg(args: Sequence[str]) -> None:
    """Run ffmpeg with an argument list (no shell); raise RuntimeError with its stderr on failure."""
    result = subprocess.run([*FFMPEG_BASE, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")


def loop_clip(source: Path, target: Path, seconds: float, reencode: bool) -> None:
    """Write ``source`` looped to ``seconds`` into ``target`` (stream copy or H.264/AAC), atomically."""
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    codec = [*X264_ARGS, *AAC_ARGS] if reencode else ["-c", "copy"]
    run_ffmpeg(["-stream_loop", "-1", "-i", str(source), "-t", f"{seconds:.3f}", *codec, str(tmp)])
    os.replace(tmp, target)


def loop_is_usable(path: Path, seconds: float) -> bool:
    """True when ffprobe reads ``path`` and it lasts about ``seconds``."""
    try:
        return probe(path).duration_s >= LOOP_DURATION_TOLERANCE * seconds
    except ClipError:
        return False


def build_corpus(fixtures: list[Path], corpus: Path, minutes: float) -> float:
    """Loop every fixture to an equal length so the corpus holds >= ``minutes`` of video.

    Layout ``corpus/<speaker>/<speaker>_loop.mp4`` with the fixture's stem as speaker.
    Returns the seconds of each clip.
    """
    seconds = float(math.ceil(minutes * 60 / len(fixtures)))
    if corpus.exists():
        shutil.rmtree(corpus)
    for fixture in fixtures:
        folder = corpus / fixture.stem
        folder.mkdir(parents=True)
        target = folder / f"{fixture.stem}_loop.mp4"
        loop_clip(fixture, target, seconds, reencode=False)
        if not loop_is_usable(target, seconds):
            loop_clip(fixture, target, seconds, reencode=True)
    return seconds


def build_long_clip(fixture: Path, folder: Path, minutes: float) -> Path:
    """A ``minutes``-long 1280x720 25 fps H.264/AAC talking-face clip (reused if already built).

    One loop of ``fixture`` is scaled, padded and encoded once, then stream-copied in a loop.
    """
    seconds = minutes * 60
    target = folder / f"long_{LONG_WIDTH}x{LONG_HEIGHT}_{seconds:.0f}s.mp4"
    if target.is_file() and loop_is_usable(target, seconds):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    segment = folder / f"segment_{LONG_WIDTH}x{LONG_HEIGHT}.mp4"
    scale_pad = (
        f"scale={LONG_WIDTH}:{LONG_HEIGHT}:force_original_aspect_ratio=decrease,"
        f"pad={LONG_WIDTH}:{LONG_HEIGHT}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={FPS}"
    )
    run_ffmpeg(["-i", str(fixture), "-vf", scale_pad, *X264_ARGS, *AAC_ARGS, str(segment)])
    loop_clip(segment, target, seconds, reencode=False)
    if not loop_is_usable(target, seconds):
        loop_clip(segment, target, seconds, reencode=True)
    return target


def corpus_videos(corpus: Path) -> list[Path]:
    """The corpus clips, in the order prepare_folder lists them."""
    clips = prepare_folder(corpus, val=0, test=0)
    return [Path(c.path) for split in clips.values() for c in split]


def lrs2_transcript(index: int) -> str:
    """A made-up upper-case sentence of 3 to 6 words for the ``index``-th clip (deterministic)."""
    count = 3 + index % 4
    return " ".join(LRS2_WORDS[(index * 5 + k) % len(LRS2_WORDS)] for k in range(count))


def lrs2_split(index: int) -> str:
    """The split of the ``index``-th clip: val or test once every LRS2_SPLIT_EVERY clips, else train."""
    slot = index % LRS2_SPLIT_EVERY
    return next((split for split, wanted in LRS2_SPLIT_SLOTS.items() if slot == wanted), "train")


def cut_pieces(
    fixture: Path, folder: Path, pieces: int, *, size: int = LRS2_SIZE, seconds: float = LRS2_CLIP_SECONDS
) -> list[Path]:
    """Cut ``fixture`` (looped when it runs out) into ``pieces`` consecutive ``seconds``-long
    face-track-like clips (LRS2's by default).

    One ffmpeg pass into the new ``folder``: the centre square scaled to ``size``², 25 fps H.264
    with a keyframe at every cut, AAC 16 kHz mono, split by the segment muxer. Returns the pieces
    in order; raises RuntimeError when ffmpeg made fewer.
    """
    folder.mkdir(parents=True)
    square = f"crop='min(iw,ih)':'min(iw,ih)',scale={size}:{size},setsar=1,fps={FPS}"
    run_ffmpeg(
        [
            "-stream_loop", "-1", "-i", str(fixture), "-t", f"{pieces * seconds:.3f}",
            "-vf", square, "-force_key_frames", f"expr:gte(t,n_forced*{seconds:g})",
            *X264_ARGS, *LRS2_AAC_ARGS,
            "-f", "segment", "-segment_time", f"{seconds:g}", "-segment_format", "mp4",
            "-reset_timestamps", "1", str(folder / "piece_%05d.mp4"),
        ]
    )
    found = sorted(folder.glob("piece_*.mp4"))
    if len(found) < pieces:
        raise RuntimeError(f"ffmpeg cut {fixture} into {len(found)} pieces, {pieces} were asked for")
    return found[:pieces]  # a last sliver past -t, if any, stays behind and is removed with the folder


def check_piece(path: Path, seconds: float = LRS2_CLIP_SECONDS) -> float:
    """The seconds of one cut clip; RuntimeError unless it is about ``seconds`` long with audio."""
    info = probe(path)
    if info.duration_s < LOOP_DURATION_TOLERANCE * seconds or not info.has_audio:
        raise RuntimeError(f"{path}: {info.duration_s:.2f} s, audio {info.has_audio}: not a usable {seconds:g}-s clip")
    return info.duration_s


def build_lrs2_tree(fixtures: list[Path], root: Path, clips: int) -> Lrs2Tree:
    """A fake LRS2 release in ``root`` (rebuilt): ``clips`` clips in ``mvlrs_v1/main`` plus lists.

    The fixtures share the clips equally (first ones take the remainder); each is cut into
    consecutive LRS2_CLIP_SECONDS pieces, LRS2_CLIPS_PER_FOLDER to a ``<video_id>`` folder, each
    with a ``.txt`` (``Text:`` and ``Conf:`` lines), and every clip is listed in train.txt,
    val.txt or test.txt (see lrs2_split), as prepare_lrs2 reads them.
    """
    if root.exists():
        shutil.rmtree(root)
    main = root / CORPUS_FOLDER / MAIN_SUBSET
    staging = root / "pieces"
    lists: dict[str, list[str]] = {split: [] for split in SPLITS}
    index = folders = 0
    seconds = 0.0
    for number, fixture in enumerate(fixtures):
        count = clips // len(fixtures) + (1 if number < clips % len(fixtures) else 0)
        if count == 0:
            continue
        pieces = cut_pieces(fixture, staging / fixture.stem, count)
        for start in range(0, count, LRS2_CLIPS_PER_FOLDER):
            video_id = str(LRS2_FOLDER_ID_BASE + folders)
            folders += 1
            (main / video_id).mkdir(parents=True)
            for utt, piece in enumerate(pieces[start : start + LRS2_CLIPS_PER_FOLDER], start=1):
                seconds += check_piece(piece)
                clip_id = f"{video_id}/{utt:05d}"
                os.replace(piece, main / f"{clip_id}.mp4")
                text = LRS2_TEXT.format(text=lrs2_transcript(index), conf=2 + index % 5)
                (main / f"{clip_id}.txt").write_text(text, encoding="utf-8")
                split = lrs2_split(index)
                lists[split].append(f"{clip_id} {LRS2_TEST_FLAG}" if split == "test" else clip_id)
                index += 1
    shutil.rmtree(staging)
    for split, name in MAIN_LIST_FILES.items():
        (root / name).write_text("".join(f"{line}\n" for line in lists[split]), encoding="utf-8")
    return Lrs2Tree(root, {split: len(lines) for split, lines in lists.items()}, folders, seconds)



def lrs3_text(transcript: str, ref: str) -> str:
    """An LRS3 ``.txt`` for ``transcript``: ``Text:``/``Conf:``/``Ref:`` lines, a two-row
    ``FRAME X Y W H`` face-box table and a ``WORD START END ASDSCORE`` table (words 0.3 s apart)."""
    words = "".join(f"{word} {0.3 * i:.2f} {0.3 * i + 0.25:.2f} 5.0\n" for i, word in enumerate(transcript.split()))
    frames = "000001 \t0.400 0.200 0.200 0.300 \n000002 \t0.401 0.200 0.200 0.300 \n"
    return f"Text:  {transcript}\nConf:  3\nRef:   {ref}\n\nFRAME X Y W H\n{frames}\nWORD START END ASDSCORE\n{words}"


def build_release_tree(
    fixture: Path, root: Path, clips: Sequence[tuple[str, Optional[str]]], *, size: int, seconds: float
) -> list[Path]:
    """A fake corpus release in ``root`` (rebuilt) with real clips: consecutive ``seconds``-long
    ``size``² pieces of ``fixture`` (:func:`cut_pieces`), one per ``(relative .mp4 path,
    transcript)``; a transcript that is not None is written beside its clip as an LRS3 ``.txt``
    (:func:`lrs3_text`, ``Ref:`` = the clip's folder). Returns the clips' paths in order."""
    if root.exists():
        shutil.rmtree(root)
    staging = root.parent / f".{root.name}.pieces"
    if staging.exists():
        shutil.rmtree(staging)
    pieces = cut_pieces(fixture, staging, len(clips), size=size, seconds=seconds)
    placed = []
    for piece, (relative, transcript) in zip(pieces, clips):
        check_piece(piece, seconds)
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(piece, target)
        if transcript is not None:
            target.with_suffix(".txt").write_text(lrs3_text(transcript, target.parent.name), encoding="utf-8")
        placed.append(target)
    shutil.rmtree(staging)
    return placed


def split_in_time(samples, folder: Path, share: float, held_out: str = "val") -> None:
    """Write ``samples`` (:class:`cals.shard_format.ClipSample`) cut in time into one shard per
    split under ``folder``: frames ``[0, int(share·T))`` of each clip in ``train``, the rest in
    ``held_out`` (PNG frames: lossless), so a model is evaluated on frames of the same clips it
    never trained on."""
    import webdataset as wds

    from cals.constants import AUDIO_SAMPLES_PER_FRAME, MEL_ROWS_PER_FRAME
    from cals.shard_format import ClipSample, encode_sample

    folder.mkdir(parents=True)
    writers = {split: wds.TarWriter(str(folder / f"{split}-000000.tar"), encoder=False) for split in ("train", held_out)}
    try:
        for sample in samples:
            cut = int(share * sample.num_frames)
            for split, first, last in (("train", 0, cut), (held_out, cut, sample.num_frames)):
                part = ClipSample(key=sample.key, frames=sample.frames[first:last],
                                  mel=sample.mel[MEL_ROWS_PER_FRAME * first : MEL_ROWS_PER_FRAME * last],
                                  audio=sample.audio[AUDIO_SAMPLES_PER_FRAME * first : AUDIO_SAMPLES_PER_FRAME * last],
                                  boxes=sample.boxes[first:last], scores=sample.scores[first:last],
                                  meta={**sample.meta, "split": split}, lip=None if sample.lip is None else sample.lip[first:last])
                writers[split].write(encode_sample(part, codec="png"))
    finally:
        for writer in writers.values():
            writer.close()
