"""``cals-sync score``: per-clip lip-sync scores (AV offset, LSE-D, LSE-C) of a video, a folder of
videos or a ``cals-prep`` dataset, with corpus means and optional JSON/CSV files.

The scorer is syncnet_python's released ``syncnet_v2.model``
(:func:`cals.sync_score.score_samples`) or a sync-critic run folder from ``cals-train syncnet``
(:func:`cals.models.sync_critic.score_samples`).

Raw videos go through prep's own steps with its default settings (:mod:`pipeline.prepare_clip`:
validate, 25 fps frames through the face stage, the same checks, audio fit to 640·T samples),
then the crops make one JPEG round trip at prep's quality (:func:`jpeg_roundtrip`), so a video
scores exactly as the sample ``cals-prep`` makes of it with the same defaults.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from cals.constants import SYNCNET_BATCH_SIZE, SYNCNET_VSHIFT
from cals.layout import MANIFEST_FILE
from cals.shard_format import decode_frames, encode_frames
from cals.sync_score import ClipScore, CorpusSummary, summarise
from pipeline.errors import ClipError
from pipeline.io import read_audio
from pipeline.manifest import ClipSource
from pipeline.prepare_clip import PrepParams, check_faces, clip_faces, fit_audio, validate_clip
from pipeline.recipes.folder import VIDEO_EXTENSIONS, find_videos, make_key
from pipeline.stages.detect import Detector, make_detector

#: Columns of the --csv file, in order.
CSV_COLUMNS = ("clip", "num_frames", "offset", "min_dist", "conf", "error")
#: What ``kind`` a model file is (:func:`cals.models.lip_units.model_kind`) → the scorer's name.
SCORER_NAMES = {"sync_critic": "sync critic", "syncnet_v2": "SyncNet"}

#: ``(frames (T, 128, 128, 3) uint8 RGB, audio (640 T,) int16)``, or why the clip has none.
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
        vshift: offsets searched, -vshift..+vshift video frames.
        results: one per clip, in input order (failed clips carry their error).
        summary: corpus means over the scored clips.
    """

    model: Path
    kind: str
    vshift: int
    results: list[ClipScore]
    summary: CorpusSummary

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
            report = {"model": str(self.model), "clips": rows, "summary": self.summary.to_dict()}
            json_out.write_text(json.dumps(report, indent=2) + "\n")
        if csv_out is not None:
            with csv_out.open("w", newline="") as handle:
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
            name = video.relative_to(root).as_posix() if video != root else video.name
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


def _inputs(path: Path, detector: str, mediapipe_model: str) -> Iterator[tuple[str, ClipInput]]:
    """The shards of a dataset folder, else the videos of ``path`` through prep's steps."""
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        return shard_inputs(path)
    videos = find_videos(path) if path.is_dir() else [path]
    if not videos:
        raise ScoreSetupError(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) and no {MANIFEST_FILE} in {path}")
    try:
        face_detector = make_detector(detector, mediapipe_model)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise ScoreSetupError(str(error)) from None
    return video_inputs(videos, path, face_detector, PrepParams(detector=detector, mediapipe_model=mediapipe_model))


def _score(kind: str, network: Any, key: str, item: ClipInput, vshift: int, batch_size: int) -> list[ClipScore]:
    if isinstance(item, str):
        return [ClipScore(key=key, num_frames=None, error=item)]
    if kind == "sync_critic":
        from cals.models.sync_critic import score_samples as score_with_critic

        return list(score_with_critic([(key, *item)], network, vshift=vshift))
    from cals.sync_score import score_samples

    return list(score_samples([(key, *item)], network, vshift=vshift, batch_size=batch_size))


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
) -> SyncReport:
    """Score every clip of ``path`` (a video, a folder of videos searched recursively, or a
    dataset folder with manifest.parquet) with ``model`` on ``device``, write ``json_out`` /
    ``csv_out`` when given, and return the report. ``detector`` / ``mediapipe_model`` apply to
    raw videos (as in ``cals-prep``).

    Raises:
        ScoreSetupError: before any scoring, when the run cannot start.
    """
    if not path.exists():
        raise ScoreSetupError(f"{path} does not exist")
    for out in (json_out, csv_out):
        if out is not None and not out.parent.is_dir():
            raise ScoreSetupError(f"cannot write {out}: folder {out.parent} does not exist")
    kind, network = _load_scorer(model, _torch_device(device))
    results: list[ClipScore] = []
    for key, item in _inputs(path, detector, mediapipe_model):
        results.extend(_score(kind, network, key, item, vshift, batch_size))
    report = SyncReport(model=model, kind=kind, vshift=vshift, results=results, summary=summarise(results))
    report.write(json_out, csv_out)
    return report
