"""Scorer arithmetic (syncnet_python's evaluate()/calc_pdist) on constructed embeddings, and
score_clip's window wiring and offset sign on a synthetic clip with a fake two-stream model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cals.sync_score import (
    ClipScore,
    score_clip,
    score_embeddings,
    score_samples,
    shifted_distances,
    summarise,
)


def reference_scores(video: np.ndarray, audio: np.ndarray, vshift: int) -> tuple[int, float, float, np.ndarray]:
    """evaluate()'s recipe with torch's own pairwise_distance, window by window, in float64."""
    v = torch.from_numpy(video).double()
    a = torch.from_numpy(audio).double()
    rows = []
    for i in range(len(v)):
        row = []
        for shift in range(-vshift, vshift + 1):
            j = i + shift
            other = a[j : j + 1] if 0 <= j < len(a) else torch.zeros(1, a.shape[1], dtype=torch.float64)
            row.append(torch.nn.functional.pairwise_distance(v[i : i + 1], other).item())
        rows.append(row)
    dists = np.array(rows)
    mean = torch.from_numpy(dists.mean(axis=0))
    low, index = torch.min(mean, 0)
    return vshift - int(index), float(low), float(torch.median(mean) - low), dists


@pytest.mark.parametrize("true_offset", [-7, -1, 0, 3, 12])
def test_constructed_embeddings_with_a_known_shift(true_offset):
    rng = np.random.default_rng(abs(true_offset))
    n, d = 60, 1024
    signal = rng.normal(size=(n + 40, d))
    # video window i shows what audio window i - offset says (offset > 0: sound comes first)
    audio = signal[20 : 20 + n]
    video = signal[20 - true_offset : 20 - true_offset + n] + 0.3 * rng.normal(size=(n, d))
    score = score_embeddings(video, audio, vshift=15)
    offset, min_dist, conf, dists = reference_scores(video, audio, 15)
    assert score.offset == offset == true_offset
    assert abs(score.min_dist - min_dist) < 1e-6
    assert abs(score.conf - conf) < 1e-6
    np.testing.assert_allclose(score.dists, dists, atol=1e-9)
    assert score.dists.shape == (n, 31) and score.num_windows == n and score.vshift == 15
    assert score.mean_dists.argmin() == 15 - true_offset


def test_out_of_range_shifts_compare_with_zero_vectors():
    video = np.ones((3, 4))
    audio = np.full((3, 4), 2.0)
    dists = shifted_distances(video, audio, vshift=2)
    # column j compares video i with audio i + j - 2; outside 0..2 that is a zero vector
    zero = np.linalg.norm(np.ones(4) + 1e-6)
    matched = np.linalg.norm(-np.ones(4) + 1e-6)
    expected = np.array([[zero, zero, matched, matched, matched], [zero, matched, matched, matched, zero], [matched, matched, matched, zero, zero]])
    np.testing.assert_allclose(dists, expected)


def test_smaller_vshift_and_shape_errors():
    rng = np.random.default_rng(1)
    audio = rng.normal(size=(20, 8))
    video = np.roll(audio, 2, axis=0)
    score = score_embeddings(video, audio, vshift=3)
    assert score.offset == 2 and score.dists.shape == (20, 7)
    with pytest.raises(ValueError):
        score_embeddings(video[:, :4], audio)
    with pytest.raises(ValueError, match="no windows"):
        score_embeddings(np.zeros((0, 8)), np.zeros((0, 8)))


class BrightnessEnergyNet(nn.Module):
    """Fake SyncNet: the lip embedding is the z-scored brightness of the 5 frames, the audio
    embedding the z-scored log energy (MFCC c0) of rows 0, 4, 8, 12, 16 (first row of each frame).
    Aligned windows of a clip whose brightness and loudness follow one pattern embed alike."""

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self._zscore(frames.mean(dim=(1, 3, 4)))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self._zscore(mfcc[:, 0, 0, ::4])

    @staticmethod
    def _zscore(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        return (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True)


def synthetic_clip(pattern: np.ndarray, audio_delay: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t has brightness 20 p[t]; the audio of frame t is a tone of amplitude 2^p[t - delay]."""
    T = len(pattern)
    frames = np.repeat((20 * pattern).astype(np.uint8)[:, None, None, None], 128, axis=1)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (T, 128, 128, 3)))
    heard = np.roll(pattern, audio_delay)
    t = np.arange(640) / 16000
    tone = np.sin(2 * np.pi * 500 * t)
    audio = np.concatenate([(2.0 ** heard[i]) * 10 * tone for i in range(T)])
    return frames, np.round(audio).astype(np.int16)


@pytest.mark.parametrize("audio_delay", [-4, 0, 2, 6])
def test_score_clip_pairs_window_v_with_rows_4v_and_gets_the_sign(audio_delay):
    rng = np.random.default_rng(5)
    pattern = rng.integers(1, 11, 40)
    frames, audio = synthetic_clip(pattern, audio_delay)
    score = score_clip(frames, audio, BrightnessEnergyNet(), vshift=8, batch_size=7)
    # evaluate() scores T - 5 windows (the MFCC of 640T samples has 4T - 1 rows)
    assert score.dists.shape == (40 - 5, 17)
    # the sound of frame t arrives `audio_delay` frames later: late sound is a negative offset
    assert score.offset == -audio_delay
    assert score.conf > 0.5


def test_score_clip_with_the_real_network_is_consistent_with_its_parts():
    from cals.mfcc import mfcc
    from cals.models.syncnet_v2 import SyncNetV2, lip_input_from_crops

    torch.manual_seed(0)
    model = SyncNetV2().eval()
    rng = np.random.default_rng(0)
    T = 9
    frames = rng.integers(0, 256, (T, 128, 128, 3), dtype=np.uint8)
    audio = rng.normal(0, 3000, 640 * T).astype(np.int16)
    score = score_clip(frames, audio, model, vshift=15, batch_size=3)
    with torch.inference_mode():
        lips = model.forward_lip(lip_input_from_crops(frames, starts=range(T - 5))).numpy()
        cc = torch.from_numpy(mfcc(audio).T.astype(np.float32))
        sound = model.forward_aud(torch.stack([cc[:, 4 * v : 4 * v + 20] for v in range(T - 5)])[:, None]).numpy()
    expected = score_embeddings(lips, sound, 15)
    assert score.offset == expected.offset and -15 <= score.offset <= 15
    np.testing.assert_allclose(score.dists, expected.dists, rtol=1e-5)


def test_score_clip_input_errors():
    frames = np.zeros((5, 128, 128, 3), np.uint8)
    with pytest.raises(ValueError, match="too short"):
        score_clip(frames, np.zeros(640 * 5, np.int16), BrightnessEnergyNet())
    with pytest.raises(ValueError, match="expected"):
        score_clip(np.zeros((8, 128, 128, 3), np.uint8), np.zeros(640 * 7, np.int16), BrightnessEnergyNet())


def test_score_samples_keeps_failures_and_summarise_averages():
    rng = np.random.default_rng(2)
    pattern = rng.integers(1, 11, 30)
    good = synthetic_clip(pattern, 1)
    short = (np.zeros((4, 128, 128, 3), np.uint8), np.zeros(640 * 4, np.int16))
    results = list(score_samples([("a", *good), ("b", *short)], BrightnessEnergyNet(), vshift=5))
    assert [r.key for r in results] == ["a", "b"]
    assert results[0].score is not None and results[1].score is None and "too short" in results[1].error
    summary = summarise(results + [ClipScore("c", 30, score=score_embeddings(np.eye(6), np.eye(6), 2))])
    assert summary.clips == 2 and summary.failed == 1
    assert summary.mean_offset == pytest.approx((results[0].score.offset + 0) / 2)
    assert results[1].to_dict()["offset"] is None and results[0].to_dict()["mean_dists"]
