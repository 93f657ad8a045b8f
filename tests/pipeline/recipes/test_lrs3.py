"""prepare_lrs3 on fake LRS3 release trees (empty .mp4 files: the recipe decodes nothing)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cals.shard_format import is_valid_key
from pipeline.recipes import select_clips
from pipeline.recipes.lrs3 import LRS3_VAL_SHARE, prepare_lrs3

#: A trainval/test .txt: header lines, the face-box table, then the word table.
TEXT = (
    "Text:  {text}\nConf:  3\nRef:   {ref}\n\nFRAME X Y W H\n000012 \t0.410 0.200 0.170 0.300 \n"
    "000013 \t0.411 0.201 0.170 0.300 \n\nWORD START END ASDSCORE\n{words}"
)
#: Talk ids with known stable hashes: TRAIN_TALK's is 0.626, VAL_TALK's 0.403 (val at --val 0.5).
TRAIN_TALK, VAL_TALK, TEST_TALK = "0Fi83BHQsMA", "aR2vA2Q8qHY", "5gAZ0kNmAtI"


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def clip(folder: Path, talk: str, name: str, text: str | None) -> None:
    """``folder/talk/name.mp4`` (empty) and, unless ``text`` is None, its ``.txt``."""
    write(folder / talk / f"{name}.mp4")
    if text is not None:
        words = "".join(f"{w} {0.1 * i:.2f} {0.1 * i + 0.08:.2f} 4.0\n" for i, w in enumerate(text.split()))
        write(folder / talk / f"{name}.txt", TEXT.format(text=text, ref=talk, words=words))


def make_release(root: Path) -> Path:
    """pretrain: TRAIN_TALK/00001, VAL_TALK/00001. trainval: TRAIN_TALK/00001 (same id as in
    pretrain), TRAIN_TALK/00002 (no .txt), VAL_TALK/00003, TRAIN_TALK/00004.txt alone, and
    TRAIN_TALK/odd.mp4 and stray.mp4 (bad names). test: TEST_TALK/00001."""
    clip(root / "pretrain", TRAIN_TALK, "00001", "IN THE BEGINNING THERE WAS")
    clip(root / "pretrain", VAL_TALK, "00001", "LONG AGO")
    clip(root / "trainval", TRAIN_TALK, "00001", "HELLO WORLD")
    clip(root / "trainval", TRAIN_TALK, "00002", None)
    clip(root / "trainval", VAL_TALK, "00003", "GOOD MORNING")
    write(root / "trainval" / TRAIN_TALK / "00004.txt", "Text:  NO VIDEO\n")
    write(root / "trainval" / TRAIN_TALK / "odd.mp4")
    write(root / "trainval" / "stray.mp4")
    clip(root / "test", TEST_TALK, "00001", "THANK YOU")
    return root


def ids(clips):
    return {split: sorted(f"{c.extra['subset']}:{c.extra['lrs3_id']}" for c in found) for split, found in clips.items()}


def test_trainval_and_test_with_a_val_carved_by_talk(tmp_path, caplog):
    root = make_release(tmp_path / "lrs3")
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes.lrs3"):
        clips = prepare_lrs3(root, val=0.5)
    assert ids(clips) == {
        "train": [f"trainval:{TRAIN_TALK}/00001", f"trainval:{TRAIN_TALK}/00002"],
        "val": [f"trainval:{VAL_TALK}/00003"],
        "test": [f"test:{TEST_TALK}/00001"],
    }
    every = [c for found in clips.values() for c in found]
    by_id = {c.extra["lrs3_id"]: c for c in every}
    assert by_id[f"{TRAIN_TALK}/00001"].transcript == "HELLO WORLD"
    assert by_id[f"{TRAIN_TALK}/00001"].extra["words"] == [["HELLO", 0.0, 0.08], ["WORLD", 0.1, 0.18]]
    assert by_id[f"{TEST_TALK}/00001"].transcript == "THANK YOU"
    assert by_id[f"{TRAIN_TALK}/00002"].transcript is None and "words" not in by_id[f"{TRAIN_TALK}/00002"].extra
    assert {c.speaker for c in clips["val"]} == {VAL_TALK} and {c.speaker for c in clips["test"]} == {TEST_TALK}
    assert by_id[f"{TEST_TALK}/00001"].path == str(root.resolve() / "test" / TEST_TALK / "00001.mp4")
    assert all(c.dataset == "lrs3" and c.crop is None and c.start_s is None for c in every)
    assert all(is_valid_key(c.key) for c in every) and len({c.key for c in every}) == len(every)
    for split, found in clips.items():
        assert all(c.split == split for c in found) and [c.key for c in found] == sorted(c.key for c in found)
    log = caplog.text
    assert f"{TRAIN_TALK}/00002.txt is missing" in log and "without a transcript" in log
    assert "1 .txt files have no .mp4" in log
    assert "odd.mp4 is not at <video_id>/<NNNNN>.mp4" in log and "stray.mp4 is not at" in log
    assert prepare_lrs3(root, val=0.5) == clips  # stable


def test_default_val_share_and_no_val(tmp_path):
    root = make_release(tmp_path / "lrs3")
    assert LRS3_VAL_SHARE < 0.403  # neither talk hashes into val at the default share
    assert not prepare_lrs3(root)["val"]
    clips = prepare_lrs3(root, val=0.0)
    assert not clips["val"] and len(clips["train"]) == 3


def test_pretrain_is_opt_in_and_follows_the_same_carve(tmp_path):
    root = make_release(tmp_path / "lrs3")
    pretrain = prepare_lrs3(root, subset="pretrain", val=0.5)
    assert ids(pretrain) == {"train": [f"pretrain:{TRAIN_TALK}/00001"], "val": [f"pretrain:{VAL_TALK}/00001"], "test": []}
    assert pretrain["train"][0].transcript == "IN THE BEGINNING THERE WAS"
    everything = prepare_lrs3(root, subset="all", val=0.5)
    assert [len(everything[s]) for s in ("train", "val", "test")] == [3, 2, 1]
    every = [c for found in everything.values() for c in found]
    assert len({c.key for c in every}) == len(every)  # the same id in pretrain and trainval
    # val stays talk-disjoint from train across both folders
    assert not {c.speaker for c in everything["val"]} & {c.speaker for c in everything["train"]}


def test_limit_and_speakers(tmp_path):
    clips = prepare_lrs3(make_release(tmp_path / "lrs3"), subset="all", val=0.5)
    limited = select_clips(clips, limit=1)
    assert [len(limited[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    only = select_clips(clips, speakers=[TEST_TALK])
    assert [len(only[s]) for s in ("train", "val", "test")] == [0, 0, 1]


def test_bad_trees_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_lrs3(tmp_path / "nope")
    root = make_release(tmp_path / "lrs3")
    with pytest.raises(ValueError, match="--subset"):
        prepare_lrs3(root, subset="main")
    with pytest.raises(ValueError, match="sum to < 1"):
        prepare_lrs3(root, val=1.0)
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "test").rmdir()
    assert prepare_lrs3(root, subset="pretrain")["train"]  # pretrain does not need test/
    with pytest.raises(FileNotFoundError, match=r"test is missing \(--subset trainval reads trainval/, test/\)"):
        prepare_lrs3(root)


def test_text_only_release_is_refused(tmp_path):
    root = tmp_path / "lrs3_v0.4_txt"
    for folder in ("trainval", "test"):
        write(root / folder / TRAIN_TALK / "00001.txt", "Text:  ONLY TEXT\n")
    with pytest.raises(FileNotFoundError, match="text-only LRS3 release"):
        prepare_lrs3(root)
