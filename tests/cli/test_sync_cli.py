"""cals-sync through its real command line (Typer's CliRunner). The released weights are not
available here, so the model is a randomly initialised SyncNetV2 saved as a state dict: the
numbers are meaningless, the plumbing and output format are what is checked."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from typer.testing import CliRunner

from cals.models.syncnet_v2 import SyncNetV2
from cals.shard_format import ClipSample, encode_sample
from cli.sync import app
from tests.conftest import FIXTURE_VIDEO, needs_fixtures

runner = CliRunner()
SYNCNET_EXAMPLE = FIXTURE_VIDEO / "syncnet_example.avi"


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random_syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), path)
    return path


def one_line_error(result) -> str:
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return " ".join(result.output.split())


def test_missing_model_names_the_file_and_where_to_get_it(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    result = runner.invoke(app, ["score", str(video), "--model", str(tmp_path / "syncnet_v2.model")])
    assert result.exit_code == 2
    message = one_line_error(result)
    assert str(tmp_path / "syncnet_v2.model") in message
    assert "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model" in message


def test_missing_path_is_a_one_line_error(tmp_path, random_model):
    result = runner.invoke(app, ["score", str(tmp_path / "missing.mp4"), "--model", str(random_model)])
    assert result.exit_code == 2
    assert "does not exist" in one_line_error(result)


def test_a_folder_without_videos_is_refused(tmp_path, random_model):
    result = runner.invoke(app, ["score", str(tmp_path), "--model", str(random_model)])
    assert result.exit_code == 2 and "no video files" in one_line_error(result)


def test_a_wrong_state_dict_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, bad)
    result = runner.invoke(app, ["score", str(tmp_path), "--model", str(bad)])
    assert result.exit_code == 2 and "missing keys" in one_line_error(result)


def test_unusable_videos_are_reported_not_dropped(tmp_path, random_model):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "empty.mp4").write_bytes(b"")
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", str(tmp_path / "videos"), "--model", str(random_model), "--csv", str(out), "--detector", "none"])
    assert result.exit_code == 1, result.output
    rows = list(csv.DictReader(out.open()))
    assert rows == [{"clip": "empty.mp4", "num_frames": "", "offset": "", "min_dist": "", "conf": "", "error": "empty_file: " + str((tmp_path / "videos" / "empty.mp4").resolve())}]


def write_dataset(folder, clips: dict[str, int]) -> None:
    """A minimal cals-prep dataset folder: one shard of synthetic samples plus a manifest file."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(folder / "test-000000.tar")) as sink:
        for key, frames in clips.items():
            sample = ClipSample(
                key=key,
                frames=rng.integers(0, 256, (frames, 128, 128, 3), dtype=np.uint8),
                mel=np.zeros((4 * frames, 80), np.float16),
                audio=rng.normal(0, 2000, 640 * frames).astype(np.int16),
                boxes=np.tile(np.array([0, 0, 128, 128], np.float32), (frames, 1)),
                scores=np.ones(frames, np.float32),
            )
            sink.write(encode_sample(sample))
    (folder / "manifest.parquet").write_bytes(b"")  # only its presence marks a dataset folder


def test_scores_a_shard_dataset(tmp_path, random_model):
    write_dataset(tmp_path / "ds", {"clip_a": 12, "clip_b": 5})
    out = tmp_path / "scores.json"
    result = runner.invoke(app, ["score", str(tmp_path / "ds"), "--model", str(random_model), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    by_clip = {row["clip"]: row for row in report["clips"]}
    assert by_clip["clip_a"]["num_windows"] == 12 - 5 and -15 <= by_clip["clip_a"]["offset"] <= 15
    assert len(by_clip["clip_a"]["mean_dists"]) == 31
    assert by_clip["clip_b"]["offset"] is None and "too short" in by_clip["clip_b"]["error"]
    assert report["summary"]["clips"] == 1 and report["summary"]["failed"] == 1
    assert "clip_a" in result.output and "LSE-D" in result.output and "LSE-C" in result.output


@needs_fixtures
@pytest.mark.skipif(not SYNCNET_EXAMPLE.is_file(), reason=f"{SYNCNET_EXAMPLE} is absent")
def test_scores_the_syncnet_example_video(tmp_path, random_model):
    json_out, csv_out = tmp_path / "scores.json", tmp_path / "scores.csv"
    result = runner.invoke(
        app,
        # the clip already is a 224x224 face crop, scored whole as syncnet_python's demo does
        ["score", str(SYNCNET_EXAMPLE), "--model", str(random_model), "--json", str(json_out), "--csv", str(csv_out),
         "--detector", "none"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(json_out.read_text())
    (clip,) = report["clips"]
    assert clip["clip"] == "syncnet_example.avi" and clip["error"] is None
    assert clip["num_frames"] == 317 and clip["num_windows"] == 317 - 5
    assert isinstance(clip["offset"], int) and -15 <= clip["offset"] <= 15
    assert clip["min_dist"] > 0 and clip["conf"] >= 0
    assert clip["min_dist"] == pytest.approx(min(clip["mean_dists"]))
    assert report["summary"]["clips"] == 1 and report["summary"]["mean_min_dist"] == pytest.approx(clip["min_dist"])
    rows = list(csv.DictReader(csv_out.open()))
    assert list(rows[0]) == ["clip", "num_frames", "offset", "min_dist", "conf", "error"]
    assert int(rows[0]["offset"]) == clip["offset"]
    for heading in ("clip", "offset", "LSE-D", "LSE-C", "syncnet_example.avi"):
        assert heading in result.output


def test_a_missing_s3fd_file_names_it_and_where_to_get_it(tmp_path, random_model):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    missing = tmp_path / "sfd_face.pth"
    result = runner.invoke(app, ["score", str(video), "--model", str(random_model), "--protocol", "syncnet_python", "--s3fd", str(missing)])
    assert result.exit_code == 2
    message = one_line_error(result)
    assert str(missing) in message and "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/sfd_face.pth" in message


def test_s3fd_weights_of_another_layout_are_refused(tmp_path, random_model):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    wrong = tmp_path / "s3fd-619a316812.pth"  # face-alignment's file: conv1_1 ... names
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    result = runner.invoke(app, ["score", str(video), "--model", str(random_model), "--protocol", "syncnet_python", "--s3fd", str(wrong)])
    assert result.exit_code == 2
    message = one_line_error(result)
    assert str(wrong) in message and "unexpected keys: conv1_1.weight" in message and "sfd_face.pth" in message


def test_s3fd_outside_the_syncnet_python_protocol_is_refused(tmp_path, random_model):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    result = runner.invoke(app, ["score", str(video), "--model", str(random_model), "--protocol", "precropped", "--s3fd", str(tmp_path / "sfd_face.pth")])
    assert result.exit_code == 2 and "--s3fd" in one_line_error(result)
