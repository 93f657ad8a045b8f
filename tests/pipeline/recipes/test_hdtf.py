"""prepare_hdtf on fake HDTF downloads + annotation files in the release's formats; one slow
end-to-end run through run_prep on a real fixture clip."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cals.shard_format import is_valid_key
from pipeline.recipes.folder import split_for_speaker
from pipeline.recipes.hdtf import parse_crop, parse_span, prepare_hdtf
from tests.conftest import FIXTURE_VIDEO, needs_fixtures


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_annotations(folder: Path) -> Path:
    """RD and WDA files as published (note the release's spelling 'annotion' and trailing spaces)."""
    write(folder / "RD_video_url.txt", "Radio1 https://www.youtube.com/watch?v=aaa\nRadio11 https://www.youtube.com/watch?v=bbb\n")
    write(
        folder / "RD_annotion_time.txt",
        "Radio1.mp4 00:20-01:35\nRadio11.mp4 00:30-01:00 01:30-02:30 \nRadio99.mp4 00:00-00:10\n",
    )
    # Radio11_1 has no crop: the authors left that clip out.
    write(folder / "RD_crop_wh.txt", "Radio11_0.mp4 412 599 0 599\nRadio1_0.mp4 466 535 10 535\nRadio99_0.mp4 1 2 3 4\n")
    write(folder / "RD_resolution.txt", "Radio1.mp4 720\nRadio11.mp4 1080\n")
    write(folder / "WDA_annotion_time.txt", "BarackObama.mp4 00:02-02:25 03:00-06:45 bad-span")
    write(folder / "WDA_crop_wh.txt", "BarackObama_0.mp4 500 1034 0 1034\nBarackObama_1.mp4 488 1024 0 1024\nBarackObama_2.mp4 1 1 1 1\n")
    return folder


def make_downloads(folder: Path) -> Path:
    write(folder / "radio" / "Radio1.mp4")
    write(folder / "RD_Radio11.webm")  # the upstream download.py's raw name: <GROUP>_<name>
    write(folder / "BarackObama.mkv")
    write(folder / "unannotated.mp4")
    write(folder / ".hidden" / "Radio99.mp4")  # hidden: not found
    return folder


def test_spans_crops_and_keys(tmp_path, caplog):
    annotations = make_annotations(tmp_path / "HDTF_dataset")
    corpus = make_downloads(tmp_path / "raw")
    with caplog.at_level(logging.WARNING, logger="pipeline.recipes.hdtf"):
        clips = prepare_hdtf(corpus, annotations, val=0, test=0)
    assert clips["val"] == [] and clips["test"] == []
    by_key = {c.key: c for c in clips["train"]}
    assert sorted(by_key) == ["BarackObama_0", "BarackObama_1", "Radio11_0", "Radio1_0"]
    radio1 = by_key["Radio1_0"]
    assert (radio1.start_s, radio1.end_s) == (20.0, 95.0)
    assert radio1.crop == (466, 10, 535, 535)  # crop_wh is "x width y height"
    assert radio1.path == str(corpus.resolve() / "radio" / "Radio1.mp4")
    assert radio1.speaker == "Radio1" and radio1.dataset == "hdtf" and radio1.transcript is None
    assert radio1.extra == {
        "group": "RD",
        "clip": "Radio1_0",
        "span": "00:20-01:35",
        "url": "https://www.youtube.com/watch?v=aaa",
        "annotated_height": 720,
    }
    radio11 = by_key["Radio11_0"]
    assert radio11.path.endswith("RD_Radio11.webm") and (radio11.start_s, radio11.end_s) == (30.0, 60.0)
    assert radio11.crop == (412, 0, 599, 599) and radio11.extra["annotated_height"] == 1080
    obama = by_key["BarackObama_1"]
    assert (obama.start_s, obama.end_s) == (180.0, 405.0) and obama.crop == (488, 0, 1024, 1024)
    assert obama.extra["url"] is None and obama.extra["annotated_height"] is None and obama.extra["group"] == "WDA"
    assert all(is_valid_key(key) for key in by_key)
    log = caplog.text
    assert "no crop for Radio11_1" in log
    assert "video Radio99 not found" in log
    assert "bad-span" in log and "BarackObama span 2" in log
    assert str(corpus.resolve() / "unannotated.mp4") in log and "in no HDTF annotation" in log


def test_split_follows_the_speaker_hash(tmp_path):
    clips = prepare_hdtf(make_downloads(tmp_path / "raw"), make_annotations(tmp_path / "ann"), val=0.3, test=0.3)
    for split, split_clips in clips.items():
        for clip in split_clips:
            assert clip.split == split == split_for_speaker(clip.speaker, 0.3, 0.3)


def test_span_and_crop_parsing():
    assert parse_span("01:30-02:30") == (90.0, 150.0)
    assert parse_span("1:02:03-1:02:04.5") == (3723.0, 3724.5)
    for bad in ["01:30", "02:30-01:30", "aa:bb-cc:dd", "01:00-01:00", ":30-01:00"]:
        with pytest.raises(ValueError):
            parse_span(bad)
    assert parse_crop(["483", "390", "7", "390"]) == (483, 7, 390, 390)
    for bad in [["1", "2", "3"], ["1", "0", "3", "4"], ["a", "b", "c", "d"], ["-1", "2", "3", "4"]]:
        with pytest.raises(ValueError):
            parse_crop(bad)


def test_missing_inputs_are_clear_errors(tmp_path):
    corpus = make_downloads(tmp_path / "raw")
    annotations = make_annotations(tmp_path / "ann")
    with pytest.raises(FileNotFoundError, match="--root"):
        prepare_hdtf(tmp_path / "nope", annotations)
    with pytest.raises(FileNotFoundError, match="--annotations"):
        prepare_hdtf(corpus, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="RD_annotion_time.txt"):
        prepare_hdtf(corpus, tmp_path / "empty")
    (annotations / "WDA_crop_wh.txt").unlink()
    with pytest.raises(FileNotFoundError, match="WDA_crop_wh.txt"):
        prepare_hdtf(corpus, annotations)
    with pytest.raises(ValueError, match="sum to < 1"):
        prepare_hdtf(corpus, annotations, val=0.6, test=0.5)


@pytest.mark.slow
@needs_fixtures
def test_two_spans_become_two_cropped_samples(tmp_path):
    from cals.constants import FPS
    from cals.data import iter_samples
    from pipeline.prepare_clip import PrepParams
    from pipeline.run import run_prep
    from pipeline.verify import verify_dataset

    corpus = tmp_path / "raw"
    corpus.mkdir()
    (corpus / "talk.mp4").symlink_to(FIXTURE_VIDEO / "talk_aoc2_retalking.mp4")  # 590x590, 5 s, 25 fps
    annotations = tmp_path / "HDTF_dataset"
    write(annotations / "RD_annotion_time.txt", "talk.mp4 00:00-00:02 00:02-00:04\n")
    write(annotations / "RD_crop_wh.txt", "talk_0.mp4 40 500 30 500\ntalk_1.mp4 60 480 50 480\n")
    clips = prepare_hdtf(corpus, annotations, val=0, test=0)
    assert [c.key for c in clips["train"]] == ["talk_0", "talk_1"]
    out = tmp_path / "out" / "hdtf"
    summary = run_prep(clips, out, PrepParams(detector="none"), workers=1, show_progress=False)
    assert summary.ok == 2
    samples = {s.key: s for s in iter_samples(out)}
    assert sorted(samples) == ["talk_0", "talk_1"]
    for key, crop, (start, end) in [("talk_0", [40, 30, 500, 500], (0, 2)), ("talk_1", [60, 50, 480, 480], (2, 4))]:
        sample = samples[key]
        assert abs(sample.num_frames - (end - start) * FPS) <= 1
        assert sample.meta["source_crop"] == crop
        assert (sample.meta["source_start_s"], sample.meta["source_end_s"]) == (start, end)
        assert sample.meta["split"] == "train" and sample.meta["dataset"] == "hdtf"
    report = verify_dataset(out)
    assert report.ok, report.problems
