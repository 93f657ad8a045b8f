from pathlib import Path

import pytest

from cals.shard_format import is_valid_key
from pipeline.recipes.folder import make_key, prepare_folder, split_for_speaker


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_walks_videos_with_speaker_from_parent_and_stable_keys(tmp_path):
    for name in ["a/one.mp4", "a/two.MKV", "b/x.avi", "b/notes.txt", ".hidden/z.mp4", "c/.z.mp4", "c/sub/y.webm", "d/odd name $(x) 'é.mov"]:
        touch(tmp_path / "corpus" / name)
    clips = prepare_folder(tmp_path / "corpus", val=0, test=0)
    train = clips["train"]
    assert sorted(Path(c.path).name for c in train) == sorted(["one.mp4", "two.MKV", "x.avi", "y.webm", "odd name $(x) 'é.mov"])
    speakers = {Path(c.path).name: c.speaker for c in train}
    assert speakers["one.mp4"] == "a" and speakers["y.webm"] == "sub"
    assert all(is_valid_key(c.key) for c in train)
    assert len({c.key for c in train}) == len(train)
    assert all(c.dataset == "corpus" for c in train)
    again = prepare_folder(tmp_path / "corpus", val=0, test=0)
    assert [c.key for c in again["train"]] == [c.key for c in train]


def test_same_stem_different_extension_get_different_keys():
    assert make_key("a/clip.mp4") != make_key("a/clip.mkv")
    assert "." not in make_key("a.b/c.d.mp4")


def test_no_speaker_crosses_splits_and_shares_are_respected():
    speakers = [f"spk{i}" for i in range(4000)]
    splits = [split_for_speaker(s, 0.1, 0.2) for s in speakers]
    assert abs(splits.count("test") / 4000 - 0.2) < 0.03
    assert abs(splits.count("val") / 4000 - 0.1) < 0.03
    assert [split_for_speaker(s, 0.1, 0.2) for s in speakers] == splits  # stable


def test_missing_root_and_bad_shares_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="sum to < 1"):
        split_for_speaker("a", 0.6, 0.5)
