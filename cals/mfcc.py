"""MFCC front end of the SyncNet scorer: python_speech_features ``mfcc()`` with its defaults.

syncnet_python computes its audio input as ``python_speech_features.mfcc(audio, 16000)`` on the
int16 samples read by ``scipy.io.wavfile`` (values in int16 units, not scaled to [-1, 1]). This
module reproduces that call in NumPy (no extra dependency), every parameter in
:class:`MfccParams`:

1. pre-emphasis over the whole signal: ``y[0] = x[0]``, ``y[n] = x[n] - 0.97 x[n-1]``;
2. framing with no centring: row ``i`` covers samples ``[160 i, 160 i + 400)`` (25 ms window,
   10 ms step); the last frame is zero-padded past the end; ``1 + ceil((N - 400) / 160)`` rows
   (one row when ``N <= 400``); rectangular window;
3. power spectrum ``|rfft(frame, 512)|² / 512``; frame energy = its sum;
4. 26 triangular filters equally spaced on the HTK mel scale ``2595 log10(1 + f / 700)``
   from 0 Hz to 8 kHz, edges snapped to FFT bins ``floor(513 f / 16000)``;
5. natural log (zeros replaced by float64 eps first), orthonormal DCT-II, first 13 coefficients;
6. lifter ``1 + 11 sin(pi n / 22)``; then coefficient 0 is replaced by the log frame energy
   (``appendEnergy=True``).

Alignment with 25 fps video: 100 rows/s, so rows ``4t .. 4t+3`` start inside video frame t's
samples ``[640 t, 640 t + 640)`` (row 4t starts exactly at the frame's first sample). A SyncNet
window on frames ``v .. v+4`` reads rows ``4v .. 4v+19`` (20 rows, 0.2 s). For ``640 T``
samples there are ``4T - 1`` rows, so the last full 20-row window starts at frame ``T - 6``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from cals.constants import (
    MFCC_HOP,
    MFCC_LIFTER,
    MFCC_N_CEPS,
    MFCC_N_FFT,
    MFCC_N_FILTERS,
    MFCC_PREEMPHASIS,
    MFCC_WINDOW,
    SAMPLE_RATE,
)

#: What python_speech_features substitutes for a zero energy before taking the log.
_LOG_FLOOR = np.finfo(np.float64).eps


@dataclass(frozen=True)
class MfccParams:
    """Parameters of the MFCC front end (python_speech_features' names in brackets).

    Attributes:
        sample_rate: input sample rate, Hz (``samplerate``).
        win_length: frame length, samples (``winlen`` x rate: 0.025 s).
        hop_length: frame step, samples (``winstep`` x rate: 0.01 s).
        n_fft: FFT size (``nfft``).
        n_filters: mel filters (``nfilt``).
        n_ceps: cepstral coefficients kept (``numcep``).
        low_hz: lowest filter edge, Hz (``lowfreq``).
        high_hz: highest filter edge, Hz (``highfreq``); None = sample_rate / 2.
        preemphasis: pre-emphasis coefficient (``preemph``; 0 disables).
        lifter: cepstral lifter L (``ceplifter``; 0 disables).
        append_energy: replace coefficient 0 with the log frame energy (``appendEnergy``).
    """

    sample_rate: int = SAMPLE_RATE
    win_length: int = MFCC_WINDOW
    hop_length: int = MFCC_HOP
    n_fft: int = MFCC_N_FFT
    n_filters: int = MFCC_N_FILTERS
    n_ceps: int = MFCC_N_CEPS
    low_hz: float = 0.0
    high_hz: Optional[float] = None
    preemphasis: float = MFCC_PREEMPHASIS
    lifter: int = MFCC_LIFTER
    append_energy: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The scorer's setting (what SyncNetInstance gets from python_speech_features' defaults).
MFCC_PARAMS = MfccParams()


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mfcc_filterbank(params: MfccParams = MFCC_PARAMS) -> np.ndarray:
    """Triangular filters, ``(n_filters, n_fft // 2 + 1)`` float64, peak 1, unnormalised.

    Filter j rises over bins ``[b_j, b_{j+1})`` as ``(k - b_j) / (b_{j+1} - b_j)`` and falls over
    ``[b_{j+1}, b_{j+2})`` as ``(b_{j+2} - k) / (b_{j+2} - b_{j+1})``, where the edges
    ``b = floor((n_fft + 1) f / sample_rate)`` come from ``n_filters + 2`` mel-spaced frequencies.
    """
    high = params.high_hz or params.sample_rate / 2
    if high > params.sample_rate / 2:
        raise ValueError(f"high_hz {high} is above the Nyquist frequency {params.sample_rate / 2}")
    mels = np.linspace(_hz_to_mel(params.low_hz), _hz_to_mel(high), params.n_filters + 2)
    edges = np.floor((params.n_fft + 1) * _mel_to_hz(mels) / params.sample_rate)
    bins = np.arange(params.n_fft // 2 + 1, dtype=np.float64)[None, :]
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((bins >= lower) & (bins < centre), (bins - lower) / (centre - lower), 0.0)
        falling = np.where((bins >= centre) & (bins < upper), (upper - bins) / (upper - centre), 0.0)
    return rising + falling


def num_mfcc_rows(num_samples: int, params: MfccParams = MFCC_PARAMS) -> int:
    """Rows :func:`mfcc` returns for ``num_samples`` samples (``4T - 1`` for ``640 T``)."""
    if num_samples <= params.win_length:
        return 1
    return 1 + math.ceil((num_samples - params.win_length) / params.hop_length)


def _dct2_ortho(n_in: int, n_out: int) -> np.ndarray:
    """``(n_in, n_out)`` matrix of the orthonormal DCT-II (first ``n_out`` coefficients)."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    basis[:, 0] *= np.sqrt(0.5)
    return basis


def mfcc(audio: np.ndarray, params: MfccParams = MFCC_PARAMS) -> np.ndarray:
    """MFCCs of a mono signal, as ``python_speech_features.mfcc(audio, 16000)`` computes them.

    Args:
        audio: ``(N,)`` samples at ``params.sample_rate`` in **int16 units**: int16 (as the shards
            and ``scipy.io.wavfile`` hold them) or float already on that scale. The scale matters:
            coefficient 0 is the log frame energy.
    Returns:
        ``(num_mfcc_rows(N), n_ceps)`` float64; row i describes samples ``[160 i, 160 i + 400)``.
    """
    signal = np.asarray(audio)
    if signal.ndim != 1 or signal.shape[0] == 0:
        raise ValueError(f"mfcc expects non-empty mono (N,) audio, got shape {signal.shape}")
    signal = signal.astype(np.float64)
    if params.preemphasis:
        signal = np.concatenate([signal[:1], signal[1:] - params.preemphasis * signal[:-1]])
    rows = num_mfcc_rows(signal.shape[0], params)
    padded_length = (rows - 1) * params.hop_length + params.win_length
    padded = np.zeros(max(padded_length, signal.shape[0]))
    padded[: signal.shape[0]] = signal
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.win_length)[:: params.hop_length][:rows]
    power = np.abs(np.fft.rfft(frames, n=params.n_fft, axis=1)) ** 2 / params.n_fft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, _LOG_FLOOR, energy)
    bands = power @ mfcc_filterbank(params).T
    bands = np.where(bands == 0, _LOG_FLOOR, bands)
    cepstra = np.log(bands) @ _dct2_ortho(params.n_filters, params.n_ceps)
    if params.lifter > 0:
        cepstra *= 1.0 + (params.lifter / 2.0) * np.sin(np.pi * np.arange(params.n_ceps) / params.lifter)
    if params.append_energy:
        cepstra[:, 0] = np.log(energy)
    return cepstra
