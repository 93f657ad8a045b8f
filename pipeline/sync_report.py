"""``cals-sync score``: per-clip lip-sync scores (AV offset, LSE-D, LSE-C) of a video, a folder of
videos or a ``cals-prep`` dataset, with corpus means and optional JSON/CSV files.

The scorer is syncnet_python's released ``syncnet_v2.model``
(:func:`cals.sync_score.score_samples`) or a sync-critic run folder from ``cals-train syncnet``
(:func:`cals.models.sync_critic.score_samples`).

What the scorer is fed is the ``protocol`` (:data:`PROTOCOLS`):

- ``shards`` (default): a dataset folder's samples as stored; raw videos go through prep's own steps with its default settings (:mod:`pipeline.prepare_clip`:
validate, 25 fps frames through the face stage, the same checks, audio fit to 640·T samples),
then the crops make one JPEG round trip at prep's quality (:func:`jpeg_roundtrip`), so a video
scores exactly as the sample ``cals-prep`` makes of it with the same defaults.
- ``syncnet_python``: raw videos through syncnet_python's ``run_pipeline.py`` chain, one score per
  face track (:mod:`pipeline.sync_protocols`); what HDTF-style papers report.
- ``precropped``: every frame as it is, resized to 224 (Wav2Lip's LRS2/LRS3 evaluation,
  ``demo_syncnet.py``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from cals.atomic import atomic_write
from cals.constants import SYNCNET_BATCH_SIZE, SYNCNET_VSHIFT
from cals.layout import MANIFEST_FILE
from cals.models.lip_units import file_sha256, model_digest
from cals.shard_format import decode_frames, encode_frames
from cals.sync_score import ClipScore, CorpusSummary, summarise
from pipeline.errors import ClipError
from pipeline.io import read_audio
from pipeline.manifest import ClipSource
from pipeline.prepare_clip import PrepParams, check_faces, clip_faces, fit_audio, validate_clip
from pipeline.recipes.folder import VIDEO_EXTENSIONS, find_videos, make_key
from pipeline.stages.detect import Detector, make_detector
from pipeline.sync_protocols import SyncnetPythonParams, precropped_input, syncnet_python_detector, syncnet_python_inputs

#: Columns of the --csv file, in order.
CSV_COLUMNS = ("clip", "num_frames", "offset", "min_dist", "conf", "error")
#: What ``kind`` a model file is (:func:`cals.models.lip_units.model_kind`) → the scorer's name.
SCORER_NAMES = {"sync_critic": "sync critic", "syncnet_v2": "SyncNet"}

#: What ``--protocol`` accepts (module docstring).
PROTOCOLS = ("shards", "syncnet_python", "precropped")

#: ``(frames (T, H, W, 3) uint8 RGB, audio (640 T,) int16)``, or why the clip has none.
ClipInput = Union[tuple[np.ndarray, np.ndarray], str]


class ScoreSetupError(Exception):
    """A one-line reason ``cals-sync score`` cannot start (missing path, bad device or model,
    no video, unwritable output)."""


@dataclass(frozen=True)
class SyncReport:
    """What :func:`score_path` measured.

    Attributes:
        model: the model file or run folder.
        kind: ``"syncnet_v2"`` or ``"sync_critic"`` (see :data:`SCORER_NAMES`).
        protocol: one of :data:`PROTOCOLS`.
        detector: the face detector raw videos went through, with a note where it is not the
            one the protocol's published numbers used (None: no detection).
        vshift: offsets searched, -vshift..+vshift video frames.
        results: one per clip, in input order (failed clips carry their error).
        summary: corpus means over the scored clips.
        model_sha256: SHA-256 of the model file (:func:`cals.models.lip_units.model_digest`).
    """

    model: Path
    kind: str
    protocol: str
    detector: Optional[str]
    vshift: int
    results: list[ClipScore]
    summary: CorpusSummary
    model_sha256: Optional[str] = None

    @property
    def scorer(self) -> str:
        return SCORER_NAMES.get(self.kind, self.kind)

    def rows(self) -> list[dict[str, Any]]:
        """Per-clip JSON-ready rows (:meth:`cals.sync_score.ClipScore.to_dict`)."""
        return [r.to_dict() for r in self.results]

    def write(self, json_out: Optional[Path] = None, csv_out: Optional[Path] = None) -> None:
        """Write the per-clip rows and the summary as JSON, and/or the rows as CSV (:data:`CSV_COLUMNS`)."""
        rows = self.rows()
        if json_out is not None:
            report = {"model": str(self.model), "model_sha256": self.model_sha256, "protocol": self.protocol, "detector": self.detector,
                      "clips": rows, "summary": self.summary.to_dict()}
            with atomic_write(json_out) as tmp:
                tmp.write_text(json.dumps(report, indent=2) + "\n")
        if csv_out is not None:
            with atomic_write(csv_out) as tmp, tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)


def jpeg_roundtrip(crops: np.ndarray, quality: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB crops → the same crops JPEG-encoded at ``quality`` and decoded
    again, with the shard codec's own encoder and decoder.

    The shards store the crops as JPEG (prep's default quality 95), and a scorer reads them
    decoded; JPEG is lossy, so the scores of a raw video equal those of its prepared sample only
    after this round trip. (The audio needs none: the shards' FLAC is lossless.)
    """
    blobs = encode_frames(crops, "jpeg", quality)
    return decode_frames(b"".join(blobs), [len(b) for b in blobs])


def video_input(video: Path, name: str, params: PrepParams, detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """Prep's steps on one raw video (see the module docstring): ``(frames (T, 128, 128, 3)
    uint8 RGB after :func:`jpeg_roundtrip`, audio (640 T,) int16)``. Raises ClipError."""
    source = ClipSource(key=make_key(name), path=str(video.resolve()), dataset="sync", split="test", speaker="")
    info, window, expected = validate_clip(source, params)
    audio = read_audio(info, window)
    faces = clip_faces(info, window, detector, params, keep=lambda crop: crop)
    check_faces(faces, info, expected, params)
    audio, _ = fit_audio(audio, faces.num_frames)
    return jpeg_roundtrip(np.stack(faces.crops), params.jpeg_quality), audio


def video_inputs(videos: list[Path], root: Path, detector: Detector, params: PrepParams) -> Iterator[tuple[str, ClipInput]]:
    """``(display name, input)`` per video (name relative to ``root``); closes ``detector`` at the end."""
    try:
        for video in videos:
            name = _display_name(video, root)
            try:
                yield name, video_input(video, name, params, detector)
            except ClipError as error:
                yield name, str(error)
    finally:
        detector.close()


def shard_inputs(dataset: Path) -> Iterator[tuple[str, ClipInput]]:
    """``(key, (frames, audio))`` per sample of a ``cals-prep`` dataset folder."""
    from cals.data import iter_samples

    for sample in iter_samples(dataset):
        yield sample.key, (sample.frames, sample.audio)


def _torch_device(device: str):
    import torch

    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise ScoreSetupError(f"--device {device!r} is not a torch device: {error}") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ScoreSetupError(f"--device {device}: CUDA is not available to this torch build")
    return torch_device


def _load_scorer(model: Path, torch_device) -> tuple[str, Any]:
    """``(kind, network)`` of a syncnet_v2.model or a sync-critic run folder."""
    from cals.models.lip_units import model_kind

    try:
        kind = model_kind(model)
        if kind == "sync_critic":
            from cals.models.sync_critic import load_critic

            return kind, load_critic(model, device=torch_device)
        from cals.models.syncnet_v2 import load_syncnet_v2

        return kind, load_syncnet_v2(model, device=torch_device)
    except (FileNotFoundError, ValueError) as error:
        raise ScoreSetupError(str(error)) from None


#: One scoring unit: ``(display name, input, track index or None, first frame or None)``.
Unit = tuple[str, ClipInput, Optional[int], Optional[int]]


def _display_name(video: Path, root: Path) -> str:
    return video.relative_to(root).as_posix() if video != root else video.name


def protocol_inputs(videos: list[Path], root: Path, protocol: str, detector: Optional[Detector],
                    params: SyncnetPythonParams) -> Iterator[Unit]:
    """The ``syncnet_python`` (one unit per face track) or ``precropped`` (one per video) units
    of ``videos``; a video that fails is one unit carrying its error. Closes ``detector``."""
    try:
        for video in videos:
            name = _display_name(video, root)
            try:
                if protocol == "precropped":
                    clip = precropped_input(video)
                    yield name, (clip.crops, clip.audio), None, None
                    continue
                for index, track in enumerate(syncnet_python_inputs(video, detector, params)):
                    yield f"{name}#{index}", (track.crops, track.audio), index, track.first_frame
            except ClipError as error:
                yield name, str(error), None, None
    finally:
        if detector is not None:
            detector.close()


def _make_detector(name: str, mediapipe_model: str) -> Detector:
    try:
        return make_detector(name, mediapipe_model)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise ScoreSetupError(str(error)) from None


def _inputs(path: Path, protocol: str, detector: str, mediapipe_model: str,
            params: SyncnetPythonParams, s3fd: Optional[Path] = None,
            device: str = "cpu") -> tuple[Iterator[Unit], Optional[str]]:
    """``(units, detector description)`` of ``path`` under ``protocol`` (module docstring)."""
    if protocol not in PROTOCOLS:
        raise ScoreSetupError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if s3fd is not None and protocol != "syncnet_python":
        raise ScoreSetupError(f"--s3fd is the syncnet_python protocol's detector; --protocol {protocol} detects no face with it")
    is_dataset = path.is_dir() and (path / MANIFEST_FILE).is_file()
    if is_dataset:
        if protocol != "shards":
            raise ScoreSetupError(f"{path} is a cals-prep dataset: its samples are already crops, score it with --protocol shards")
        return ((key, item, None, None) for key, item in shard_inputs(path)), None
    videos = find_videos(path) if path.is_dir() else [path]
    if not videos:
        raise ScoreSetupError(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) and no {MANIFEST_FILE} in {path}")
    if protocol == "shards":
        units = video_inputs(videos, path, _make_detector(detector, mediapipe_model), PrepParams(detector=detector, mediapipe_model=mediapipe_model))
        return ((key, item, None, None) for key, item in units), f"{detector} (cals-prep's face stage)"
    if protocol == "precropped":
        return protocol_inputs(videos, path, protocol, None, params), None
    try:
        face_detector = syncnet_python_detector(params, mediapipe_model, s3fd=s3fd, device=device)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise ScoreSetupError(str(error)) from None
    if s3fd is not None:
        note = f"{face_detector.name}, sha256 {file_sha256(s3fd)[:16]} (syncnet_python's detector)"
    else:
        note = (f"mediapipe-{mediapipe_model} on frames x{params.facedet_scale:g}, conf >= {params.det_conf:g} "
                "(syncnet_python uses S3FD, sfd_face.pth: tracks and crops can differ from published ones; pass --s3fd)")
    return protocol_inputs(videos, path, protocol, face_detector, params), note


def _score(kind: str, network: Any, unit: Unit, vshift: int, batch_size: int) -> list[ClipScore]:
    key, item, track, first_frame = unit
    if isinstance(item, str):
        return [ClipScore(key=key, num_frames=None, error=item)]
    if kind == "sync_critic":
        from cals.models.sync_critic import score_samples as score_with_critic

        scores = score_with_critic([(key, *item)], network, vshift=vshift)
    else:
        from cals.sync_score import score_samples

        scores = score_samples([(key, *item)], network, vshift=vshift, batch_size=batch_size)
    return [replace(score, track=track, first_frame=first_frame) for score in scores]


def load_scorer(model: Path, device: str = "cpu") -> tuple[str, Any]:
    """``(kind, network)`` of a ``syncnet_v2.model`` or a sync-critic run folder on ``device``.
    Raises ScoreSetupError (one line: missing or wrong file, bad device)."""
    return _load_scorer(model, _torch_device(device))


def score_videos(path: Path, kind: str, network: Any, protocol: str, *, vshift: int = SYNCNET_VSHIFT,
                 batch_size: int = SYNCNET_BATCH_SIZE, device: str = "cpu", detector: str = "mediapipe",
                 mediapipe_model: str = "short", syncnet_python: SyncnetPythonParams = SyncnetPythonParams(),
                 s3fd: Optional[Path] = None) -> tuple[list[ClipScore], Optional[str]]:
    """Score the video(s) at ``path`` under ``protocol`` with an already loaded scorer
    (:func:`load_scorer`): ``(one ClipScore per clip or face track, detector description)``.
    Raises ScoreSetupError."""
    units, detector_note = _inputs(path, protocol, detector, mediapipe_model, syncnet_python, s3fd=s3fd, device=device)
    results: list[ClipScore] = []
    for unit in units:
        results.extend(_score(kind, network, unit, vshift, batch_size))
    return results, detector_note


def score_path(
    path: Path,
    model: Path,
    *,
    json_out: Optional[Path] = None,
    csv_out: Optional[Path] = None,
    vshift: int = SYNCNET_VSHIFT,
    batch_size: int = SYNCNET_BATCH_SIZE,
    device: str = "cpu",
    detector: str = "mediapipe",
    mediapipe_model: str = "short",
    protocol: str = PROTOCOLS[0],
    syncnet_python: SyncnetPythonParams = SyncnetPythonParams(),
    s3fd: Optional[Path] = None,
) -> SyncReport:
    """Score every clip of ``path`` (a video, a folder of videos searched recursively, or a
    dataset folder with manifest.parquet) with ``model`` on ``device``, write ``json_out`` /
    ``csv_out`` when given, and return the report. ``protocol`` (:data:`PROTOCOLS`) says what the
    scorer is fed; ``detector`` applies to raw videos under ``shards`` (as in ``cals-prep``),
    ``mediapipe_model`` to ``shards`` and ``syncnet_python``; ``syncnet_python`` holds that
    protocol's settings and ``s3fd`` (syncnet_python's ``sfd_face.pth``) makes it detect with S3FD.

    Raises:
        ScoreSetupError: before any scoring, when the run cannot start.
    """
    if not path.exists():
        raise ScoreSetupError(f"{path} does not exist")
    for out in (json_out, csv_out):
        if out is not None and not out.parent.is_dir():
            raise ScoreSetupError(f"cannot write {out}: folder {out.parent} does not exist")
    kind, network = load_scorer(model, device)
    results, detector_note = score_videos(path, kind, network, protocol, vshift=vshift, batch_size=batch_size, device=device,
                                          detector=detector, mediapipe_model=mediapipe_model, syncnet_python=syncnet_python, s3fd=s3fd)
    report = SyncReport(model=model, kind=kind, protocol=protocol, detector=detector_note, vshift=vshift,
                        results=results, summary=summarise(results), model_sha256=model_digest(model))
    report.write(json_out, csv_out)
    return report
