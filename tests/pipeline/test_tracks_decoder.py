"""``--decoder`` reaches every decode of the scene / track paths (pipeline/prepare_tracks.py).

The check: ``ffmpeg`` on PATH is a wrapper that logs each call's arguments and runs the real ffmpeg. With
``--decoder ffmpeg`` a ``--tracks all`` clip must start exactly three ffmpeg processes (audio,
pass-1 frames, pass-2 crops) and ``--tracks dominant --scenes`` two (audio, frames); with the
default PyAV decoder none. A path that drops ``decoder=params.decoder`` decodes in-process and
the count falls short (shown by the PyAV run: the same check rejects its zero). Both decoders
give the same samples (frames identical, H1's measurement; audio within 1 LSB).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cals.shard_format import decode_sample
from pipeline.manifest import ClipSource
from pipeline.prepare_clip import PrepParams
from pipeline.prepare_tracks import process_source
from pipeline.stages.detect import make_detector
from tests.conftest import FIXTURE_VIDEO, needs_fixtures

pytestmark = needs_fixtures
FFMPEG_CALLS = {"all": 3, "dominant": 2}  # audio + one per pass over the frames


@pytest.fixture(scope="module")
def detector():
    detector = make_detector("mediapipe", "short")
    yield detector
    detector.close()


@pytest.fixture()
def logged_ffmpeg(tmp_path, monkeypatch) -> Path:
    """Put a logging ``ffmpeg`` wrapper first on PATH; returns its log file."""
    real = shutil.which("ffmpeg")
    assert real, "ffmpeg not on PATH"
    bin_dir, log = tmp_path / "bin", tmp_path / "ffmpeg.log"
    bin_dir.mkdir()
    wrapper = bin_dir / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> int:
    """ffmpeg runs that decode a file (not a ``ffmpeg -v quiet`` availability check)."""
    return sum(" -i " in f" {line}" for line in log.read_text().splitlines())


def run(detector, tracks: str, decoder: str):
    source = ClipSource(key="clip", path=str(FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"), dataset="d", split="train",
                        speaker="s", start_s=0.0, end_s=2.4)
    return process_source(source, PrepParams(tracks=tracks, scenes=True, decoder=decoder), detector)


@pytest.mark.parametrize("tracks", ["all", "dominant"])
def test_every_decode_of_the_track_paths_uses_the_chosen_decoder(detector, logged_ffmpeg, tracks):
    by_ffmpeg = run(detector, tracks, "ffmpeg")
    assert calls(logged_ffmpeg) == FFMPEG_CALLS[tracks]
    before = calls(logged_ffmpeg)
    by_pyav = run(detector, tracks, "pyav")
    assert calls(logged_ffmpeg) - before == 0 != FFMPEG_CALLS[tracks]  # the check rejects a path that ignores --decoder
    assert [k for k, _, _ in by_ffmpeg.samples] == [k for k, _, _ in by_pyav.samples] and by_pyav.samples
    for (_, a, _), (_, b, _) in zip(by_ffmpeg.samples, by_pyav.samples):
        sa, sb = decode_sample(a.sample), decode_sample(b.sample)
        np.testing.assert_array_equal(sa.frames, sb.frames)
        np.testing.assert_array_equal(sa.boxes, sb.boxes)
        assert np.abs(sa.audio.astype(np.int32) - sb.audio.astype(np.int32)).max() <= 1
