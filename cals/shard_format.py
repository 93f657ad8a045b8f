"""The shard format: the contract between ``pipeline`` (writer) and ``cals`` (reader).

One WebDataset sample per source clip; documented in ``docs/shard-format.md``. Member names are
defined only here: readers use :func:`decode_sample` (:mod:`cals.data`) or the ``read_*``
functions (:mod:`cals.stream`, one window at a time); writers :func:`pack_sample` and
:func:`update_sample`. Bump :data:`FORMAT_VERSION` on any incompatible change.

Members of sample ``KEY`` (tar entries ``KEY.<member>``):

==================  ==========================================================================
``frames.mjpeg``    T baseline JPEG files concatenated; RGB 128x128 at 25 fps (``--lossless``:
                    ``frames.mpng``, T PNG files). Byte length of each in ``json.frame_sizes``.
``mel.npy``         float16 ``(4T, 80)`` log10 mel, rows 4t..4t+3 belong to frame t.
``audio.flac``      16 kHz mono 16-bit FLAC, exactly 640·T samples.
``boxes.npy``       float32 ``(T, 4)`` square crop box per frame, source pixels, x0 y0 x1 y1.
``scores.npy``      float32 ``(T,)`` detector score of the frame's own detection, 0 where the
                    box was interpolated or held (no detection on that frame).
``lip.npy``         optional (added by ``cals-prep units``): float16 ``(T, D)`` lip-motion units,
                    one per frame; ``json.lip_units`` says which model made them.
``json``            metadata (UTF-8, sorted keys), see :data:`REQUIRED_META`.
==================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Optional

import numpy as np
import soundfile

from cals.constants import (
    AUDIO_SAMPLES_PER_FRAME,
    CROP_SIZE,
    MEL_ROWS_PER_FRAME,
    N_MELS,
    SAMPLE_RATE,
)

FORMAT_VERSION = 2

#: JPEG quality of the default frame codec (measured choice: see docs/shard-format.md).
JPEG_QUALITY_DEFAULT = 95

FRAME_CODECS = {"jpeg": "frames.mjpeg", "png": "frames.mpng"}
MEL_MEMBER = "mel.npy"
AUDIO_MEMBER = "audio.flac"
BOXES_MEMBER = "boxes.npy"
SCORES_MEMBER = "scores.npy"
LIP_MEMBER = "lip.npy"
META_MEMBER = "json"

#: Keys every sample's metadata carries.
REQUIRED_META = (
    "format_version",
    "pipeline_version",
    "key",
    "source",
    "dataset",
    "split",
    "speaker",
    "transcript",
    "source_fps",
    "source_width",
    "source_height",
    "source_duration_s",
    "num_frames",
    "detector",
    "frames_detected",
    "faces_seen",
    "audio_pad_samples",
    "mel_params",
    "frame_codec",
    "frame_sizes",
    "member_sha1",
)

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


def is_valid_key(key: str) -> bool:
    """True for keys WebDataset keeps whole: letters, digits, ``_`` and ``-`` (no dots)."""
    return bool(_KEY_PATTERN.match(key))


@dataclass
class ClipSample:
    """One decoded clip.

    Attributes:
        key: sample key (unique in the dataset, no dots).
        frames: ``(T, 128, 128, 3)`` uint8 RGB face crops at 25 fps.
        mel: ``(4T, 80)`` float16 log10 mel.
        audio: ``(640T,)`` int16 mono at 16 kHz.
        boxes: ``(T, 4)`` float32 crop boxes, source pixels, x0 y0 x1 y1.
        scores: ``(T,)`` float32 detection score per frame (0 = interpolated/held).
        meta: the metadata dict (see :data:`REQUIRED_META`).
        lip: ``(T, D)`` float16 lip-motion units, or None when the shards have none yet.
    """

    key: str
    frames: np.ndarray
    mel: np.ndarray
    audio: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    lip: Optional[np.ndarray] = None

    @property
    def num_frames(self) -> int:
        """T: the decoded frames, or the metadata's count when frames were not decoded."""
        if self.frames.shape[0] or "num_frames" not in self.meta:
            return int(self.frames.shape[0])
        return int(self.meta["num_frames"])


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_load(blob: bytes) -> np.ndarray:
    """An ``.npy`` member's bytes → the array (no pickles)."""
    return np.load(io.BytesIO(blob), allow_pickle=False)


def encode_frames(frames: np.ndarray, codec: str = "jpeg", quality: int = JPEG_QUALITY_DEFAULT) -> list[bytes]:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames one image each (JPEG 4:2:0 or PNG)."""
    import cv2  # local: keeps `import cals` light

    if codec == "jpeg":
        ext, flags = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif codec == "png":
        ext, flags = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]
    else:
        raise ValueError(f"unknown frame codec {codec!r}; expected one of {sorted(FRAME_CODECS)}")
    blobs = []
    for frame in frames:
        # cvtColor, not frame[..., ::-1] made contiguous: the same BGR bytes, 0.002 ms instead of 0.15 ms a crop
        ok, encoded = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR), flags)
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode a frame as {codec}")
        blobs.append(encoded.tobytes())
    return blobs


def decode_frames(blob: bytes, sizes: list[int], indices: range | list[int] | None = None) -> np.ndarray:
    """Decode frames from a concatenated-image member.

    Args:
        blob: the ``frames.mjpeg``/``frames.mpng`` bytes.
        sizes: byte length of each image, in order (``meta["frame_sizes"]``).
        indices: which frames to decode (default all); a window decodes only its own frames.
    Returns:
        ``(len(indices), H, W, 3)`` uint8 RGB.
    """
    import cv2

    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if offsets[-1] != len(blob):
        raise ValueError(f"frame sizes sum to {offsets[-1]} bytes but the member holds {len(blob)}")
    wanted = range(len(sizes)) if indices is None else indices
    view = np.frombuffer(blob, dtype=np.uint8)
    frames = []
    for i in wanted:
        image = cv2.imdecode(view[offsets[i] : offsets[i + 1]], cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"frame {i} does not decode")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))  # contiguous RGB, as image[..., ::-1] copied, 70x faster
    if not frames:
        return np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return np.stack(frames)


def encode_audio(audio: np.ndarray) -> bytes:
    """``(N,)`` int16 mono at 16 kHz → FLAC bytes (16-bit)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_audio(blob: bytes) -> np.ndarray:
    """FLAC bytes → ``(N,)`` int16 mono; refuses any other rate or channel count."""
    audio, rate = soundfile.read(io.BytesIO(blob), dtype="int16", always_2d=True)
    if rate != SAMPLE_RATE or audio.shape[1] != 1:
        raise ValueError(f"audio member is {rate} Hz x {audio.shape[1]} ch, expected {SAMPLE_RATE} Hz mono")
    return audio[:, 0]


def encode_sample(
    sample: ClipSample, codec: str = "jpeg", quality: int = JPEG_QUALITY_DEFAULT
) -> dict[str, Any]:
    """ClipSample → WebDataset dict of bytes (``__key__`` plus members). Deterministic."""
    blobs = encode_frames(sample.frames, codec, quality)
    return pack_sample(sample.key, blobs, codec, sample.mel, sample.audio, sample.boxes, sample.scores, sample.meta, quality, sample.lip)


def pack_sample(
    key: str,
    frame_blobs: list[bytes],
    codec: str,
    mel: np.ndarray,
    audio: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    meta: Mapping[str, Any],
    quality: int = JPEG_QUALITY_DEFAULT,
    lip: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Frames already encoded one image each (:func:`encode_frames`) plus arrays → the
    WebDataset dict. The pipeline uses this to encode frames while streaming."""
    if not is_valid_key(key):
        raise ValueError(f"invalid sample key {key!r}: letters, digits, '_' and '-' only")
    meta = dict(meta)
    meta.update(
        key=key,
        format_version=FORMAT_VERSION,
        num_frames=len(frame_blobs),
        frame_codec=codec,
        frame_sizes=[len(b) for b in frame_blobs],
    )
    if codec == "jpeg":
        meta["jpeg_quality"] = int(quality)
    members = {
        FRAME_CODECS[codec]: b"".join(frame_blobs),
        MEL_MEMBER: _npy_bytes(mel.astype(np.float16)),
        AUDIO_MEMBER: encode_audio(audio),
        BOXES_MEMBER: _npy_bytes(boxes.astype(np.float32)),
        SCORES_MEMBER: _npy_bytes(scores.astype(np.float32)),
    }
    if lip is not None:
        members[LIP_MEMBER] = _npy_bytes(lip.astype(np.float16))
    meta["member_sha1"] = {name: hashlib.sha1(blob).hexdigest() for name, blob in members.items()}
    members[META_MEMBER] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"__key__": key, **members}


#: Members every sample holds besides its frames member (``FRAME_CODECS[json.frame_codec]``).
BASE_MEMBERS = (MEL_MEMBER, AUDIO_MEMBER, BOXES_MEMBER, SCORES_MEMBER)


def check_members(raw: Mapping[str, Any], skip: Collection[str] = ()) -> list[str]:
    """Integrity of a raw sample (member → bytes, as read from a shard): a valid key, a ``json``
    member that parses, every member a sample must have, and every member listed in
    ``json.member_sha1`` present with that SHA-1 (catches bit rot and truncation that decoders
    would pass silently). ``cals-prep verify`` and every reader use it.

    Args:
        raw: the WebDataset dict (``__key__`` plus member → bytes).
        skip: members whose SHA-1 is not computed (a reader that never reads them); their
            presence is still checked.
    Returns:
        The problems, one short phrase each; empty when the sample is intact.
    """
    key = raw.get("__key__")
    problems = [] if isinstance(key, str) and is_valid_key(key) else [f"invalid key {key!r} (letters, digits, '_' and '-' only)"]
    if META_MEMBER not in raw:
        return problems + [f"member {META_MEMBER} is missing"]
    try:
        meta = read_meta(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return problems + [f"member {META_MEMBER} does not parse ({error})"]
    digests = meta.get("member_sha1") if isinstance(meta, dict) else None
    if not isinstance(digests, dict):
        return problems + [f"member {META_MEMBER} holds no member_sha1 table"]
    frames = FRAME_CODECS.get(meta.get("frame_codec"))
    if frames is None:
        problems.append(f"unknown frame codec {meta.get('frame_codec')!r}")
    for name in sorted({*digests, *BASE_MEMBERS, *([frames] if frames else [])}):
        blob = raw.get(name)
        if blob is None:
            problems.append(f"member {name} is missing")
        elif name not in digests:
            problems.append(f"member {name} has no SHA-1 in json.member_sha1")
        elif name not in skip and hashlib.sha1(blob).hexdigest() != digests[name]:
            problems.append(f"member {name} fails its SHA-1 check (corrupted)")
    return problems


def update_sample(
    raw: Mapping[str, Any],
    *,
    meta: Optional[Mapping[str, Any]] = None,
    mel: Optional[np.ndarray] = None,
    audio: Optional[np.ndarray] = None,
    lip: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """A raw sample (member → bytes, as read from a shard) with some members replaced or added.

    The given arrays are encoded as :func:`pack_sample` encodes them (``mel``/``lip`` float16
    npy, ``audio`` 16-bit FLAC); every other member keeps its bytes. ``meta`` entries are merged
    into the ``json`` member, whose ``member_sha1`` is updated for the new members, so
    :func:`check_members` holds. Returns the WebDataset dict to write (``__key__`` plus
    members; other ``__*`` entries of the reader are dropped).
    """
    new_meta = read_meta(raw)
    new_meta.update(meta or {})
    members = {name: blob for name, blob in raw.items() if not name.startswith("_") and name != META_MEMBER}
    replaced = {}
    if mel is not None:
        replaced[MEL_MEMBER] = _npy_bytes(np.asarray(mel).astype(np.float16))
    if audio is not None:
        replaced[AUDIO_MEMBER] = encode_audio(np.asarray(audio, dtype=np.int16))
    if lip is not None:
        replaced[LIP_MEMBER] = _npy_bytes(np.asarray(lip).astype(np.float16))
    members.update(replaced)
    # Only the new members get a new SHA-1: an old member keeps its recorded one (a corrupt
    # member stays detectable).
    new_meta["member_sha1"] = {
        **new_meta.get("member_sha1", {}),
        **{name: hashlib.sha1(blob).hexdigest() for name, blob in replaced.items()},
    }
    members[META_MEMBER] = json.dumps(new_meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"__key__": raw["__key__"], **members}


# --- reading a raw sample (member → bytes, as WebDataset yields it) -------------------------------
# The readers (cals.data via decode_sample, cals.stream per window) use these and no member name.


def read_meta(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ``json`` member: the metadata dict (see :data:`REQUIRED_META`)."""
    return json.loads(raw[META_MEMBER])


def read_frames(raw: Mapping[str, Any], meta: Mapping[str, Any], indices: range | list[int] | None = None) -> np.ndarray:
    """Decode frames ``indices`` (default all) of the sample's frames member, whichever codec
    ``meta["frame_codec"]`` names. Returns ``(len(indices), 128, 128, 3)`` uint8 RGB."""
    member = FRAME_CODECS.get(meta["frame_codec"])
    if member is None or member not in raw:
        raise ValueError(f"sample {raw.get('__key__')!r} lacks its frames member ({meta['frame_codec']})")
    return decode_frames(raw[member], meta["frame_sizes"], indices)


def read_audio(raw: Mapping[str, Any]) -> np.ndarray:
    """The ``audio.flac`` member: ``(640T,)`` int16 mono at 16 kHz."""
    return decode_audio(raw[AUDIO_MEMBER])


def read_mel(raw: Mapping[str, Any]) -> np.ndarray:
    """The ``mel.npy`` member: ``(4T, 80)`` float16 log10 mel."""
    return npy_load(raw[MEL_MEMBER])


def read_lip(raw: Mapping[str, Any]) -> Optional[np.ndarray]:
    """The ``lip.npy`` member: ``(T, D)`` float16 lip units, or None when the sample has none."""
    return npy_load(raw[LIP_MEMBER]) if LIP_MEMBER in raw else None


def decode_sample(raw: Mapping[str, Any], frames: bool = True) -> ClipSample:
    """WebDataset raw dict (member → bytes) → ClipSample. ``frames=False`` skips image decoding
    (``frames`` is then an empty ``(0, 128, 128, 3)`` array)."""
    meta = read_meta(raw)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"sample {raw.get('__key__')!r} has shard format version {version}, this reader reads {FORMAT_VERSION}"
        )
    return ClipSample(
        key=raw["__key__"],
        frames=read_frames(raw, meta, None if frames else []),
        mel=read_mel(raw),
        audio=read_audio(raw),
        boxes=npy_load(raw[BOXES_MEMBER]),
        scores=npy_load(raw[SCORES_MEMBER]),
        meta=meta,
        lip=read_lip(raw),
    )


def mel_problems(mel: np.ndarray, num_frames: int) -> list[str]:
    """A mel array against the format: float16 ``(4T, 80)``, every value finite."""
    if mel.shape != (MEL_ROWS_PER_FRAME * num_frames, N_MELS) or mel.dtype != np.float16:
        return [f"mel {mel.shape} {mel.dtype}, expected ({MEL_ROWS_PER_FRAME * num_frames}, {N_MELS}) float16"]
    return [] if np.all(np.isfinite(mel)) else ["mel has non-finite values"]


def lip_problems(lip: np.ndarray, num_frames: int, dim: Optional[int]) -> list[str]:
    """Lip units against the format: float16 ``(T, D)`` with D = ``json.lip_units.dim``, finite."""
    if lip.shape != (num_frames, dim) or lip.dtype != np.float16:
        return [f"lip {lip.shape} {lip.dtype}, expected ({num_frames}, {dim}) float16 (json.lip_units.dim)"]
    return [] if np.all(np.isfinite(lip)) else ["lip has non-finite values"]


def check_raw(raw: Mapping[str, Any], skip: Collection[str] = ()) -> list[str]:
    """What a reader checks before it uses a raw sample (``cals.data.iter_samples`` and the
    training stream): :func:`check_members` (``skip`` as there), then ``num_frames`` (a positive
    int, one ``frame_sizes`` entry per frame) and the arrays the models read whole, mel and lip
    (:func:`mel_problems`, :func:`lip_problems`). Frames and audio are checked as they decode.
    Returns the problems, empty when the sample is usable."""
    problems = check_members(raw, skip)
    if problems:
        return problems
    meta = read_meta(raw)
    T = meta.get("num_frames")
    if type(T) is not int or T <= 0:
        return [f"num_frames {T!r} is not a positive int"]
    sizes = meta.get("frame_sizes")
    if not isinstance(sizes, list) or len(sizes) != T:
        return [f"json.frame_sizes does not list {T} frames"]
    try:
        mel, lip = read_mel(raw), read_lip(raw)
    except (ValueError, EOFError) as error:  # not an .npy file (np.load raises these)
        return [f"an array member does not load ({error})"]
    problems = mel_problems(mel, T)
    if lip is not None:
        problems += lip_problems(lip, T, (meta.get("lip_units") or {}).get("dim"))
    return problems


def check_sample(sample: ClipSample, frames_decoded: bool = True) -> list[str]:
    """Every invariant of the format; returns a list of violations (empty when the sample is good)."""
    problems = []
    meta = sample.meta
    T = meta.get("num_frames")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        problems.append(f"metadata lacks {missing}")
    if not is_valid_key(sample.key) or meta.get("key") != sample.key:
        problems.append(f"key {sample.key!r} invalid or differs from metadata key {meta.get('key')!r}")
    if not isinstance(T, int) or T <= 0:
        return problems + [f"num_frames {T!r} is not a positive int"]
    if frames_decoded:
        if sample.frames.shape != (T, CROP_SIZE, CROP_SIZE, 3) or sample.frames.dtype != np.uint8:
            problems.append(f"frames {sample.frames.shape} {sample.frames.dtype}, expected ({T}, {CROP_SIZE}, {CROP_SIZE}, 3) uint8")
    if len(meta.get("frame_sizes", [])) != T:
        problems.append(f"{len(meta.get('frame_sizes', []))} frame sizes for {T} frames")
    problems.extend(mel_problems(sample.mel, T))
    if sample.audio.shape != (AUDIO_SAMPLES_PER_FRAME * T,) or sample.audio.dtype != np.int16:
        problems.append(f"audio {sample.audio.shape} {sample.audio.dtype}, expected ({AUDIO_SAMPLES_PER_FRAME * T},) int16")
    if sample.boxes.shape != (T, 4) or sample.boxes.dtype != np.float32:
        problems.append(f"boxes {sample.boxes.shape} {sample.boxes.dtype}, expected ({T}, 4) float32")
    elif not np.all(sample.boxes[:, 2:] > sample.boxes[:, :2]):
        problems.append("a box has x1 <= x0 or y1 <= y0")
    if sample.lip is not None:
        problems.extend(lip_problems(sample.lip, T, (meta.get("lip_units") or {}).get("dim")))
    if sample.scores.shape != (T,):
        problems.append(f"scores {sample.scores.shape}, expected ({T},)")
    elif int(np.count_nonzero(sample.scores)) != meta.get("frames_detected"):
        problems.append(f"{np.count_nonzero(sample.scores)} scored frames but frames_detected={meta.get('frames_detected')}")
    return problems
