"""cals-prep through its real command line (Typer's CliRunner): errors, folder → verify → inspect."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from cli.prep import app
from tests.conftest import FIXTURE_VIDEO, needs_fixtures

runner = CliRunner()


def test_missing_root_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["folder", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "does not exist or is not a folder" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; unwritability is tested with a file in the way")
def test_unwritable_out_as_user(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "ro").mkdir(mode=0o500)
    result = runner.invoke(app, ["folder", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "ro" / "x")])
    assert result.exit_code == 2 and "not writable" in result.output


def test_out_that_cannot_be_created_is_a_one_line_error(tmp_path):
    root = tmp_path / "root" / "spk"
    root.mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"x")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    result = runner.invoke(app, ["folder", "--root", str(tmp_path / "root"), "--out", str(blocker / "shards")])
    assert result.exit_code == 2
    assert "not writable" in result.output and "Traceback" not in result.output


def test_folder_without_videos_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    result = runner.invoke(app, ["folder", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no video files" in result.output


def test_sfd_without_weights_names_the_file_and_folder(tmp_path, monkeypatch):
    (tmp_path / "root" / "spk").mkdir(parents=True)
    (tmp_path / "root" / "spk" / "a.mp4").write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = runner.invoke(app, ["folder", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"), "--detector", "sfd"])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "s3fd-619a316812.pth" in flat and str(tmp_path / "torch" / "hub" / "checkpoints") in flat


def test_verify_of_a_non_dataset_fails(tmp_path):
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "manifest.parquet is missing" in " ".join(result.output.split())


@needs_fixtures
def test_folder_verify_inspect_and_corruption_is_caught(tmp_path):
    root = tmp_path / "videos" / "speaker1"
    root.mkdir(parents=True)
    (root / "clip.mp4").symlink_to(FIXTURE_VIDEO / "talk_aoc2_retalking.mp4")
    (root / "silent.mp4").symlink_to(FIXTURE_VIDEO / "silent_yongen_musetalk.mp4")
    out = tmp_path / "shards"
    result = runner.invoke(app, ["folder", "--root", str(tmp_path / "videos"), "--out", str(out), "--workers", "1", "--val", "0", "--test", "0"])
    assert result.exit_code == 0, result.output
    assert "no_audio" in result.output and "clips ok" in result.output  # the closing summary table
    dataset = out / "videos"
    result = runner.invoke(app, ["verify", str(dataset)])
    assert result.exit_code == 0 and "1 samples" in result.output and "OK" in result.output
    png = tmp_path / "sheet.png"
    result = runner.invoke(app, ["inspect", str(dataset), "--png", str(png)])
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(png) as image:
        one_sample = 16 + (128 + 6) + 48  # caption, crops, mel
        assert image.size[0] == 8 * (128 + 6)
        assert image.size[1] > one_sample + 200, "the manifest histograms are drawn under the samples"
    result = runner.invoke(app, ["stats", str(dataset)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    train_row = next(line for line in lines if "train" in line)
    assert [cell.strip() for cell in train_row.strip("│ ").split("│")][:3] == ["train", "1", "1"]
    assert "no_audio" in result.output
    # Flip bytes inside the frames member of the shard: verify must say so and exit 1.
    shard = next(dataset.glob("train-*.tar"))
    data = bytearray(shard.read_bytes())
    start = data.index(b"frames.mjpeg") + 512 + 2000
    data[start : start + 4000] = bytes(4000)
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(dataset)])
    assert result.exit_code == 1, result.output
    assert "problems" in result.output


@needs_fixtures
def test_one_command_from_videos_to_shards_with_lip_units(tmp_path):
    import torch

    from cals.data import iter_samples
    from cals.models.syncnet_v2 import SyncNetV2

    root = tmp_path / "videos" / "speaker1"
    root.mkdir(parents=True)
    (root / "clip.mp4").symlink_to(FIXTURE_VIDEO / "talk_aoc2_retalking.mp4")
    model = tmp_path / "syncnet_v2_random.model"  # the real weights are not available here
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), model)
    result = runner.invoke(app, ["folder", "--root", str(tmp_path / "videos"), "--out", str(tmp_path / "shards"), "--workers", "1",
                                 "--val", "0", "--test", "0", "--detector", "none", "--units", str(model), "--quiet"])
    assert result.exit_code == 0, result.output
    (sample,) = list(iter_samples(tmp_path / "shards" / "videos", frames=False))
    assert sample.lip is not None and sample.lip.shape == (sample.num_frames, 1024)
    assert sample.meta["lip_units"]["kind"] == "syncnet_v2"
