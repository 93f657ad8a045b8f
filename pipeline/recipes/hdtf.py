"""Recipe for HDTF (High-Definition Talking Face, Zhang et al. CVPR 2021) from raw downloads.

HDTF is published as annotations (github.com/MRzzm/HDTF, folder ``HDTF_dataset``) of YouTube
videos that each user downloads. Per group ``RD`` (radio), ``WDA`` and ``WRA`` (Democrat and
Republican addresses) the folder holds, space-separated, one line per video or clip:

``<GROUP>_video_url.txt``
    ``Radio11 https://www.youtube.com/watch?v=...``: video name (no extension) and URL.
``<GROUP>_annotion_time.txt`` (sic)
    ``Radio11.mp4 00:30-01:00 01:30-02:30``: video name, then the talking-face spans
    ``mm:ss-mm:ss`` (whole seconds). Span *i* (0-based, in line order) is the clip
    ``<name>_<i>``. Some lines end with a space; spans may overlap or be out of order.
``<GROUP>_crop_wh.txt``
    ``Radio11_0.mp4 412 599 0 599``: per *clip*, ``x width y height`` (the upstream README says
    ``min_width | width | min_height | height``; the upstream download.py reads it as
    ``x, w, y, h`` and crops ``crop=w:h:x:y``), in pixels of the video at the resolution of
    ``<GROUP>_resolution.txt``. All published crops are square. Not every clip has one: the
    authors left out noisy clips (moving hands, changing background).
``<GROUP>_resolution.txt``
    ``Radio11.mp4 720``: the frame height the crops refer to (720, 1080 or 2160).

Each annotated span with a crop becomes one :class:`ClipSource` with ``start_s``/``end_s`` and
``crop=(x, y, width, height)``; the video file is found in ``corpus_dir`` by name (recursively;
``.mp4 .mkv .webm .mov``; ``<name>.*`` or ``<GROUP>_<name>.*``, the names the upstream
download.py gives). Download the resolution in ``_resolution.txt`` (the height is kept in
``extra["annotated_height"]``): a crop that does not fit the downloaded frame fails the clip
as ``bad_window``. Videos need their audio track (download.py fetches video only).

Decodes nothing and loads no model. Odd input is logged by path and skipped: an annotated video
not found, a span without a crop, an unparsable span or crop line, a video file no annotation
names.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Optional

from pipeline.manifest import ClipSource
from pipeline.recipes.folder import SPLITS, split_for_speaker

log = logging.getLogger(__name__)

#: Dataset name (the output folder name by default).
HDTF_DATASET = "hdtf"
#: Annotation file name endings (``<GROUP><suffix>``), spelled as in the release.
TIME_SUFFIX = "_annotion_time.txt"
CROP_SUFFIX = "_crop_wh.txt"
URL_SUFFIX = "_video_url.txt"
RESOLUTION_SUFFIX = "_resolution.txt"
#: The groups of the public release (any ``<GROUP>_annotion_time.txt`` found is used).
HDTF_GROUPS = ("RD", "WDA", "WRA")
#: Video file types searched in ``corpus_dir``, in order of preference for a name found twice.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov")
SECONDS_PER_MINUTE = 60
#: Characters outside this set are replaced by ``_`` in keys.
KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")
#: Hex digits of the hash appended to a key that sanitising made collide.
KEY_HASH_CHARS = 8


def parse_timestamp(text: str) -> float:
    """``mm:ss`` (or ``h:mm:ss``; seconds may have a fraction) → seconds. ValueError if malformed."""
    fields = text.split(":")
    if not 2 <= len(fields) <= 3 or not all(fields):
        raise ValueError(f"not a mm:ss time: {text!r}")
    seconds = 0.0
    for field in fields:
        value = float(field)
        if value < 0:
            raise ValueError(f"negative time field in {text!r}")
        seconds = seconds * SECONDS_PER_MINUTE + value
    return seconds


def parse_span(text: str) -> tuple[float, float]:
    """``mm:ss-mm:ss`` → ``(start_s, end_s)``; ValueError if malformed or empty."""
    start_text, separator, end_text = text.partition("-")
    if not separator:
        raise ValueError(f"not a mm:ss-mm:ss span: {text!r}")
    start, end = parse_timestamp(start_text), parse_timestamp(end_text)
    if end <= start:
        raise ValueError(f"span {text!r} is empty (end <= start)")
    return start, end


def video_name(entry: str) -> str:
    """An annotation's first field without its video extension: ``Radio11.mp4`` → ``Radio11``."""
    for extension in VIDEO_EXTENSIONS:
        if entry.lower().endswith(extension):
            return entry[: -len(extension)]
    return entry


def read_table(path: Path) -> dict[str, list[str]]:
    """A space-separated annotation file as ``{first field: other fields}``; blank lines are
    ignored, a repeated first field is logged and its first line kept."""
    table: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] in table:
            log.warning("%s:%d: %s appears again; its first line is kept", path, number, fields[0])
            continue
        table[fields[0]] = fields[1:]
    return table


def parse_crop(fields: list[str]) -> tuple[int, int, int, int]:
    """A crop_wh row ``x width y height`` → ``(x, y, width, height)``; ValueError if malformed."""
    if len(fields) != 4:
        raise ValueError(f"expected 'x width y height', got {' '.join(fields)!r}")
    x, width, y, height = (int(field) for field in fields)
    if x < 0 or y < 0 or width <= 0 or height <= 0:
        raise ValueError(f"not a crop rectangle: {' '.join(fields)!r}")
    return x, y, width, height


def find_annotation_groups(annotations_dir: Path) -> list[str]:
    """Groups with a ``<GROUP>_annotion_time.txt`` in ``annotations_dir``, sorted; each must also
    have its ``<GROUP>_crop_wh.txt``. FileNotFoundError naming what is missing otherwise."""
    if not annotations_dir.is_dir():
        raise FileNotFoundError(f"--annotations {annotations_dir} is not a folder")
    groups = sorted(p.name[: -len(TIME_SUFFIX)] for p in annotations_dir.glob(f"*{TIME_SUFFIX}") if p.is_file())
    if not groups:
        expected = ", ".join(f"{group}{TIME_SUFFIX}" for group in HDTF_GROUPS)
        raise FileNotFoundError(
            f"no HDTF time annotations in {annotations_dir} (expected {expected}: the HDTF_dataset folder of github.com/MRzzm/HDTF)"
        )
    for group in groups:
        crop_file = annotations_dir / f"{group}{CROP_SUFFIX}"
        if not crop_file.is_file():
            raise FileNotFoundError(f"HDTF crop annotations {crop_file} are missing (needed with {group}{TIME_SUFFIX})")
    return groups


def index_videos(corpus_dir: Path) -> dict[str, Path]:
    """Video files under ``corpus_dir`` (recursive, skipping hidden names) by file stem. A stem
    found twice keeps the preferred extension (then the first path); the other is logged."""
    found: dict[str, Path] = {}
    candidates = [
        path
        for path in corpus_dir.rglob("*")
        if path.suffix.lower() in VIDEO_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(corpus_dir).parts)
        and path.is_file()
    ]
    candidates.sort(key=lambda p: (VIDEO_EXTENSIONS.index(p.suffix.lower()), p.relative_to(corpus_dir).as_posix()))
    for path in candidates:
        if path.stem in found:
            log.warning("%s has the same name as %s, which is used; skipped", path, found[path.stem])
            continue
        found[path.stem] = path
    return found


def _unique_key(text: str, used: set[str]) -> str:
    """``text`` with unsafe characters replaced by ``_``; a SHA-1 suffix if that is taken."""
    key = KEY_UNSAFE.sub("_", text).strip("_") or "clip"
    if key in used:
        key = f"{key}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:KEY_HASH_CHARS]}"
    used.add(key)
    return key


def prepare_hdtf(
    corpus_dir: str | Path, annotations_dir: str | Path, *, val: float = 0.05, test: float = 0.05
) -> dict[str, list[ClipSource]]:
    """Describe every annotated HDTF span whose raw video is in ``corpus_dir``.

    Args:
        corpus_dir: folder of downloaded HDTF videos (searched recursively).
        annotations_dir: the release's ``HDTF_dataset`` folder (see the module docstring).
        val, test: shares of speakers in the val and test splits (speaker-hashed).

    Returns:
        split → clips, each split sorted by key. A clip is one span: key ``<video>_<span index>``
        (sanitised; the HDTF clip name), ``start_s``/``end_s`` in seconds on the source clock,
        ``crop = (x, y, width, height)`` in source pixels, ``extra = {"group", "clip", "span",
        "url", "annotated_height"}`` (the last two None when their files lack the video).
        Speaker = the video name: an HDTF video shows one person, but one person can have
        several videos (``AmyKlobuchar0``, ``AmyKlobuchar1``), which are then treated as
        different speakers and can land in different splits.

    Raises:
        FileNotFoundError: a missing folder, or no time annotations / a missing crop file.
        ValueError: bad ``val``/``test``.
    """
    split_for_speaker("", val, test)  # validate the shares before walking anything
    root = Path(corpus_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    root = root.resolve()
    annotations = Path(annotations_dir).expanduser().resolve()
    groups = find_annotation_groups(annotations)
    videos = index_videos(root)
    used_videos: set[Path] = set()
    used_keys: set[str] = set()
    seen_names: dict[str, str] = {}  # video name -> group
    clips: dict[str, list[ClipSource]] = {split: [] for split in SPLITS}
    for group in groups:
        time_file = annotations / f"{group}{TIME_SUFFIX}"
        crop_file = annotations / f"{group}{CROP_SUFFIX}"
        crops = read_table(crop_file)
        url_file = annotations / f"{group}{URL_SUFFIX}"
        urls = {name: fields[0] for name, fields in read_table(url_file).items() if fields} if url_file.is_file() else {}
        resolution_file = annotations / f"{group}{RESOLUTION_SUFFIX}"
        heights = read_table(resolution_file) if resolution_file.is_file() else {}
        for entry, spans in read_table(time_file).items():
            name = video_name(entry)
            if name in seen_names:
                log.warning("%s: %s is also annotated in group %s; skipped here", time_file, name, seen_names[name])
                continue
            seen_names[name] = group
            video = videos.get(name) or videos.get(f"{group}_{name}")
            if video is None:
                log.warning(
                    "%s: video %s not found under %s (%s, also as %s_%s); its %d spans are skipped",
                    time_file, name, root, "/".join(VIDEO_EXTENSIONS), group, name, len(spans),
                )
                continue
            used_videos.add(video)
            height = _annotated_height(heights.get(entry) or heights.get(f"{name}.mp4"), resolution_file)
            for index, span_text in enumerate(spans):
                clip_name = f"{name}_{index}"
                try:
                    start_s, end_s = parse_span(span_text)
                except ValueError as error:
                    log.warning("%s: %s span %d %r skipped: %s", time_file, name, index, span_text, error)
                    continue
                crop_fields = crops.get(f"{clip_name}.mp4")
                if crop_fields is None:
                    log.warning("%s: no crop for %s (%s, span %s); skipped", crop_file, clip_name, video, span_text)
                    continue
                try:
                    crop = parse_crop(crop_fields)
                except ValueError as error:
                    log.warning("%s: crop of %s skipped: %s", crop_file, clip_name, error)
                    continue
                split = split_for_speaker(name, val, test)
                clips[split].append(
                    ClipSource(
                        key=_unique_key(clip_name, used_keys),
                        path=str(video),
                        dataset=HDTF_DATASET,
                        split=split,
                        speaker=name,
                        extra={
                            "group": group,
                            "clip": clip_name,
                            "span": span_text,
                            "url": urls.get(name),
                            "annotated_height": height,
                        },
                        start_s=start_s,
                        end_s=end_s,
                        crop=crop,
                    )
                )
    for path in sorted(set(videos.values()) - used_videos):
        log.warning("%s is in no HDTF annotation; skipped", path)
    for split in clips:
        clips[split].sort(key=lambda c: c.key)
    return clips


def _annotated_height(fields: Optional[list[str]], path: Path) -> Optional[int]:
    """The frame height of a ``_resolution.txt`` row (``["720"]``), or None (logged if malformed)."""
    if not fields:
        return None
    try:
        return int(fields[0])
    except ValueError:
        log.warning("%s: not a frame height: %r", path, " ".join(fields))
        return None

