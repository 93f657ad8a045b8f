"""The corpus commands through cals-prep's real command line: errors, and LRS2 end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.prep import app
from tests.conftest import FIXTURE_VIDEO, ffmpeg, needs_fixtures

runner = CliRunner()

#: LRS2 clips are 160x160 face tracks.
LRS2_SIZE = 160
#: (clip id, list file, list line suffix, transcript, start s) of the fake release; 2 s each.
FAKE_LRS2 = [
    ("6330311066473698535/00001", "train.txt", "", "HELLO THERE", 0.0),
    ("6330311066473698535/00002", "val.txt", "", "GOOD MORNING", 1.5),
    ("6331559613336179781/00001", "test.txt", " NF", "THANK YOU", 3.0),
]
PIECE_S = 2.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lrs2", "--root", "{tmp}"], "no mvlrs_v1"),
        (["lrs2", "--root", "{tmp}/missing"], "is not a folder"),
        (["lrw", "--root", "{tmp}"], "is not an LRW release"),
        (["hdtf", "--root", "{tmp}", "--annotations", "{tmp}"], "no HDTF time annotations"),
        (["hdtf", "--root", "{tmp}", "--annotations", "{tmp}", "--val", "0.7", "--test", "0.5"], "sum to < 1"),
    ],
)
def test_bad_corpus_input_is_a_one_line_error(tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = runner.invoke(app, [*argv, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_lrs2_with_no_listed_clip_is_refused(tmp_path):
    (tmp_path / "mvlrs_v1" / "main").mkdir(parents=True)
    for name in ["train.txt", "val.txt", "test.txt"]:
        (tmp_path / name).write_text("")
    result = runner.invoke(app, ["lrs2", "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no listed LRS2 clip" in " ".join(result.output.split())


def make_fake_lrs2(root: Path) -> None:
    """Three 2-second 160x160 pieces of a real fixture clip in an LRS2 release layout."""
    source = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"
    for clip_id, list_name, flag, text, start in FAKE_LRS2:
        video = root / "mvlrs_v1" / "main" / f"{clip_id}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        ffmpeg(
            "-ss", str(start), "-t", str(PIECE_S), "-i", str(source),
            "-vf", f"scale={LRS2_SIZE}:{LRS2_SIZE}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
            str(video),
        )
        video.with_suffix(".txt").write_text(f"Text:  {text}\nConf:  4\n", encoding="utf-8")
        with (root / list_name).open("a", encoding="utf-8") as handle:
            handle.write(f"{clip_id}{flag}\n")
    (root / "pretrain.txt").write_text("")


@pytest.mark.slow
@needs_fixtures
def test_lrs2_prep_then_verify(tmp_path):
    from cals.data import iter_samples

    root = tmp_path / "lrs2_v1"
    make_fake_lrs2(root)
    out = tmp_path / "shards"
    result = runner.invoke(
        app, ["lrs2", "--root", str(root), "--out", str(out), "--detector", "none", "--workers", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    dataset = out / "lrs2"
    samples = list(iter_samples(dataset, frames=False))
    got = {s.meta["extra"]["lrs2_id"]: (s.meta["split"], s.meta["transcript"]) for s in samples}
    expected_split = {"train.txt": "train", "val.txt": "val", "test.txt": "test"}
    assert got == {clip_id: (expected_split[list_name], text) for clip_id, list_name, _, text, _ in FAKE_LRS2}
    assert all(s.meta["dataset"] == "lrs2" and s.meta["source_width"] == LRS2_SIZE for s in samples)
    result = runner.invoke(app, ["verify", str(dataset)])
    assert result.exit_code == 0, result.output
    assert "3 samples" in result.output and "OK" in result.output
