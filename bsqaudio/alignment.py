"""Aligning a decoded signal with its reference, identically for every codec compared.

Codecs delay their output (Opus by its look-ahead, Codec2 by its frames), and a phase-free decoder
(Griffin-Lim, a vocoder) matches no waveform, so waveform cross-correlation alone cannot align
them all. The lag is searched over +-50 ms in two steps: (1) in 1 ms steps, the lag maximizing the
cross-correlation of the log power spectrograms (256-point FFT, 1 ms hop, floored 60 dB below the
peak, each bin's mean removed, summed over bins), which ignores phase; then (2) within +-1 ms of
it, the lag maximizing the waveform cross-correlation (sample-exact for waveform codecs). The
shifted signal is zero-padded or trimmed to the reference's length; the reference is never
modified. Used by ``bsqaudio eval`` and ``benchmarks/quality.py``.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_LAG_S = 0.050
REFINE_LAG_S = 0.001
ENVELOPE_FFT = 256
ENVELOPE_HOP = 16  # 1 ms at 16 kHz
ENVELOPE_FLOOR_DB = 60.0


def _spectral_envelope(x: torch.Tensor) -> torch.Tensor:
    """(bins, frames) log power spectrogram (256-point FFT, 1 ms hop), floored 60 dB below its peak,
    each bin's mean removed."""
    window = torch.hann_window(ENVELOPE_FFT)
    power = torch.stft(x.float(), ENVELOPE_FFT, ENVELOPE_HOP, window=window,
                       return_complex=True).abs() ** 2
    db = 10 * torch.log10(power + 1e-12)
    db = torch.maximum(db, db.max() - ENVELOPE_FLOOR_DB)
    return db - db.mean(dim=1, keepdim=True)


def _envelope_lag(reference: torch.Tensor, decoded: torch.Tensor, max_lag: int) -> int:
    """The lag (a multiple of ENVELOPE_HOP samples) maximizing the correlation of the two spectral
    envelopes summed over bins."""
    a, b = _spectral_envelope(reference), _spectral_envelope(decoded)
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n], b[:, :n]
    size = 1 << (2 * n - 1).bit_length()
    spec = (torch.fft.rfft(b, size) * torch.conj(torch.fft.rfft(a, size))).sum(0)
    full = torch.fft.irfft(spec, size)  # full[k mod size] = sum_bins sum_t a[t] b[t + k]
    steps = max_lag // ENVELOPE_HOP
    lags = torch.arange(-steps, steps + 1)
    return int(lags[int(torch.argmax(full[lags % size]))]) * ENVELOPE_HOP


def _xcorr(a: torch.Tensor, b: torch.Tensor, lags: range) -> np.ndarray:
    """Unnormalized correlation sum_t a[t] * b[t + lag] for each lag (b delayed by lag > 0)."""
    a, b = a.double(), b.double()
    n = min(a.shape[0], b.shape[0])
    out = np.empty(len(lags))
    for i, lag in enumerate(lags):
        if lag >= 0:
            out[i] = float(a[: max(0, n - lag)] @ b[lag:n]) if lag < n else 0.0
        else:
            out[i] = float(a[-lag:n] @ b[: n + lag]) if -lag < n else 0.0
    return out


def find_lag(reference: torch.Tensor, decoded: torch.Tensor, rate: int = 16000) -> int:
    """Delay of ``decoded`` relative to ``reference`` in samples (positive: decoded is late)."""
    max_lag = int(MAX_LAG_S * rate)
    refine = int(REFINE_LAG_S * rate)
    if min(reference.shape[0], decoded.shape[0]) <= 2 * max_lag:
        return 0
    lag = _envelope_lag(reference, decoded, max_lag)
    low, high = max(-max_lag, lag - refine), min(max_lag, lag + refine)
    fine = _xcorr(reference, decoded, range(low, high + 1))
    if np.all(fine == 0):
        return lag
    return low + int(np.argmax(fine))


def apply_lag(decoded: torch.Tensor, lag: int, length: int) -> torch.Tensor:
    """Shift ``decoded`` earlier by ``lag`` samples and zero-pad / trim it to ``length``."""
    out = torch.zeros(length, dtype=torch.float32)
    src = decoded.float()
    if lag >= 0:
        src = src[lag:]
        count = min(length, src.shape[0])
        out[:count] = src[:count]
    else:
        count = min(length + lag, src.shape[0])
        if count > 0:
            out[-lag: -lag + count] = src[:count]
    return out


def align(reference: torch.Tensor, decoded: torch.Tensor, rate: int = 16000) -> tuple[torch.Tensor, int]:
    """(``decoded`` shifted onto ``reference`` and cut to its length, the lag in samples)."""
    lag = find_lag(reference, decoded, rate)
    return apply_lag(decoded, lag, reference.shape[0]), lag
