"""Streaming training data: shards → shuffled, windowed, augmented, collated batches.

Shared by every ``cals-train`` command. A chain of small WebDataset stages, shuffled *before*
decoding (the buffer holds compressed samples), decoding only the frames of the window used:

    shards (resampled, or split by rank then by worker)
      → tar samples → check (member SHA-1s, mel/lip) → shuffle(buffer) → check compatibility
      → random window (decode)
        [+ one reference frame from outside the window] [+ the window's utterance mel]
      → [noise at an SNR, mel recomputed with cals.mel] → [SpecAugment] → batch (pad + mask)

Resampled (default): every rank and loader worker draws shards with replacement from its own
seeded stream (seed, rank, worker, epoch), so no rank ever starves and ranks see different
samples; an epoch is a number of batches set on the loader. Not resampled: shards are split by
rank, then by worker, and there must be at least ranks x workers shards.

Bad data (``StreamConfig.on_bad_sample``): a sample that fails :func:`cals.shard_format.check_raw`
or does not decode, and a shard that is not a readable tar, are skipped with one warning line
each (``"skip"``, the default) or stop the stream with one line naming shard and key
(``"fail"``: :class:`cals.data.BadData`). Every batch carries ``data_errors``: the samples its
loader worker skipped since its previous batch. A stream with no readable shard, or whose
shards hold no usable sample, stops with one line.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import webdataset as wds

from cals.constants import AUDIO_SAMPLES_PER_FRAME, MEL_HOP, MEL_ROWS_PER_FRAME, N_MELS, REFERENCE_MARGIN_FRAMES, SAMPLE_RATE
from cals.data import BadData, read_shard, sample_name, shard_paths
from cals.mel import MEL_PARAMS, log_mel
from cals.shard_format import FORMAT_VERSION, FRAME_CODECS, check_raw, read_audio, read_frames, read_lip, read_meta, read_mel

log = logging.getLogger(__name__)

#: ``StreamConfig.on_bad_sample``: skip a bad sample or unreadable shard (warned, counted), or stop.
BAD_SAMPLE_POLICIES = ("skip", "fail")


class ShardMismatch(ValueError):
    """Shards prepared differently from what the run expects (mel, format, lip units)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Audio augmentation (off by default: the neutral stream of validation and the sync
    critic). Noise and SpecAugment as in the CALS paper; :data:`PAPER_AUGMENT` is the paper's.

    Attributes:
        noise_files: wav files of noise (any rate/channels: read, downmixed, resampled to 16 kHz).
        snr_db: (low, high) SNR range in dB, drawn uniformly per window.
        noise_prob: probability that a window gets noise.
        time_masks, time_mask_rows: SpecAugment time masks per window and their largest width in
            mel rows (the paper: up to 10).
        freq_masks, freq_mask_bins: frequency masks per window and their largest width in mel
            bins (the paper: up to 20).
    """

    noise_files: tuple[str, ...] = ()
    snr_db: tuple[float, float] = (0.0, 20.0)
    noise_prob: float = 0.5
    time_masks: int = 0
    time_mask_rows: int = 10
    freq_masks: int = 0
    freq_mask_bins: int = 20


#: The augmentation the A2L and CALS trainings (and the recipe) use unless told otherwise: the
#: paper's SpecAugment, 2 time masks of up to 10 mel rows and 2 frequency masks of up to 20 bins
#: per window (the paper gives the widths, not the counts: 2 each is SpecAugment's LibriSpeech
#: "LD" policy). Noise needs noise files (the paper mixes DEMAND), so it is on only with them.
PAPER_AUGMENT = AugmentConfig(time_masks=2, freq_masks=2)

#: ``StreamConfig.reference`` rules: outside the window and its margin (training), or uniformly
#: inside the window, targets included (the old rule, kept for ablations).
REFERENCE_OUTSIDE = "outside"
REFERENCE_IN_WINDOW = "in-window"
REFERENCE_RULES = (REFERENCE_OUTSIDE, REFERENCE_IN_WINDOW)


@dataclass(frozen=True)
class StreamConfig:
    """What to stream and how.

    Attributes:
        shards: dataset folder (``OUT/<name>``), brace pattern, or list of shard paths/URLs.
        split: with a dataset folder, the split to read.
        batch_size: windows per batch.
        window: frames per window; None = the whole utterance up to ``max_frames``.
        max_frames: cap on window length, frames.
        shuffle_buffer: compressed samples held for shuffling (0 = no shuffle).
        resampled: draw shards with replacement (an endless stream; see module doc).
        num_workers: DataLoader worker processes.
        seed: base seed of shard order, shuffling and windows.
        epoch: mixes into every seed; the trainer bumps it to re-seed the stream.
        frames: decode face crops (False: audio/mel/lip only).
        lip_units: require ``lip.npy`` and batch it.
        lip_kind, lip_dim: expected ``json.lip_units`` kind and dim (None: take the shards').
        augment: audio augmentation.
        reference: one reference frame per window from the same clip (needs ``frames``), by
            :func:`reference_index`'s rule: ``"outside"`` or ``"in-window"``; None: none.
        utterance_frames: > 0: also carry the window's *utterance mel* for Audio-to-Lip, the clip
            cut into consecutive chunks of this many frames (as :meth:`CalsModel.lip_units` cuts
            it at inference), the chunk holding the window: the whole clip when it is no longer
            (see :func:`utterance_span`). 0: none.
        on_bad_sample: a bad sample or unreadable shard is skipped with a warning and counted
            (``"skip"``) or stops the stream with one line (``"fail"``); see the module doc.
    """

    shards: Any
    split: Optional[str] = "train"
    batch_size: int = 8
    window: Optional[int] = None
    max_frames: int = 250
    shuffle_buffer: int = 100
    resampled: bool = True
    num_workers: int = 0
    seed: int = 0
    epoch: int = 0
    frames: bool = True
    lip_units: bool = False
    lip_kind: Optional[str] = None
    lip_dim: Optional[int] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    reference: Optional[str] = None
    utterance_frames: int = 0
    on_bad_sample: str = "skip"

    def __post_init__(self) -> None:
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be one of {', '.join(BAD_SAMPLE_POLICIES)}, got {self.on_bad_sample!r}")
        if self.reference is not None and self.reference not in REFERENCE_RULES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCE_RULES)}, got {self.reference!r}")
        if self.reference is not None and not self.frames:
            raise ValueError("a reference frame needs frames=True")
        if self.utterance_frames < 0:
            raise ValueError(f"utterance_frames must be >= 0, got {self.utterance_frames}")


def check_compatible(meta: dict, config: StreamConfig) -> None:
    """Raise ShardMismatch naming both sides when a sample does not fit the run."""
    key = meta.get("key")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ShardMismatch(f"sample {key}: shard format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}")
    if meta.get("mel_params") != MEL_PARAMS.to_dict():
        theirs, ours = meta.get("mel_params") or {}, MEL_PARAMS.to_dict()
        differ = {k: (theirs.get(k), ours[k]) for k in ours if theirs.get(k) != ours[k]}
        raise ShardMismatch(f"sample {key}: mel parameters differ (shards vs run): {differ}")
    if config.lip_units:
        units = meta.get("lip_units")
        if not units:
            raise ShardMismatch(f"sample {key}: no lip units in the shards; run `cals-prep units` first")
        if config.lip_kind is not None and units.get("kind") != config.lip_kind:
            raise ShardMismatch(f"sample {key}: lip units of kind {units.get('kind')!r}, the run expects {config.lip_kind!r}")
        if config.lip_dim is not None and units.get("dim") != config.lip_dim:
            raise ShardMismatch(f"sample {key}: lip units of dim {units.get('dim')}, the run expects {config.lip_dim}")


def worker_seed(config: StreamConfig) -> int:
    """Seed of this rank and loader worker (distinct per rank, worker, epoch and base seed)."""
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return hash((config.seed, config.epoch, rank, worker)) & 0x7FFFFFFF


def reference_index(total: int, start: int, length: int, rule: str, rng: random.Random) -> tuple[int, int]:
    """The reference frame of the window ``[start, start + length)`` of a ``total``-frame clip.

    Returns ``(index, gap)``: the frame index in the clip and its distance in frames to the
    nearest target (0: inside the window). Rules (``M`` = ``REFERENCE_MARGIN_FRAMES``):

    - ``"outside"``: uniform over the frames outside ``[start - M, start + length + M)``, so
      ``gap > M``. A clip too short for any such frame gets the frame farthest from every target
      instead (the clip's first or last frame; ``gap <= M``, the largest the clip allows, a tie
      drawn at random). A window that covers the whole clip has no frame outside it: it gets the
      clip's first frame, one of its own targets (``gap`` 0), as the paper's inference does. The
      trainer counts these fallbacks (``reference_fallback`` in its metrics).
    - ``"in-window"``: uniform over the window's frames, targets included (``gap`` 0): the old
      rule, for ablations.
    """
    if rule == REFERENCE_IN_WINDOW:
        return start + rng.randrange(length), 0
    last = start + length - 1
    before = max(0, start - REFERENCE_MARGIN_FRAMES)  # frames 0 .. before-1
    after = max(0, total - 1 - last - REFERENCE_MARGIN_FRAMES)  # the last `after` frames
    if before + after:
        draw = rng.randrange(before + after)
        index = draw if draw < before else total - after + (draw - before)
    else:
        left, right = start, total - 1 - last  # the gaps of the clip's first and last frames
        tie = left == right and left > 0
        index = 0 if left > right or not right or (tie and rng.random() < 0.5) else total - 1
    return index, max(start - index, index - last, 0)


def utterance_span(total: int, start: int, length: int, frames: int) -> tuple[int, int]:
    """``(first, count)``: the chunk of ``frames`` frames holding the window ``[start, start +
    length)`` when the clip is cut into consecutive chunks from frame 0 (the whole clip when
    ``total <= frames``); a window straddling two chunks gets the ``frames`` frames ending at
    its last frame."""
    first = (start // frames) * frames
    if start + length > first + frames:
        first = start + length - frames
    return first, min(frames, total - first)


def cut_window(raw: dict, config: StreamConfig, rng: random.Random) -> dict[str, Any]:
    """Decode one random window of a raw sample.

    Returns a dict: ``key``, ``start`` and ``length`` (frames), ``frames`` (W,128,128,3) uint8
    (absent when ``config.frames`` is False), ``audio`` (640W,) int16, ``mel`` (4W, 80) float32,
    ``lip`` (W, D) float32 when ``config.lip_units``; with ``config.reference`` also
    ``reference`` (128,128,3) uint8, ``reference_index`` (frame in the clip) and
    ``reference_gap`` (frames to the nearest target; only that one extra frame is decoded); with
    ``config.utterance_frames`` also ``utterance_mel`` (4U, 80) float32 and ``utterance_offset``
    (frames from its first frame to the window's). ``context_audio`` is the audio of the window
    (or of its utterance) plus up to one frame on each side (for augmentation), with
    ``context_offset`` samples before the window's first sample.
    """
    meta = read_meta(raw)
    total = int(meta["num_frames"])
    length = min(total, config.window or config.max_frames, config.max_frames)
    start = rng.randint(0, total - length)
    first, count = utterance_span(total, start, length, config.utterance_frames) if config.utterance_frames else (start, length)
    audio = read_audio(raw)
    a0 = max(0, (first - 1) * AUDIO_SAMPLES_PER_FRAME)
    a1 = min(audio.shape[0], (first + count + 1) * AUDIO_SAMPLES_PER_FRAME)
    mel = read_mel(raw)
    window = {
        "key": raw["__key__"],
        "start": start,
        "length": length,
        "audio": audio[start * AUDIO_SAMPLES_PER_FRAME : (start + length) * AUDIO_SAMPLES_PER_FRAME],
        "context_audio": audio[a0:a1],
        "context_offset": start * AUDIO_SAMPLES_PER_FRAME - a0,
        "mel": mel[start * MEL_ROWS_PER_FRAME : (start + length) * MEL_ROWS_PER_FRAME].astype(np.float32),
    }
    if config.utterance_frames:
        window["utterance_mel"] = mel[first * MEL_ROWS_PER_FRAME : (first + count) * MEL_ROWS_PER_FRAME].astype(np.float32)
        window["utterance_offset"] = start - first
    if config.frames:
        indices = list(range(start, start + length))
        if config.reference is not None:
            index, gap = reference_index(total, start, length, config.reference, rng)
            window["reference_index"], window["reference_gap"] = index, gap
        decoded = read_frames(raw, meta, indices + [index] if config.reference is not None and gap else indices)
        window["frames"] = decoded[:length]
        if config.reference is not None:
            window["reference"] = decoded[length] if gap else decoded[index - start].copy()
    if config.lip_units:
        lip = read_lip(raw)
        if lip is None:
            raise ShardMismatch(f"sample {raw['__key__']}: json.lip_units is set but the sample has no lip units")
        window["lip"] = lip[start : start + length].astype(np.float32)
    return window


def _load_noise(path: str) -> np.ndarray:
    """A noise file as float32 mono at 16 kHz in [-1, 1]."""
    import soundfile
    from scipy.signal import resample_poly

    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        from math import gcd

        g = gcd(SAMPLE_RATE, rate)
        mono = resample_poly(mono, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return mono


def noise_files_in(folder: Any) -> tuple[str, ...]:
    """The ``.wav`` files under ``folder`` (recursively, sorted) for ``AugmentConfig.noise_files``.

    Raises:
        FileNotFoundError: the folder holds none.
    """
    from pathlib import Path

    files = tuple(sorted(str(p) for p in Path(folder).rglob("*.wav")))
    if not files:
        raise FileNotFoundError(f"--noise-dir {folder} holds no .wav files")
    return files


def add_noise(window: dict, noises: Sequence[np.ndarray], augment: AugmentConfig, rng: random.Random) -> dict:
    """Mix a random noise excerpt into the window's audio at a random SNR, then recompute its mel
    with :func:`cals.mel.log_mel` (the pipeline's code), framed exactly as the shards' mel."""
    if not noises or rng.random() >= augment.noise_prob:
        return window
    speech = window["context_audio"].astype(np.float64)  # int16 units: zero noise is an exact identity
    noise = noises[rng.randrange(len(noises))] * 32768.0
    if noise.shape[0] < speech.shape[0]:
        noise = np.tile(noise, int(np.ceil(speech.shape[0] / max(noise.shape[0], 1))))
    offset = rng.randint(0, noise.shape[0] - speech.shape[0])
    excerpt = noise[offset : offset + speech.shape[0]]
    snr = rng.uniform(*augment.snr_db)
    speech_power = float(np.mean(speech**2)) + 1e-10
    noise_power = float(np.mean(excerpt**2)) + 1e-10
    mixed = speech + excerpt * np.sqrt(speech_power / (noise_power * 10 ** (snr / 10)))
    mixed_int = np.clip(np.round(mixed), -32768, 32767).astype(np.int16)
    first_row = window["context_offset"] // MEL_HOP  # context_offset is a whole number of frames
    rows = window["length"] * MEL_ROWS_PER_FRAME
    mel = log_mel(mixed_int)
    window["mel"] = mel[first_row : first_row + rows]
    if "utterance_mel" in window:
        utterance_row = first_row - window["utterance_offset"] * MEL_ROWS_PER_FRAME
        window["utterance_mel"] = mel[utterance_row : utterance_row + window["utterance_mel"].shape[0]]
    start = window["context_offset"]
    window["audio"] = mixed_int[start : start + window["length"] * AUDIO_SAMPLES_PER_FRAME]
    window["snr_db"] = snr
    return window


def spec_augment(window: dict, augment: AugmentConfig, rng: random.Random) -> dict:
    """Zero ``time_masks`` spans of up to ``time_mask_rows`` mel rows and ``freq_masks`` spans
    of up to ``freq_mask_bins`` mel bins (set to the mel floor, i.e. silence). With an utterance
    mel the masks fall on it (what Audio-to-Lip reads) and the window's mel is its slice again."""
    mel = window.get("utterance_mel", window["mel"])
    silence = np.float32(np.log10(MEL_PARAMS.floor))
    for _ in range(augment.time_masks):
        width = rng.randint(0, augment.time_mask_rows)
        start = rng.randint(0, max(0, mel.shape[0] - width))
        mel[start : start + width] = silence
    for _ in range(augment.freq_masks):
        width = rng.randint(0, augment.freq_mask_bins)
        start = rng.randint(0, max(0, N_MELS - width))
        mel[:, start : start + width] = silence
    if "utterance_mel" in window:
        first = window["utterance_offset"] * MEL_ROWS_PER_FRAME
        window["mel"] = mel[first : first + window["length"] * MEL_ROWS_PER_FRAME].copy()
    return window


def collate(windows: Sequence[dict]) -> dict[str, Any]:
    """Pad windows to the longest in the batch; ``mask`` (B, W) bool is True on real frames.

    Returns torch tensors: ``frames`` (B, W, 128, 128, 3) uint8, ``mel`` (B, 4W, 80) float32,
    ``audio`` (B, 640W) int16, ``lip`` (B, W, D) float32 (when present), ``mask``, ``lengths``
    (B,) int64, plus ``keys`` and ``starts`` lists. When the windows carry them:
    ``reference`` (B, 128, 128, 3) uint8 with ``reference_index`` and ``reference_gap`` (B,)
    int64 (:func:`cut_window`); ``utterance_mel`` (B, 4U, 80) float32 padded to the longest
    utterance, ``utterance_mask`` (B, U) bool, ``utterance_lengths`` and ``utterance_offset``
    (B,) int64 (the window's frame j is the utterance's frame ``utterance_offset + j``).
    """
    import torch

    longest = max(w["length"] for w in windows)
    batch: dict[str, Any] = {
        "keys": [w["key"] for w in windows],
        "starts": [w["start"] for w in windows],
        "lengths": torch.tensor([w["length"] for w in windows], dtype=torch.int64),
    }
    batch["mask"] = torch.arange(longest)[None, :] < batch["lengths"][:, None]

    def stack(name: str, per_frame: int, dtype) -> None:
        first = windows[0][name]
        out = np.zeros((len(windows), max(w[name].shape[0] for w in windows), *first.shape[1:]), dtype=dtype)
        for i, w in enumerate(windows):
            out[i, : w[name].shape[0]] = w[name]
        batch[name] = torch.from_numpy(out)

    stack("mel", MEL_ROWS_PER_FRAME, np.float32)
    stack("audio", AUDIO_SAMPLES_PER_FRAME, np.int16)
    if "frames" in windows[0]:
        stack("frames", 1, np.uint8)
    if "lip" in windows[0]:
        stack("lip", 1, np.float32)
    if "reference" in windows[0]:
        batch["reference"] = torch.from_numpy(np.stack([w["reference"] for w in windows]))
        for name in ("reference_index", "reference_gap"):
            batch[name] = torch.tensor([w[name] for w in windows], dtype=torch.int64)
    if "utterance_mel" in windows[0]:
        stack("utterance_mel", MEL_ROWS_PER_FRAME, np.float32)
        batch["utterance_lengths"] = torch.tensor([w["utterance_mel"].shape[0] // MEL_ROWS_PER_FRAME for w in windows], dtype=torch.int64)
        batch["utterance_mask"] = torch.arange(int(batch["utterance_lengths"].max()))[None, :] < batch["utterance_lengths"][:, None]
        batch["utterance_offset"] = torch.tensor([w["utterance_offset"] for w in windows], dtype=torch.int64)
    return batch


class DataErrors:
    """The bad data one stream (one loader worker: each has its own copy) met, under its policy.

    Attributes:
        policy: ``StreamConfig.on_bad_sample``.
        urls: every shard the stream may read.
        bad_shards: unreadable shard → why (each skipped for the rest of the stream).
        read: shards read to their end at least once.
        good: samples that passed the check.
        skipped: samples skipped since the last batch (taken by :meth:`take`).
    """

    def __init__(self, policy: str, urls: Sequence[str]) -> None:
        self.policy = policy
        self.urls = set(urls)
        self.reset()

    def reset(self) -> None:
        """Start of an iteration: nothing met yet."""
        self.bad_shards: dict[str, str] = {}
        self.read: set[str] = set()
        self.good = 0
        self.skipped = 0
        self.total = 0
        self.warned: set[str] = set()

    def bad_sample(self, raw: dict, problem: str, warn: bool = True) -> None:
        """Skip ``raw`` (warned once per sample; the count grows every time) or, under "fail", raise."""
        line = f"bad sample {sample_name(raw)}: {problem}"
        if self.policy == "fail":
            raise BadData(line)
        self.skipped += 1
        self.total += 1
        if warn and line not in self.warned:
            self.warned.add(line)
            log.warning("skipped %s", line)

    def bad_shard(self, url: str, error: BadData) -> None:
        """Shard ``url`` does not read: skip it from now on (one warning), or raise under "fail"."""
        if self.policy == "fail":
            raise error
        if url not in self.bad_shards:
            self.bad_shards[url] = str(error)
            log.warning("skipped %s", error)

    def check_usable(self, finished: bool) -> None:
        """Raise BadData when no usable sample can come: every shard unreadable, or every shard
        read (``finished``: this worker's share of them) without one good sample."""
        if self.good:
            return
        left_out = self.read | set(self.bad_shards)
        if (finished and left_out) or (self.urls and self.urls <= left_out):
            unreadable = "; ".join(sorted(self.bad_shards.values())[:3]) or "none unreadable"
            raise BadData(f"no usable sample in {len(left_out)} shard(s): {len(self.bad_shards)} unreadable, "
                          f"{self.total} bad sample(s) skipped ({unreadable})")

    def take(self) -> int:
        """Samples skipped since the previous call."""
        count, self.skipped = self.skipped, 0
        return count


def _read_shards(errors: DataErrors) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """``{url}`` → raw samples (:func:`cals.data.read_shard`), leaving out shards found unreadable."""

    def stage(sources: Iterable[dict]) -> Iterator[dict]:
        errors.reset()
        for source in sources:
            url = source["url"]
            errors.check_usable(finished=False)
            if url in errors.bad_shards:
                continue
            yield from read_shard(url, functools.partial(errors.bad_shard, url))
            errors.read.add(url)
        errors.check_usable(finished=True)

    return stage


def _checked(config: StreamConfig, errors: DataErrors) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """Keep the samples that pass :func:`cals.shard_format.check_raw` (the frames member is not
    hashed when the run decodes no frames); a sample of a shard found unreadable is skipped
    without a warning of its own (its shard's names it)."""
    skip = () if config.frames else tuple(FRAME_CODECS.values())

    def stage(samples: Iterable[dict]) -> Iterator[dict]:
        for raw in samples:
            if raw.get("__url__") in errors.bad_shards:
                errors.bad_sample(raw, "in an unreadable shard", warn=False)
                continue
            problems = check_raw(raw, skip)
            if problems:
                errors.bad_sample(raw, "; ".join(problems))
                continue
            errors.good += 1
            yield raw

    return stage


def _count_errors(errors: DataErrors) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """Each batch gets ``data_errors``: samples skipped since the previous batch."""

    def stage(batches: Iterable[dict]) -> Iterator[dict]:
        for batch in batches:
            batch["data_errors"] = errors.take()
            yield batch

    return stage


def _windows(config: StreamConfig, errors: DataErrors) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """The stage that checks, cuts and augments; one RNG per loader worker. A sample whose
    window does not decode (an image, the FLAC) is a bad sample."""

    def stage(samples: Iterable[dict]) -> Iterator[dict]:
        rng = random.Random(worker_seed(config) + 1)
        noises = [_load_noise(p) for p in config.augment.noise_files]
        for raw in samples:
            check_compatible(read_meta(raw), config)
            try:
                window = cut_window(raw, config, rng)
            except ShardMismatch:
                raise
            except (ValueError, RuntimeError) as error:  # cv2/soundfile: the member does not decode
                errors.bad_sample(raw, f"does not decode ({error})")
                continue
            window = add_noise(window, noises, config.augment, rng)
            window = spec_augment(window, config.augment, rng)
            window.pop("context_audio")
            yield window

    return stage


def _shuffle(config: StreamConfig) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """Shuffle compressed samples in a buffer, seeded per rank/worker."""

    def stage(samples: Iterable[dict]) -> Iterator[dict]:
        rng = random.Random(worker_seed(config))
        buffer: list[dict] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= config.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    return stage


def check_shard_count(urls: Sequence[str], config: StreamConfig, world_size: int) -> None:
    """Without resampling, every rank's every worker needs at least one shard of its own."""
    needed = world_size * max(1, config.num_workers)
    if not config.resampled and len(urls) < needed:
        raise ValueError(
            f"{len(urls)} shards for {world_size} rank(s) x {max(1, config.num_workers)} loader worker(s): "
            f"some would get none. Use resampled streaming (the default), fewer workers, or smaller --shard-mb."
        )


def make_dataset(config: StreamConfig, world_size: int = 1) -> wds.DataPipeline:
    """The pipeline of stages (an IterableDataset yielding collated batches, each with
    ``data_errors``: see the module doc)."""
    urls = shard_paths(config.shards, config.split)
    check_shard_count(urls, config, world_size)
    if config.resampled:
        source = [wds.ResampledShards(urls, worker_seed=lambda: worker_seed(config), deterministic=True)]
    else:
        source = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
    errors = DataErrors(config.on_bad_sample, urls)
    stages = [*source, _read_shards(errors), _checked(config, errors)]
    if config.shuffle_buffer > 0:
        stages.append(_shuffle(config))
    stages += [_windows(config, errors), wds.batched(config.batch_size, collation_fn=collate, partial=not config.resampled),
               _count_errors(errors)]
    return wds.DataPipeline(*stages)


def make_loader(config: StreamConfig, batches_per_epoch: Optional[int] = None, world_size: int = 1):
    """A WebLoader over :func:`make_dataset`; with ``batches_per_epoch`` an epoch ends after that
    many batches (needed for the endless resampled stream)."""
    loader = wds.WebLoader(
        make_dataset(config, world_size),
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=False,
    )
    return loader.with_epoch(batches_per_epoch) if batches_per_epoch else loader


def mean_lip_unit(source: Any, split: str = "train", limit: int = 10_000) -> Optional[np.ndarray]:
    """Mean lip unit over up to ``limit`` frames of a split (the trivial baseline predictor).
    A bad sample or unreadable shard is left out with a warning (the training stream then counts
    it, or stops, by its own ``on_bad_sample``)."""
    from cals.data import iter_samples, skip_with_warning

    total, count = None, 0
    for sample in iter_samples(source, split=split, frames=False, handler=skip_with_warning):
        if sample.lip is None:
            return None
        lip = sample.lip.astype(np.float64)
        total = lip.sum(axis=0) if total is None else total + lip.sum(axis=0)
        count += lip.shape[0]
        if count >= limit:
            break
    return None if total is None else (total / count).astype(np.float32)


__all__ = [
    "PAPER_AUGMENT",
    "REFERENCE_IN_WINDOW",
    "REFERENCE_OUTSIDE",
    "REFERENCE_RULES",
    "AugmentConfig",
    "ShardMismatch",
    "StreamConfig",
    "check_compatible",
    "collate",
    "cut_window",
    "make_dataset",
    "make_loader",
    "mean_lip_unit",
    "noise_files_in",
    "reference_index",
    "utterance_span",
]
