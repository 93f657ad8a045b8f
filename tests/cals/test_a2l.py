"""Audio-to-Lip: masking, model, loss, the training task through the real loop and CLI."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cals.losses import masked_unit_loss
from cals.models.a2l import A2LConfig, AudioToLip, span_mask
from cals.train.checkpoint import load_weights, read_json
from cli.train import app
from tests.cals.test_stream import write_dataset

TINY = ["--layers", "1", "--d-model", "32", "--ffn", "64", "--heads", "2", "--dropout", "0"]


@pytest.mark.parametrize("length", [5, 10, 23, 50, 250])
def test_span_masks_are_non_overlapping_5_frame_spans_covering_half(length):
    rng = random.Random(0)
    hits = np.zeros(length)
    for _ in range(400):
        mask = span_mask(length, 5, 0.5, rng).numpy()
        runs = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
        starts, ends = np.flatnonzero(runs == 1), np.flatnonzero(runs == -1)
        assert all((e - s) % 5 == 0 for s, e in zip(starts, ends)), "masked runs are whole 5-frame spans"
        spans = max(1, round(0.5 * length / 5))
        assert mask.sum() == 5 * spans
        assert abs(mask.mean() - 0.5) <= 2.5 / length + 1e-9
        hits += mask
    if length >= 20:
        share = hits / 400
        # Edge frames are masked less often (frame 0 only when the first span starts at 0: for
        # 23 frames, 2 spans, P = 1 - (13/14)^2 = 0.14); none is never or always masked.
        assert share.min() > 0.1 and share.max() < 0.8, share


def test_short_sequences_still_get_a_mask():
    mask = span_mask(3, 5, 0.5, random.Random(0))
    assert mask.sum() >= 1 and mask.shape == (3,)


def test_padding_does_not_change_real_frames():
    torch.manual_seed(0)
    model = AudioToLip(A2LConfig(unit_dim=6, layers=2, d_model=32, ffn=64, heads=2, dropout=0.0)).eval()
    mel = torch.randn(1, 40, 80)
    alone = model(mel, torch.ones(1, 10, dtype=torch.bool))
    padded_mel = torch.cat([mel, torch.randn(1, 20, 80)], dim=1)
    padding = torch.tensor([[True] * 10 + [False] * 5])
    together = model(padded_mel, padding)
    torch.testing.assert_close(together[:, :10], alone, atol=1e-5, rtol=1e-5)
    assert together.shape == (1, 15, 6)


def test_masked_frames_see_zeros_and_loss_is_per_masked_frame():
    torch.manual_seed(0)
    model = AudioToLip(A2LConfig(unit_dim=4, layers=1, d_model=16, ffn=32, heads=2, dropout=0.0)).eval()
    mel = torch.randn(1, 20, 80)
    masked = torch.tensor([[False, True, True, False, False]])
    a = model(mel, torch.ones(1, 5, dtype=torch.bool), masked)
    changed = mel.clone()
    changed[:, 4:12] = 99.0  # frames 1-2: masked, so their audio must not matter
    b = model(changed, torch.ones(1, 5, dtype=torch.bool), masked)
    torch.testing.assert_close(a, b)
    predicted, target = torch.zeros(1, 5, 4), torch.ones(1, 5, 4)
    assert masked_unit_loss(predicted, target, masked).item() == pytest.approx(4.0)  # sum over dims, mean over masked frames


def run_a2l(dataset, out, steps, *extra):
    return CliRunner().invoke(app, ["a2l", "--shards", str(dataset), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
                                    "--lr", "3e-3", "--window", "10", "--ckpt-every", "4", "--log-every", "2", "--quiet", *TINY, *extra])


def test_resume_continues_exactly(tmp_path):
    write_dataset(tmp_path / "d", [[30, 24], [28, 20]], lip_dim=6)
    straight = run_a2l(tmp_path / "d", tmp_path / "a", 8)
    assert straight.exit_code == 0, straight.output
    half = run_a2l(tmp_path / "d", tmp_path / "b", 4)
    assert half.exit_code == 0, half.output
    rest = run_a2l(tmp_path / "d", tmp_path / "b", 8, "--resume")
    assert rest.exit_code == 0, rest.output
    a, b = load_weights(tmp_path / "a"), load_weights(tmp_path / "b")
    assert read_json(tmp_path / "b" / "latest.json")["step"] == 8
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    again = run_a2l(tmp_path / "d", tmp_path / "b", 8)
    assert again.exit_code == 2 and "--resume" in again.output  # no silent overwrite


def test_shards_without_lip_units_are_refused(tmp_path):
    write_dataset(tmp_path / "d", [[20]])
    result = run_a2l(tmp_path / "d", tmp_path / "a", 2)
    assert result.exit_code == 2 and "cals-prep units" in result.output


def test_learns_units_that_follow_the_audio(tmp_path):
    """Units that follow the audio smoothly in time (a fixed projection of the mel averaged over
    ±7 frames, centred), as lip motion follows speech: A2L must beat the mean-unit baseline on
    masked frames, whose own audio it never sees."""
    from cals.mel import log_mel
    from cals.train.a2l import A2LTask
    from cals.train.config import TrainConfig
    from cals.train.loop import run

    from cals.shard_format import update_sample

    def units_from_audio(raw):
        import io

        mel = np.load(io.BytesIO(raw["mel.npy"])).astype(np.float32).reshape(-1, 320)
        kernel = np.ones(15) / 15
        smooth = np.stack([np.convolve(mel[:, j], kernel, mode="same") for j in range(320)], axis=1)
        projection = np.random.default_rng(7).standard_normal((320, 6)).astype(np.float32) / 18
        lip = smooth @ projection
        lip = ((lip - lip.mean(axis=0)) / (lip.std(axis=0) + 1e-6)).astype(np.float16)
        # update_sample re-records the new member's SHA-1, so the stream's digest check holds.
        updated = update_sample(raw, meta={"lip_units": {"kind": "test", "dim": 6}}, lip=lip)
        raw.clear()
        raw.update(updated)

    write_dataset(tmp_path / "d", [[60, 50, 70, 40]], lip_dim=6, mutate=units_from_audio)
    import shutil

    (tmp_path / "d" / "val-000000.tar").write_bytes((tmp_path / "d" / "train-000000.tar").read_bytes())
    task = A2LTask(A2LConfig(unit_dim=6, layers=2, d_model=64, ffn=128, heads=4, dropout=0.0), lip_kind="test")
    metrics = run(task, TrainConfig(shards=str(tmp_path / "d"), out=str(tmp_path / "run"), steps=200, batch_size=4, lr=2e-3,
                                    window=30, ckpt_every=200, log_every=50, val_batches=2), show_progress=False)
    # Half the frames are hidden in 5-frame spans and each unit averages 15 frames of audio, so
    # part of every masked unit is unknowable: measured 0.65 x the baseline MSE at 150-400 steps.
    assert metrics["val_mse"] < 0.75 * metrics["val_baseline_mse"], metrics
    assert metrics["val_cosine"] > metrics["val_baseline_cosine"] + 0.25, metrics
    shutil.rmtree(tmp_path / "run")
    _ = log_mel
