"""prepare_voxceleb2 on fake VoxCeleb2 release trees (empty .mp4 files: the recipe decodes nothing)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cals.shard_format import is_valid_key
from pipeline.recipes import select_clips
from pipeline.recipes.voxceleb2 import VOX2_VAL_SHARE, prepare_voxceleb2

#: Speaker ids with known stable hashes: id00012's is 0.724, id00020's 0.074 (val at --val 0.1).
TRAIN_ID, VAL_ID, TEST_ID = "id00012", "id00020", "id00017"


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def make_release(root: Path) -> Path:
    """dev/mp4: id00012 with two videos (3 clips), id00020 (1 clip), plus odd files; dev/aac
    beside it; test/mp4: id00017 (1 clip)."""
    for relative in (f"{TRAIN_ID}/21Uxsk56VDQ/00001", f"{TRAIN_ID}/21Uxsk56VDQ/00002", f"{TRAIN_ID}/_z_KoF4BD8k/00001",
                     f"{VAL_ID}/0Ij6sM3cEGk/00001"):
        touch(root / "dev" / "mp4" / f"{relative}.mp4")
    touch(root / "dev" / "aac" / TRAIN_ID / "21Uxsk56VDQ" / "00001.m4a")
    touch(root / "dev" / "mp4" / TRAIN_ID / "loose.mp4")  # not in a video folder
    touch(root / "dev" / "mp4" / "celebrity" / "abc" / "00001.mp4")  # not an id folder
    touch(root / "test" / "mp4" / TEST_ID / "9mQ11vBs1wc" / "00001.mp4")
    return root


def test_dev_train_val_by_speaker_and_official_test(tmp_path, caplog):
    root = make_release(tmp_path / "vox2")
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes.voxceleb2"):
        clips = prepare_voxceleb2(root, val=0.1)
    found = {split: sorted(c.extra["voxceleb2_id"] for c in split_clips) for split, split_clips in clips.items()}
    assert found == {
        "train": [f"{TRAIN_ID}/21Uxsk56VDQ/00001", f"{TRAIN_ID}/21Uxsk56VDQ/00002", f"{TRAIN_ID}/_z_KoF4BD8k/00001"],
        "val": [f"{VAL_ID}/0Ij6sM3cEGk/00001"],
        "test": [f"{TEST_ID}/9mQ11vBs1wc/00001"],
    }
    every = [c for split_clips in clips.values() for c in split_clips]
    assert {split: {c.speaker for c in split_clips} for split, split_clips in clips.items()} == {
        "train": {TRAIN_ID}, "val": {VAL_ID}, "test": {TEST_ID}
    }
    assert all(c.dataset == "voxceleb2" and c.transcript is None for c in every)
    assert {c.extra["subset"] for c in clips["train"] + clips["val"]} == {"dev"} and clips["test"][0].extra["subset"] == "test"
    assert clips["test"][0].extra["video"] == "9mQ11vBs1wc"
    assert clips["test"][0].path == str(root.resolve() / "test" / "mp4" / TEST_ID / "9mQ11vBs1wc" / "00001.mp4")
    assert all(is_valid_key(c.key) for c in every) and len({c.key for c in every}) == len(every)
    for split, split_clips in clips.items():
        assert all(c.split == split for c in split_clips) and [c.key for c in split_clips] == sorted(c.key for c in split_clips)
    assert "loose.mp4 is not at <idNNNNN>/<video>/<clip>.mp4" in caplog.text
    assert "speaker folder 'celebrity' is not id + digits" in caplog.text
    assert prepare_voxceleb2(root, val=0.1) == clips  # stable
    assert VOX2_VAL_SHARE < 0.074 and not prepare_voxceleb2(root)["val"]  # the default share: no val here


def test_subsets_limit_and_speakers(tmp_path):
    root = make_release(tmp_path / "vox2")
    dev = prepare_voxceleb2(root, subset="dev", val=0.1)
    assert [len(dev[s]) for s in ("train", "val", "test")] == [3, 1, 0]
    test = prepare_voxceleb2(root, subset="test")
    assert [len(test[s]) for s in ("train", "val", "test")] == [0, 0, 1]
    clips = prepare_voxceleb2(root, val=0.1)
    limited = select_clips(clips, limit=2)
    assert [len(limited[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    only = select_clips(clips, speakers=[TRAIN_ID])
    assert [len(only[s]) for s in ("train", "val", "test")] == [3, 0, 0]


def test_bad_trees_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_voxceleb2(tmp_path / "nope")
    root = make_release(tmp_path / "vox2")
    with pytest.raises(ValueError, match="--subset"):
        prepare_voxceleb2(root, subset="train")
    with pytest.raises(ValueError, match="sum to < 1"):
        prepare_voxceleb2(root, val=-0.1)
    # only the audio tree of test: named as such
    (root / "test" / "mp4" / TEST_ID / "9mQ11vBs1wc" / "00001.mp4").unlink()
    for folder in ("9mQ11vBs1wc", ""):
        (root / "test" / "mp4" / TEST_ID / folder).rmdir()
    (root / "test" / "mp4").rmdir()
    touch(root / "test" / "aac" / TEST_ID / "9mQ11vBs1wc" / "00001.m4a")
    with pytest.raises(FileNotFoundError, match="only the audio-only test/aac/ is there"):
        prepare_voxceleb2(root)
    assert prepare_voxceleb2(root, subset="dev")["train"]  # dev alone does not need test/
    with pytest.raises(FileNotFoundError, match="holding dev/, test/"):
        prepare_voxceleb2(tmp_path)
