"""prepare_lrs2 on fake LRS2 release trees (empty .mp4 files: the recipe decodes nothing)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cals.shard_format import is_valid_key
from pipeline.recipes.lrs2 import parse_transcript, prepare_lrs2

MAIN_TEXT = "Text:  {text}\nConf:  4\n"
PRETRAIN_TEXT = (
    "Text:  {text}\nConf:  3\n\nWORD START END ASDSCORE\n"
    "WHEN 0.12 0.30 5.1\nTHE 0.30 0.41 6.0\nRAIN 0.41 0.90 4.7\n"
)


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_release(root: Path) -> Path:
    """A small lrs2_v1 tree:

    main: 111/00001 (train), 111/00002 (val), 222/00001 (test, listed with a flag),
          333/00009 (listed in train, .mp4 missing), 444/00003.mp4 (in no list),
          555/00004 (train, no .txt).
    pretrain: 111/00001 (with a word table; same id as a main clip).
    """
    main = root / "mvlrs_v1" / "main"
    pretrain = root / "mvlrs_v1" / "pretrain"
    for clip_id, text in [("111/00001", "HELLO WORLD"), ("111/00002", "  GOOD MORNING  "), ("222/00001", "THANK YOU")]:
        write(main / f"{clip_id}.mp4")
        write(main / f"{clip_id}.txt", MAIN_TEXT.format(text=text))
    write(main / "444" / "00003.mp4")
    write(main / "444" / "00003.txt", MAIN_TEXT.format(text="NOBODY LISTS ME"))
    write(main / "555" / "00004.mp4")
    write(pretrain / "111" / "00001.mp4")
    write(pretrain / "111" / "00001.txt", PRETRAIN_TEXT.format(text="WHEN THE RAIN"))
    write(root / "train.txt", "111/00001\n333/00009\n555/00004\n")
    write(root / "val.txt", "111/00002\n\n")
    write(root / "test.txt", "222/00001 NF\n")
    write(root / "pretrain.txt", "111/00001\n")
    return root


def test_main_subset_uses_the_official_lists(tmp_path, caplog):
    root = make_release(tmp_path / "lrs2_v1")
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes.lrs2"):
        clips = prepare_lrs2(root)
    assert sorted(clips) == ["test", "train", "val"]
    ids = {split: sorted(c.extra["lrs2_id"] for c in clips[split]) for split in clips}
    assert ids == {"train": ["111/00001", "555/00004"], "val": ["111/00002"], "test": ["222/00001"]}
    every = [c for split in clips.values() for c in split]
    by_id = {c.extra["lrs2_id"]: c for c in every}
    assert by_id["111/00001"].transcript == "HELLO WORLD"
    assert by_id["111/00002"].transcript == "GOOD MORNING"
    assert by_id["222/00001"].transcript == "THANK YOU"  # the " NF" flag is not part of the id
    assert by_id["555/00004"].transcript is None
    assert by_id["222/00001"].speaker == "222" and by_id["111/00002"].speaker == "111"
    assert by_id["111/00001"].path == str(root.resolve() / "mvlrs_v1" / "main" / "111" / "00001.mp4")
    assert all(c.dataset == "lrs2" and c.extra["subset"] == "main" and "words" not in c.extra for c in every)
    assert all(c.start_s is None and c.end_s is None and c.crop is None for c in every)
    assert all(is_valid_key(c.key) for c in every) and len({c.key for c in every}) == len(every)
    for split, split_clips in clips.items():
        assert all(c.split == split for c in split_clips)
        assert [c.key for c in split_clips] == sorted(c.key for c in split_clips)
    messages = caplog.text
    assert str(root.resolve() / "mvlrs_v1" / "main" / "333" / "00009.mp4") in messages and "missing" in messages
    assert str(root.resolve() / "mvlrs_v1" / "main" / "444" / "00003.mp4") in messages and "in no list" in messages
    assert str(root.resolve() / "mvlrs_v1" / "main" / "555" / "00004.txt") in messages
    assert "pretrain" not in {c.extra["subset"] for c in every}
    assert prepare_lrs2(root) == clips  # stable


def test_pretrain_goes_to_train_with_word_timings(tmp_path):
    root = make_release(tmp_path / "lrs2_v1")
    clips = prepare_lrs2(root, subset="pretrain")
    assert [len(clips[s]) for s in ("train", "val", "test")] == [1, 0, 0]
    clip = clips["train"][0]
    assert clip.extra["subset"] == "pretrain" and clip.transcript == "WHEN THE RAIN"
    assert clip.extra["words"] == [["WHEN", 0.12, 0.30], ["THE", 0.30, 0.41], ["RAIN", 0.41, 0.90]]
    assert clip.path.endswith("mvlrs_v1/pretrain/111/00001.mp4")


def test_all_keeps_main_and_pretrain_apart(tmp_path):
    root = make_release(tmp_path / "lrs2_v1")
    clips = prepare_lrs2(root, subset="all")
    every = [c for split in clips.values() for c in split]
    same_id = [c for c in every if c.extra["lrs2_id"] == "111/00001"]
    assert sorted(c.extra["subset"] for c in same_id) == ["main", "pretrain"]
    assert len({c.key for c in same_id}) == 2
    assert all(is_valid_key(c.key) for c in every) and len({c.key for c in every}) == len(every) == 5


def test_list_files_inside_mvlrs_v1_are_found(tmp_path):
    root = make_release(tmp_path / "lrs2_v1")
    for name in ["train.txt", "val.txt", "test.txt"]:
        (root / name).rename(root / "mvlrs_v1" / name)
    assert len(prepare_lrs2(root)["train"]) == 2


def test_missing_parts_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_lrs2(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no mvlrs_v1"):
        prepare_lrs2(tmp_path / "empty")
    root = make_release(tmp_path / "lrs2_v1")
    (root / "pretrain.txt").unlink()
    assert prepare_lrs2(root, subset="main")["train"]  # main does not need pretrain.txt
    with pytest.raises(FileNotFoundError, match="pretrain.txt"):
        prepare_lrs2(root, subset="pretrain")
    with pytest.raises(FileNotFoundError, match="pretrain.txt"):
        prepare_lrs2(root, subset="all")
    (root / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt"):
        prepare_lrs2(root, subset="main")
    with pytest.raises(ValueError, match="--subset"):
        prepare_lrs2(root, subset="everything")


def test_missing_clip_folder_is_an_error(tmp_path):
    root = make_release(tmp_path / "lrs2_v1")
    for path in sorted((root / "mvlrs_v1" / "pretrain").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "mvlrs_v1" / "pretrain").rmdir()
    with pytest.raises(FileNotFoundError, match="pretrain"):
        prepare_lrs2(root, subset="pretrain")


def test_odd_list_lines_and_table_rows_are_logged(tmp_path, caplog):
    root = make_release(tmp_path / "lrs2_v1")
    write(root / "val.txt", "111/00002\nnot-an-id\n111/00001\n")  # 111/00001 is already in train
    text = tmp_path / "odd.txt"
    write(text, "Conf:  1\n\nWORD START END ASDSCORE\nGOOD 0.1 0.2 1.0\nBAD x y z\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes.lrs2"):
        clips = prepare_lrs2(root)
        transcript, words = parse_transcript(text)
    assert [c.extra["lrs2_id"] for c in clips["val"]] == ["111/00002"]
    assert "not-an-id" in caplog.text and "already in the train list" in caplog.text
    assert transcript is None and words == [["GOOD", 0.1, 0.2]]
    assert f"{text}:5" in caplog.text and "no 'Text:' line" in caplog.text
