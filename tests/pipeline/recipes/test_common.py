"""The steps the recipes share (pipeline.recipes): corpus_root, carve_val, by_split."""

from __future__ import annotations

import pytest

from pipeline.manifest import ClipSource
from pipeline.recipes import by_split, carve_val, corpus_root

#: Speakers with known stable hashes: 0.403 and 0.626.
LOW, HIGH = "aR2vA2Q8qHY", "0Fi83BHQsMA"


def clip(key: str, split: str) -> ClipSource:
    return ClipSource(key=key, path=f"/x/{key}.mp4", dataset="d", split=split, speaker="s")


def test_carve_val_moves_only_train_clips_of_low_hashed_speakers():
    assert carve_val("train", LOW, 0.5) == "val" and carve_val("train", HIGH, 0.5) == "train"
    assert carve_val("train", LOW, 0.0) == "train"
    # an official test (or val) clip keeps its split whatever its speaker's hash
    assert carve_val("test", LOW, 0.5) == "test" and carve_val("val", HIGH, 0.5) == "val"
    with pytest.raises(ValueError, match="sum to < 1"):
        carve_val("train", LOW, 1.0)


def test_by_split_sorts_keeps_empty_splits_and_refuses_odd_ones():
    grouped = by_split([clip("b", "train"), clip("a", "train"), clip("c", "test")])
    assert {split: [c.key for c in found] for split, found in grouped.items()} == {"train": ["a", "b"], "val": [], "test": ["c"]}
    with pytest.raises(ValueError, match="split 'dev'"):
        by_split([clip("a", "dev")])


def test_corpus_root(tmp_path):
    assert corpus_root(tmp_path) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match=r"^--root .*missing is not a folder$"):
        corpus_root(tmp_path / "missing")
