"""Shared test helpers: where the real fixtures live, and how to make media with ffmpeg."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Ray in single-node mode binds to 127.0.0.1 only (set before anything imports Ray): tests never
# use the machine's routable address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

#: ../shared beside the checkout (CI and developers have it; others skip the tests that need it).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE_VIDEO = SHARED / "fixtures" / "video"
TALK_CLIPS = sorted(FIXTURE_VIDEO.glob("talk_*.mp4")) if FIXTURE_VIDEO.is_dir() else []

needs_fixtures = pytest.mark.skipif(
    not TALK_CLIPS, reason=f"real fixture clips not found at {FIXTURE_VIDEO} (../shared is absent)"
)


def ffmpeg(*args: str) -> None:
    """Run ffmpeg with an argument list; fail the test with its stderr if it fails."""
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
