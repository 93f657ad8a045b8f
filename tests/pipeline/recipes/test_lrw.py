"""prepare_lrw on fake LRW trees (empty .mp4 files: the recipe decodes nothing)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cals.shard_format import is_valid_key
from pipeline.recipes.lrw import prepare_lrw

METADATA = "Text: {word}\nConf: 3\nDuration: {duration} seconds\n"


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_lrw(root: Path) -> Path:
    """lipread_mp4 with ABOUT (train 00001 + 00002, val 00001, test 00001) and ABSOLUTELY
    (train 00001 without .txt), plus odd files."""
    lrw = root / "lipread_mp4"
    for word, split, number, duration in [
        ("ABOUT", "train", "00001", "0.53"),
        ("ABOUT", "train", "00002", "0.41"),
        ("ABOUT", "val", "00001", "0.60"),
        ("ABOUT", "test", "00001", "0.35"),
    ]:
        write(lrw / word / split / f"{word}_{number}.mp4")
        write(lrw / word / split / f"{word}_{number}.txt", METADATA.format(word=word, duration=duration))
    write(lrw / "ABSOLUTELY" / "train" / "ABSOLUTELY_00001.mp4")
    write(lrw / "ABOUT" / "stray.mp4")  # not in a split folder
    write(lrw / "ABOUT" / "train" / "AGAIN_00001.mp4")  # wrong word
    write(lrw / "ABOUT" / "extra" / "ABOUT_00009.mp4")  # not a split
    return root


def test_splits_labels_and_durations(tmp_path, caplog):
    root = make_lrw(tmp_path / "lrw")
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes.lrw"):
        clips = prepare_lrw(root)
    assert {split: len(c) for split, c in clips.items()} == {"train": 3, "val": 1, "test": 1}
    every = [c for split in clips.values() for c in split]
    by_id = {(c.split, Path(c.path).stem): c for c in every}
    about = by_id[("train", "ABOUT_00001")]
    assert about.extra == {"label": "ABOUT", "word_duration_s": 0.53} and about.transcript == "ABOUT"
    assert by_id[("val", "ABOUT_00001")].extra["word_duration_s"] == 0.60
    assert by_id[("train", "ABSOLUTELY_00001")].extra == {"label": "ABSOLUTELY", "word_duration_s": None}
    assert "ABSOLUTELY_00001.txt is missing" in caplog.text
    # Clip numbers restart per split: same file name, different clips, speakers and keys.
    assert by_id[("train", "ABOUT_00001")].speaker != by_id[("val", "ABOUT_00001")].speaker
    assert all(c.dataset == "lrw" for c in every)
    assert all(is_valid_key(c.key) for c in every) and len({c.key for c in every}) == len(every)
    assert len({c.speaker for c in every}) == len(every)
    for name in ["stray.mp4", "AGAIN_00001.mp4", "ABOUT_00009.mp4"]:
        assert name in caplog.text
    assert "AGAIN" not in {c.extra["label"] for c in every}


def test_lipread_mp4_itself_is_accepted(tmp_path):
    root = make_lrw(tmp_path / "lrw")
    assert prepare_lrw(root / "lipread_mp4") == prepare_lrw(root)


def test_not_an_lrw_tree_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_lrw(tmp_path / "nope")
    write(tmp_path / "other" / "a" / "b.mp4")
    with pytest.raises(FileNotFoundError, match="lipread_mp4"):
        prepare_lrw(tmp_path / "other")


def test_txt_without_duration_is_logged(tmp_path, caplog):
    root = make_lrw(tmp_path / "lrw")
    odd = root / "lipread_mp4" / "ABOUT" / "test" / "ABOUT_00001.txt"
    write(odd, "Text: ABOUT\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes.lrw"):
        clips = prepare_lrw(root)
    assert clips["test"][0].extra["word_duration_s"] is None
    assert str(odd) in caplog.text
