"""Full-frame LSE-D / LSE-C for ``cals-eval``: what papers score is the output video, not the crop.

For each of the first ``clips`` samples of the split (:func:`full_frame_lse`):

1. **real video**: the sample's source span (manifest ``source``, ``source_start_s`` ..
   ``source_end_s``; the whole frame, a source crop is not applied) decoded at 25 fps, its first
   T frames encoded with the sample's own 16 kHz audio (:class:`pipeline.io.VideoEncoder`, H.264
   at the default CRF): the ground-truth row;
2. **generated video**: :func:`pipeline.lipsync_video.generate_video` on that real video driven by
   the same audio, with the dataset's detector settings (prep.json): crops, the CALS model, the
   mouth pasted back into every source frame, encoded the same way;
3. both scored with a ``cals-sync score`` protocol (:func:`pipeline.sync_report.score_videos`):
   by default the one the corpus's papers use (:data:`CORPUS_PROTOCOLS`, by the recipe in
   prep.json's command): ``precropped`` for LRS2/LRS3/LRW/VoxCeleb2 (face tracks already: Wav2Lip's
   evaluation), ``syncnet_python`` for HDTF and raw folders (syncnet_python's run_pipeline chain;
   S3FD with ``sfd_face.pth`` when given).

A clip's value is the mean over its face tracks; the row the mean over clips. A clip that fails
(no face, too short) is recorded with its reason and never stops the run.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cals.constants import SAMPLE_RATE
from cals.eval import EvalReport, FullFrameClip, FullFrameLse
from cals.layout import PREP_FILE
from cals.models.lip_units import model_digest
from pipeline.errors import ClipError
from pipeline.io import VideoEncoder, Window, iter_frames, probe
from pipeline.sync_protocols import SyncnetPythonParams

#: The scoring protocol of each cals-prep recipe's corpus (module docstring).
CORPUS_PROTOCOLS = {
    "lrs2": "precropped",
    "lrs3": "precropped",
    "lrw": "precropped",
    "voxceleb2": "precropped",
    "hdtf": "syncnet_python",
    "folder": "syncnet_python",
}
#: What ``--protocol`` of cals-eval accepts.
FULL_FRAME_PROTOCOLS = ("syncnet_python", "precropped")


@dataclass(frozen=True)
class FullFrameSettings:
    """How :func:`full_frame_lse` scores.

    Attributes:
        syncnet: ``syncnet_v2.model``.
        clips: score the first this many clips of the split.
        protocol: one of :data:`FULL_FRAME_PROTOCOLS`; None: the corpus's (:func:`corpus_protocol`).
        s3fd: syncnet_python's ``sfd_face.pth`` for the ``syncnet_python`` protocol (None: MediaPipe).
        syncnet_python: that protocol's settings.
    """

    syncnet: Path
    clips: int
    protocol: Optional[str] = None
    s3fd: Optional[Path] = None
    syncnet_python: SyncnetPythonParams = SyncnetPythonParams()


def prep_info(shards: str | Path) -> dict:
    """The dataset's prep.json ({} when absent)."""
    path = Path(shards) / PREP_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def corpus_recipe(shards: str | Path) -> Optional[str]:
    """The cals-prep recipe that made ``shards`` (``command[1]`` of prep.json when it is a
    ``cals-prep`` command), or None."""
    command = prep_info(shards).get("command") or []
    if len(command) > 1 and Path(str(command[0])).name == "cals-prep":
        return str(command[1])
    return None


def corpus_protocol(shards: str | Path) -> tuple[str, str]:
    """``(protocol, recipe)`` the dataset's corpus is scored with (:data:`CORPUS_PROTOCOLS`).
    Raises ValueError (one line) when prep.json names no known recipe."""
    recipe = corpus_recipe(shards)
    if recipe not in CORPUS_PROTOCOLS:
        raise ValueError(f"{shards}: prep.json names no cals-prep recipe of {', '.join(CORPUS_PROTOCOLS)} "
                         f"(found {recipe!r}), so the corpus's LSE protocol is unknown: pass --protocol "
                         f"{' or '.join(FULL_FRAME_PROTOCOLS)}")
    return CORPUS_PROTOCOLS[recipe], recipe


def write_real_video(sample, out: Path) -> None:
    """Step 1 (module docstring): the sample's source span, first T frames, with its audio."""
    meta = sample.meta
    info = probe(meta["source"])
    window = Window(meta.get("source_start_s"), meta.get("source_end_s"), None)
    with closing(iter_frames(info, window)) as frames, VideoEncoder(out, info.width, info.height, sample.audio) as encoder:
        for frame in islice(frames, sample.num_frames):
            encoder.write(frame)


def _tracks(scores) -> tuple[list[dict], Optional[str]]:
    rows = [{"track": s.track, "first_frame": s.first_frame, "lse_d": s.score.min_dist, "lse_c": s.score.conf,
             "offset": s.score.offset} for s in scores if s.score is not None]
    errors = [s.error for s in scores if s.error]
    return rows, None if rows else ("; ".join(errors) or "no score")


def full_frame_lse(report: EvalReport, model, settings: FullFrameSettings, device: str = "cpu",
                   progress: Optional[Callable[[FullFrameClip], None]] = None) -> FullFrameLse:
    """Score the first ``settings.clips`` clips of ``report.split`` as full-frame videos (module
    docstring) with the CALS ``model``; sets and returns ``report.full_frame``.

    Raises:
        ValueError / pipeline.sync_report.ScoreSetupError: unknown protocol, weights that do not
            load (one line each).
    """
    import soundfile

    from cals.data import iter_samples
    from pipeline.lipsync_video import GenerateParams, InputError, generate_video
    from pipeline.sync_report import load_scorer, score_videos

    recipe = None
    if settings.protocol is None:
        protocol, recipe = corpus_protocol(report.shards)
    elif settings.protocol in FULL_FRAME_PROTOCOLS:
        protocol = settings.protocol
    else:
        raise ValueError(f"--protocol {settings.protocol!r}: choose {' or '.join(FULL_FRAME_PROTOCOLS)}")
    kind, network = load_scorer(settings.syncnet, device)
    if kind != "syncnet_v2":
        raise ValueError(f"--syncnet {settings.syncnet}: full-frame LSE needs syncnet_v2.model, not a sync critic")
    parameters = prep_info(report.shards).get("parameters", {})
    detector = parameters.get("detector", "mediapipe")
    params = GenerateParams(detector="mediapipe" if detector == "none" else detector,
                            mediapipe_model=parameters.get("mediapipe_model", "short"))
    full = FullFrameLse(protocol=protocol, recipe=recipe, model=str(settings.syncnet), model_sha256=model_digest(settings.syncnet),
                        detector=None)

    def score(video: Path) -> tuple[list[dict], Optional[str]]:
        scores, full.detector = score_videos(video, kind, network, protocol, device=device, syncnet_python=settings.syncnet_python,
                                             s3fd=settings.s3fd if protocol == "syncnet_python" else None)
        return _tracks(scores)

    with tempfile.TemporaryDirectory(prefix="cals-eval-video-") as tmp:
        folder = Path(tmp)
        for sample in islice(iter_samples(report.shards, split=report.split), settings.clips):
            clip = FullFrameClip(key=sample.key)
            real, generated, audio = folder / f"{sample.key}.real.mp4", folder / f"{sample.key}.generated.mp4", folder / f"{sample.key}.wav"
            try:
                write_real_video(sample, real)
                soundfile.write(audio, np.asarray(sample.audio, np.int16), SAMPLE_RATE, subtype="PCM_16")
                generate_video(real, audio, None, generated, params=params, device=device, model=model)
                clip.real, real_error = score(real)
                clip.generated, generated_error = score(generated)
                errors = [f"{side}: {e}" for side, e in (("real", real_error), ("generated", generated_error)) if e]
                clip.error = "; ".join(errors) or None
            except (ClipError, InputError, KeyError, OSError, ValueError) as error:
                clip.error = f"{type(error).__name__}: {error}"
            full.clips.append(clip)
            if progress is not None:
                progress(clip)
            for path in (real, generated, audio):
                path.unlink(missing_ok=True)
    report.full_frame = full
    return full


__all__ = ["CORPUS_PROTOCOLS", "FULL_FRAME_PROTOCOLS", "FullFrameSettings", "corpus_protocol", "corpus_recipe", "full_frame_lse"]
