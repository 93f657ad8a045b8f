import numpy as np
import pytest

from cals.constants import AUDIO_SAMPLES_PER_FRAME, MEL_ROWS_PER_FRAME, N_MELS, SAMPLE_RATE
from cals.mel import MEL_PARAMS, log_mel, mel_filterbank


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (np.clip(tone + 0.05 * rng.standard_normal(t.size), -1, 1) * 32767).astype(np.int16)


def test_exactly_four_rows_per_video_frame():
    for frames in (1, 7, 250):
        mel = log_mel(speechlike(frames * AUDIO_SAMPLES_PER_FRAME / SAMPLE_RATE))
        assert mel.shape == (MEL_ROWS_PER_FRAME * frames, N_MELS)
        assert mel.dtype == np.float32


def test_matches_librosa_independent_computation():
    librosa = pytest.importorskip("librosa")
    audio = speechlike(2.0)
    signal = audio.astype(np.float32) / 32768
    signal = np.concatenate([signal[:1], signal[1:] - MEL_PARAMS.preemphasis * signal[:-1]])
    reference = librosa.feature.melspectrogram(
        y=signal, sr=SAMPLE_RATE, n_fft=400, hop_length=160, win_length=400, window="hann",
        center=True, pad_mode="reflect", power=1.0, n_mels=80, fmin=55.0, fmax=7600.0, htk=False, norm="slaney",
    )
    expected = np.log10(np.maximum(reference, 1e-5)).T[: audio.size // 160]
    np.testing.assert_allclose(log_mel(audio), expected, atol=1e-4)
    np.testing.assert_allclose(mel_filterbank(), librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, fmin=55, fmax=7600), atol=1e-7)


def test_matches_torchaudio_when_it_imports():
    try:
        import torch
        import torchaudio
    except Exception as error:  # torchaudio's compiled part fails to load on CPU-only torch here
        pytest.skip(f"torchaudio does not import here: {type(error).__name__}")
    audio = speechlike(1.0)
    signal = torch.from_numpy(audio.astype(np.float32) / 32768)
    signal = torch.cat([signal[:1], signal[1:] - 0.97 * signal[:-1]])
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=400, win_length=400, hop_length=160, f_min=55, f_max=7600, n_mels=80,
        power=1.0, center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney",
    )
    expected = torch.log10(torch.clamp(transform(signal), min=1e-5)).T[: audio.size // 160].numpy()
    np.testing.assert_allclose(log_mel(audio), expected, atol=1e-3)


def test_rows_belong_to_their_video_frame():
    # A burst inside video frame 10 (samples 6400..7039) lights up mel rows 40..43, not row 36.
    audio = np.zeros(20 * AUDIO_SAMPLES_PER_FRAME, np.int16)
    rng = np.random.default_rng(1)
    audio[6400 + 100 : 6400 + 540] = (rng.standard_normal(440) * 8000).astype(np.int16)
    energy = log_mel(audio).max(axis=1)
    loud = np.flatnonzero(energy > -3)
    assert set(range(41, 43)) <= set(loud)
    assert loud.min() >= 39 and loud.max() <= 44
    assert energy[36] == pytest.approx(np.log10(MEL_PARAMS.floor))


def test_rejects_stereo_and_too_short():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((640, 2), np.int16))
    with pytest.raises(ValueError, match="too short"):
        log_mel(np.zeros(100, np.int16))


def test_params_are_recorded_with_every_constant():
    params = MEL_PARAMS.to_dict()
    assert params["hop_length"] == 160 and params["win_length"] == 400 and params["n_mels"] == 80
    assert {"fmin", "fmax", "preemphasis", "log", "normalisation", "floor"} <= set(params)
