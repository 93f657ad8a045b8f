"""The scorer's MFCC front end against an independent, loop-based python_speech_features recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.fftpack import dct

from cals.mfcc import MFCC_PARAMS, mfcc, mfcc_filterbank, num_mfcc_rows


def reference_mfcc(signal: np.ndarray) -> np.ndarray:
    """python_speech_features.mfcc(signal, 16000) written out step by step, in plain loops."""
    rate, frame_len, step, nfft, nfilt, numcep, lift = 16000, 400, 160, 512, 26, 13, 22
    x = signal.astype(np.float64)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    count = 1 if len(x) <= frame_len else 1 + int(math.ceil((len(x) - frame_len) / step))
    x = np.concatenate([x, np.zeros((count - 1) * step + frame_len - len(x))])
    # filterbank edges: 28 points equally spaced in HTK mel from 0 to 8000 Hz, snapped to bins
    high_mel = 2595 * np.log10(1 + 8000 / 700.0)
    hz = [700 * (10 ** (m / 2595.0) - 1) for m in np.linspace(0, high_mel, nfilt + 2)]
    edge = [int(np.floor((nfft + 1) * f / rate)) for f in hz]
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(edge[j], edge[j + 1]):
            bank[j, i] = (i - edge[j]) / (edge[j + 1] - edge[j])
        for i in range(edge[j + 1], edge[j + 2]):
            bank[j, i] = (edge[j + 2] - i) / (edge[j + 2] - edge[j + 1])
    rows = []
    for r in range(count):
        frame = x[r * step : r * step + frame_len]
        spectrum = np.fft.fft(frame, nfft)[: nfft // 2 + 1]
        power = (spectrum.real**2 + spectrum.imag**2) / nfft
        energy = power.sum() or np.finfo(float).eps
        bands = bank @ power
        bands[bands == 0] = np.finfo(float).eps
        ceps = dct(np.log(bands), type=2, norm="ortho")[:numcep]
        ceps = ceps * (1 + (lift / 2) * np.sin(np.pi * np.arange(numcep) / lift))
        ceps[0] = np.log(energy)
        rows.append(ceps)
    return np.array(rows)


def speechlike(samples: int, seed: int = 0) -> np.ndarray:
    """int16 test signal: chirps, noise bursts and a silent gap."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    wave = 8000 * np.sin(2 * np.pi * (200 + 900 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave += rng.normal(0, 800, samples)
    wave[samples // 3 : samples // 3 + 1600] = 0
    return np.clip(wave, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("num_frames", [7, 25])
def test_matches_an_independent_computation(num_frames):
    audio = speechlike(640 * num_frames, seed=num_frames)
    ours = mfcc(audio)
    ref = reference_mfcc(audio)
    assert ours.shape == ref.shape == (4 * num_frames - 1, 13)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_rows_align_with_video_frames():
    """100 rows/s, 4 per 25 fps frame; 640T samples give 4T - 1 rows; row i depends only on
    samples [160 i, 160 i + 400) (no centring), so row 4t starts at frame t's first sample."""
    assert num_mfcc_rows(640 * 10) == 39 and num_mfcc_rows(400) == 1 and num_mfcc_rows(401) == 2
    audio = speechlike(640 * 10)
    changed = audio.copy()
    s = 640 * 5 + 450  # a sample inside frame 5, past the end of row 20's window
    changed[s] = 30000 if audio[s] != 30000 else -30000
    a, b = mfcc(audio), mfcc(changed)
    differs = np.flatnonzero(np.any(a != b, axis=1))
    # sample s (and s+1 via pre-emphasis) fall in rows whose window [160 i, 160 i + 400) holds them
    expected = [i for i in range(len(a)) if 160 * i <= s + 1 and s < 160 * i + 400]
    assert differs.tolist() == expected


def test_silence_and_short_input():
    silence = mfcc(np.zeros(640 * 3, np.int16))
    assert np.all(silence[:, 0] == np.log(np.finfo(float).eps))
    np.testing.assert_allclose(mfcc(np.zeros(100, np.int16)), reference_mfcc(np.zeros(100, np.int16)), atol=1e-9)
    with pytest.raises(ValueError):
        mfcc(np.zeros((10, 2), np.int16))


def test_scale_is_int16_units():
    """Float input is taken as int16-scale values: the same numbers as the int16 array."""
    audio = speechlike(640 * 6)
    np.testing.assert_array_equal(mfcc(audio), mfcc(audio.astype(np.float64)))


def test_filterbank_shape_and_peaks():
    bank = mfcc_filterbank(MFCC_PARAMS)
    assert bank.shape == (26, 257)
    assert np.all(bank >= 0) and np.allclose(bank.max(axis=1), 1.0)


def test_against_python_speech_features_if_installed():
    psf = pytest.importorskip("python_speech_features")
    audio = speechlike(640 * 20)
    np.testing.assert_allclose(mfcc(audio), psf.mfcc(audio, 16000), rtol=1e-9, atol=1e-9)
