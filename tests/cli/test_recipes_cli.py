"""The corpus commands through cals-prep's real command line: errors, and LRS2, LRS3 and
VoxCeleb2 end to end on small release trees of real clips (tests/fixture_builders.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.prep import app
from pipeline.prepare_clip import PrepParams
from tests.conftest import FIXTURE_VIDEO, needs_fixtures
from tests.fixture_builders import build_release_tree

runner = CliRunner()

#: LRS2 clips are 160x160 face tracks.
LRS2_SIZE = 160
#: (clip id, list file, list line suffix, transcript) of the fake release; PIECE_S each.
FAKE_LRS2 = [
    ("6330311066473698535/00001", "train.txt", "", "HELLO THERE"),
    ("6330311066473698535/00002", "val.txt", "", "GOOD MORNING"),
    ("6331559613336179781/00001", "test.txt", " NF", "THANK YOU"),
]
PIECE_S = 2.0
#: The clip the fake trees are cut from.
SOURCE = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"
#: LRS3 and VoxCeleb2 clips are 224x224 face tracks; the fake ones last SHORT_PIECE_S (30 frames).
FACE_224 = 224
SHORT_PIECE_S = 1.2
#: (path in the LRS3 tree, transcript, split with --val 0.5): the talk ids' stable hashes are
#: 0.403 (val), 0.626 (train) and 0.895 (test is official anyway).
FAKE_LRS3 = [
    ("trainval/aR2vA2Q8qHY/00001.mp4", "GOOD MORNING EVERYONE", "val"),
    ("trainval/0Fi83BHQsMA/00001.mp4", "HELLO THERE", "train"),
    ("test/5gAZ0kNmAtI/00001.mp4", "THANK YOU", "test"),
]
#: (path in the VoxCeleb2 tree, split with --val 0.1): id00020's hash is 0.074 (val), id00012's 0.724.
FAKE_VOX2 = [
    ("dev/mp4/id00012/21Uxsk56VDQ/00001.mp4", "train"),
    ("dev/mp4/id00012/21Uxsk56VDQ/00002.mp4", "train"),  # left out by --limit 1
    ("dev/mp4/id00020/0Ij6sM3cEGk/00001.mp4", "val"),
    ("test/mp4/id00017/9mQ11vBs1wc/00001.mp4", "test"),
]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lrs2", "--root", "{tmp}"], "no mvlrs_v1"),
        (["lrs2", "--root", "{tmp}/missing"], "is not a folder"),
        (["lrw", "--root", "{tmp}"], "is not an LRW release"),
        (["hdtf", "--root", "{tmp}", "--annotations", "{tmp}"], "no HDTF time annotations"),
        (["hdtf", "--root", "{tmp}", "--annotations", "{tmp}", "--val", "0.7", "--test", "0.5"], "sum to < 1"),
        (["lrs3", "--root", "{tmp}"], "LRS3 clip folder {tmp}/trainval is missing"),
        (["lrs3", "--root", "{tmp}/missing"], "is not a folder"),
        (["lrs3", "--root", "{tmp}", "--val", "1.5"], "sum to < 1"),
        (["voxceleb2", "--root", "{tmp}"], "VoxCeleb2 video folder {tmp}/dev/mp4 is missing"),
        (["voxceleb2", "--root", "{tmp}", "--subset", "test"], "{tmp}/test/mp4 is missing (needed for --subset test)"),
    ],
)
def test_bad_corpus_input_is_a_one_line_error(tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    message = message.replace("{tmp}", str(tmp_path.resolve()))
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
    build_release_tree(SOURCE, root, [(f"mvlrs_v1/main/{clip_id}.mp4", text) for clip_id, _, _, text in FAKE_LRS2],
                       size=LRS2_SIZE, seconds=PIECE_S)
    for clip_id, list_name, flag, _ in FAKE_LRS2:
        with (root / list_name).open("a", encoding="utf-8") as handle:
            handle.write(f"{clip_id}{flag}\n")
    (root / "pretrain.txt").write_text("")


@pytest.mark.slow
@needs_fixtures
def test_lrs2_prep_then_verify(tmp_path):
    root = tmp_path / "lrs2_v1"
    make_fake_lrs2(root)
    out = tmp_path / "shards"
    samples = prep_and_verify(["lrs2", "--root", str(root), "--out", str(out)], out / "lrs2")
    got = {s.meta["extra"]["lrs2_id"]: (s.meta["split"], s.meta["transcript"]) for s in samples}
    expected_split = {"train.txt": "train", "val.txt": "val", "test.txt": "test"}
    assert got == {clip_id: (expected_split[list_name], text) for clip_id, list_name, _, text in FAKE_LRS2}
    assert all(s.meta["dataset"] == "lrs2" and s.meta["source_width"] == LRS2_SIZE for s in samples)
    assert len(samples) == 3

def prep_and_verify(argv: list[str], dataset: Path) -> list:
    """Run ``cals-prep`` with ``argv`` (fast options added), check it and ``verify`` pass and
    that it ran with the single-shot corpora's defaults (``--tracks dominant --no-scenes``:
    LRS2, LRS3 and VoxCeleb2 clips are one face track, no cuts), and return the dataset's
    samples (no frames)."""
    from cals.data import iter_samples

    result = runner.invoke(app, [*argv, "--detector", "none", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    params = PrepParams.from_dict(json.loads((dataset / "prep.json").read_text(encoding="utf-8"))["parameters"])
    assert (params.tracks, params.scenes) == ("dominant", False)
    verified = runner.invoke(app, ["verify", str(dataset)])
    assert verified.exit_code == 0 and "OK" in verified.output, verified.output
    return list(iter_samples(dataset, frames=False))


@pytest.mark.slow
@needs_fixtures
def test_lrs3_prep_then_verify(tmp_path):
    root = tmp_path / "lrs3"
    build_release_tree(SOURCE, root, [(path, text) for path, text, _ in FAKE_LRS3], size=FACE_224, seconds=SHORT_PIECE_S)
    out = tmp_path / "shards"
    samples = prep_and_verify(["lrs3", "--root", str(root), "--out", str(out), "--val", "0.5"], out / "lrs3")
    got = {s.meta["extra"]["lrs3_id"]: (s.meta["split"], s.meta["speaker"], s.meta["transcript"]) for s in samples}
    assert got == {
        path.split("/", 1)[1][: -len(".mp4")]: (split, path.split("/")[1], text) for path, text, split in FAKE_LRS3
    }
    for sample in samples:
        words = sample.meta["extra"]["words"]
        assert [w[0] for w in words] == sample.meta["transcript"].split() and words[0][1:] == [0.0, 0.25]
        assert sample.meta["dataset"] == "lrs3" and sample.meta["source_width"] == FACE_224


@pytest.mark.slow
@needs_fixtures
def test_voxceleb2_prep_then_verify(tmp_path):
    root = tmp_path / "vox2"
    build_release_tree(SOURCE, root, [(path, None) for path, _ in FAKE_VOX2], size=FACE_224, seconds=SHORT_PIECE_S)
    out = tmp_path / "shards"
    samples = prep_and_verify(["voxceleb2", "--root", str(root), "--out", str(out), "--val", "0.1", "--limit", "1"], out / "voxceleb2")
    got = {s.meta["extra"]["voxceleb2_id"]: (s.meta["split"], s.meta["speaker"]) for s in samples}
    kept = [(path, split) for path, split in FAKE_VOX2 if not path.endswith("21Uxsk56VDQ/00002.mp4")]
    assert got == {"/".join(path.split("/")[2:])[: -len(".mp4")]: (split, path.split("/")[2]) for path, split in kept}
    assert all(s.meta["dataset"] == "voxceleb2" and s.meta["transcript"] is None for s in samples)


@pytest.mark.parametrize(
    "command, folders, message",
    [
        ("lrs3", ["trainval/0Fi83BHQsMA", "test"], "no LRS3 clip (<video_id>/<NNNNN>.mp4) of --subset trainval"),
        ("voxceleb2", ["dev/mp4/id00012", "test/mp4"], "no VoxCeleb2 clip (<idNNNNN>/<video>/<clip>.mp4) of --subset all"),
    ],
)
def test_a_tree_without_clips_is_refused(tmp_path, command, folders, message):
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
    result = runner.invoke(app, [command, "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
