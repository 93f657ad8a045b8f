"""Log-mel spectrogram: the one implementation used by the pipeline, the reader and training.

Every parameter lives in :class:`MelParams`; :data:`MEL_PARAMS` is the project's setting, and
``MEL_PARAMS.to_dict()`` is written into every shard sample's metadata so a reader can refuse
shards computed differently. Pure NumPy: no torchaudio or librosa needed at run time.

Framing: the signal is pre-emphasised, reflect-padded by ``n_fft // 2`` at both ends, and mel
row ``i`` is the window centred on sample ``i * hop``. For ``640 * T`` samples exactly
``4 * T`` rows are returned, so rows ``4t .. 4t+3`` are centred inside video frame ``t``'s
samples ``[640t, 640t + 640)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cals.constants import MEL_HOP, MEL_N_FFT, MEL_WINDOW, N_MELS, SAMPLE_RATE


@dataclass(frozen=True)
class MelParams:
    """Parameters of the log-mel front end.

    Attributes:
        sample_rate: input sample rate, Hz.
        n_fft: FFT size, samples.
        win_length: Hann window length, samples (periodic Hann).
        hop_length: hop between rows, samples.
        n_mels: number of mel bins.
        fmin, fmax: filterbank edges, Hz.
        preemphasis: coefficient k of y[n] = x[n] - k x[n-1] (0 disables).
        power: 1.0 = magnitude spectrogram, 2.0 = power spectrogram.
        mel_scale: "slaney" (librosa's default) mel scale and area normalisation.
        log: "log10" of the mel energies after clamping at ``floor``.
        floor: minimum mel energy before the log (so silence maps to log10(floor)).
        normalisation: what is applied after the log ("none": raw log10 values).
        center: frames are centred on ``i * hop`` with reflect padding.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = MEL_N_FFT
    win_length: int = MEL_WINDOW
    hop_length: int = MEL_HOP
    n_mels: int = N_MELS
    fmin: float = 55.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    power: float = 1.0
    mel_scale: str = "slaney"
    log: str = "log10"
    floor: float = 1e-5
    normalisation: str = "none"
    center: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The project's mel setting. Change it only together with the shard FORMAT_VERSION.
MEL_PARAMS = MelParams()


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = hz >= min_log_hz
    mels[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    hz = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = mels >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return hz


def mel_filterbank(params: MelParams = MEL_PARAMS) -> np.ndarray:
    """Triangular mel filters, shape ``(n_mels, n_fft // 2 + 1)`` float32, Slaney-normalised
    (each filter's area is 2 / bandwidth in Hz)."""
    if params.mel_scale != "slaney":
        raise ValueError(f"unsupported mel_scale {params.mel_scale!r}")
    n_bins = params.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, params.sample_rate / 2, n_bins)
    edges_mel = np.linspace(
        _hz_to_mel_slaney(np.array([params.fmin]))[0],
        _hz_to_mel_slaney(np.array([params.fmax]))[0],
        params.n_mels + 2,
    )
    edges_hz = _mel_to_hz_slaney(edges_mel)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    weights = np.zeros((params.n_mels, n_bins))
    for i in range(params.n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def _hann_periodic(length: int) -> np.ndarray:
    n = np.arange(length)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)


def log_mel(audio: np.ndarray, params: MelParams = MEL_PARAMS) -> np.ndarray:
    """Log-mel spectrogram of a mono signal.

    Args:
        audio: ``(N,)`` int16 samples, or float in [-1, 1], at ``params.sample_rate``.
            N must exceed ``n_fft // 2`` (the reflect padding).
    Returns:
        ``(N // hop, n_mels)`` float32 log10 mel energies; for N = 640·T that is 4·T rows.
    """
    signal = np.asarray(audio)
    if signal.ndim != 1:
        raise ValueError(f"log_mel expects mono (N,) audio, got shape {signal.shape}")
    if signal.dtype == np.int16:
        signal = signal.astype(np.float32) / 32768.0
    else:
        signal = signal.astype(np.float32)
    pad = params.n_fft // 2
    if signal.shape[0] <= pad:
        raise ValueError(f"audio of {signal.shape[0]} samples is too short for n_fft {params.n_fft}")
    if params.preemphasis:
        signal = np.concatenate([signal[:1], signal[1:] - params.preemphasis * signal[:-1]])
    n_rows = signal.shape[0] // params.hop_length
    padded = np.pad(signal, (pad, pad), mode="reflect") if params.center else signal
    window = np.zeros(params.n_fft, dtype=np.float32)
    offset = (params.n_fft - params.win_length) // 2
    window[offset : offset + params.win_length] = _hann_periodic(params.win_length)
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.n_fft)[:: params.hop_length]
    frames = frames[:n_rows] * window
    spectrum = np.abs(np.fft.rfft(frames, n=params.n_fft, axis=1)) ** params.power
    mel = spectrum.astype(np.float32) @ mel_filterbank(params).T
    return np.log10(np.maximum(mel, params.floor)).astype(np.float32)
