"""THE LEARNING CHECK of CALS, and the whole ``cals-train`` recipe, on a real fixture clip.

One talking-head clip (talk_aoc2_retalking, 125 frames) goes through the real pipeline:
``run_prep`` (MediaPipe crops) → lip units from a randomly initialised SyncNet v2
(``pipeline.units.add_lip_units``; random features of the mouth frames: enough to exercise the
A2L stage, not meaningful units) → the clip is cut in time: frames ``[0, 0.8 T)`` become the
train split, the last 20 % the val split → a tiny A2L run → CALS (small widths) overfits the
train frames.

The held-out frames are then generated as the paper does at inference: the held-out segment is
a test video, its first frame the reference, every frame's upper half the pose prior, A2L on its
audio. On the frames after the reference, the generated frames must beat *copy the reference*
on PSNR and L1.

Threads: one torch thread. On the 2 shared cores of CI, 2 threads made a step 5-30x slower
(OpenMP threads spin-waiting on each other), 1 thread keeps the run at about a minute.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.conftest import FIXTURE_VIDEO, needs_fixtures

pytestmark = [needs_fixtures, pytest.mark.slow]

CLIP = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"
TRAIN_SHARE = 0.8
STEPS = 300
WINDOW = 10


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The clip prepared with the real pipeline (no lip units yet)."""
    from pipeline.prepare_clip import PrepParams
    from pipeline.recipes.folder import prepare_folder
    from pipeline.run import run_prep

    root = tmp_path_factory.mktemp("corpus")
    (root / "speaker").mkdir()
    (root / "speaker" / CLIP.name).symlink_to(CLIP)
    out = tmp_path_factory.mktemp("shards") / "one"
    summary = run_prep(prepare_folder(root, val=0, test=0), out, PrepParams(detector="mediapipe"), workers=1, show_progress=False)
    assert summary.rows[0]["status"] == "ok", summary.rows
    return out


def split_in_time(sample, folder, cut):
    """train = frames [0, cut), val = frames [cut, T) of one sample (PNG frames: lossless)."""
    from cals.shard_format import ClipSample, encode_sample

    folder.mkdir(parents=True)
    for split, first, last in (("train", 0, cut), ("val", cut, sample.num_frames)):
        part = ClipSample(key=sample.key, frames=sample.frames[first:last], mel=sample.mel[4 * first : 4 * last],
                          audio=sample.audio[640 * first : 640 * last], boxes=sample.boxes[first:last],
                          scores=sample.scores[first:last], meta={**sample.meta, "split": split}, lip=sample.lip[first:last])
        with wds.TarWriter(str(folder / f"{split}-000000.tar"), encoder=False) as tar:
            tar.write(encode_sample(part, codec="png"))


def test_cals_beats_copying_the_reference_on_held_out_frames(prepared, tmp_path):
    from cals.data import iter_samples
    from cals.models.a2l import A2LConfig
    from cals.models.cals_model import CalsConfig, load_cals_model
    from cals.models.discriminator import DiscriminatorConfig
    from cals.models.l2f import LipToFaceConfig
    from cals.models.syncnet_v2 import SyncNetV2
    from cals.train.a2l import A2LTask
    from cals.train.cals import CalsLossConfig, CalsTask, psnr
    from cals.train.config import TrainConfig
    from cals.train.loop import run
    from pipeline.units import add_lip_units

    dataset = tmp_path / "one"
    shutil.copytree(prepared, dataset)
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), tmp_path / "syncnet_random.model")
    add_lip_units(dataset, tmp_path / "syncnet_random.model", workers=1, show_progress=False, fail_fast=True)
    sample = next(iter_samples(dataset))
    T = sample.num_frames
    cut = int(TRAIN_SHARE * T)
    split_in_time(sample, tmp_path / "split", cut)
    shards = str(tmp_path / "split")

    a2l = A2LConfig(unit_dim=sample.lip.shape[1], layers=1, d_model=32, ffn=64, heads=2, dropout=0.0)
    run(A2LTask(a2l, lip_kind=sample.meta["lip_units"]["kind"]),
        TrainConfig(shards=shards, out=str(tmp_path / "a2l"), steps=10, batch_size=2, lr=1e-3, window=25, ckpt_every=10), show_progress=False)
    config = CalsConfig(a2l=a2l, l2f=LipToFaceConfig(unit_dim=a2l.unit_dim, widths=(8, 16, 16, 32, 32, 32), lip_channels=16), window=WINDOW)
    task = CalsTask(config, CalsLossConfig(), DiscriminatorConfig((8, 16, 16, 32)), a2l_init=str(tmp_path / "a2l"), preview_every=STEPS)
    metrics = run(task, TrainConfig(shards=shards, out=str(tmp_path / "cals"), steps=STEPS, batch_size=1, lr=2e-3, window=WINDOW,
                                    ckpt_every=STEPS, log_every=50, val_batches=1), show_progress=False)
    assert (tmp_path / "cals" / "previews" / f"preview-{STEPS:08d}.png").is_file()

    model = load_cals_model(tmp_path / "cals")
    frames = torch.from_numpy(sample.frames).permute(0, 3, 1, 2).float() / 255.0
    held_out = frames[cut:]
    mel = torch.from_numpy(sample.mel[4 * cut :].astype(np.float32))[None]
    reference = held_out[0]  # the paper's inference: the test video's first frame
    generated = model.generate(mel, reference, held_out)[1:]
    truth = held_out[1:]
    copy = reference[None].expand_as(truth)
    paste = torch.cat([truth[..., :64, :], copy[..., 64:, :]], dim=-2)  # upper half given, mouth copied
    scores = {name: (float(psnr(out, truth).mean()), float((out - truth).abs().mean()))
              for name, out in (("generated", generated), ("copy", copy), ("paste", paste))}
    lower = {name: float(psnr(out[..., 64:, :], truth[..., 64:, :]).mean()) for name, out in (("generated", generated), ("copy", copy))}
    report = f"held-out frames {T - cut - 1}: {scores}; lower-half PSNR {lower}; last train metrics {metrics}"
    print(report)
    assert scores["generated"][0] > scores["copy"][0] + 1.0, report
    assert scores["generated"][1] < scores["copy"][1], report
    assert metrics["recon"] < 0.05, report  # the train frames were fitted


def test_the_whole_recipe_runs_and_resumes(prepared, tmp_path):
    """``cals-train --shards D --out R`` with no command: critic → lip units from it → A2L →
    CALS; the same command again skips every stage."""
    from typer.testing import CliRunner

    from cals.models.cals_model import load_cals_model
    from cals.train.checkpoint import read_json
    from cli.train import app

    dataset = tmp_path / "one"
    shutil.copytree(prepared, dataset)
    command = ["--shards", str(dataset), "--out", str(tmp_path / "runs"), "--steps-per-stage", "2", "--batch-size", "2",
               "--tiny", "--quiet", "--workers", "1"]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    assert "sync trained" in first.output and "units added" in first.output and "cals trained" in first.output, first.output
    for stage in ("sync", "a2l", "cals"):
        assert read_json(tmp_path / "runs" / stage / "latest.json")["step"] == 2
    cals = read_json(tmp_path / "runs" / "cals" / "config.json")["task_config"]
    assert cals["critic"] == str(tmp_path / "runs" / "sync") and cals["a2l_init"] == str(tmp_path / "runs" / "a2l")
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert "sync skipped" in again.output and "units present" in again.output and "a2l skipped" in again.output \
        and "cals skipped" in again.output, again.output
    model = load_cals_model(tmp_path / "runs" / "cals")
    assert model.generate(torch.zeros(1, 40, 80), torch.rand(3, 128, 128), torch.rand(10, 3, 128, 128)).shape == (10, 3, 128, 128)
