"""Alignment of decoded audio with its reference (bsqaudio.alignment), as eval and quality.py use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsqaudio.alignment import apply_lag, find_lag


def speechlike(seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Noise bursts with a syllable-like envelope: distinct enough to align on."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    envelope = np.clip(np.sin(2 * np.pi * 3.1 * t) * np.sin(2 * np.pi * 0.7 * t + 1), 0, None)
    return torch.from_numpy((0.3 * envelope * rng.standard_normal(n)).astype(np.float32))


@pytest.mark.parametrize("lag", [0, 7, 240, -90, 800])
def test_find_lag_recovers_a_delay(lag):
    ref = speechlike()
    delayed = torch.cat([torch.zeros(lag), ref])[: ref.shape[0] + 100] if lag >= 0 else ref[-lag:]
    assert find_lag(ref, delayed) == lag


def test_find_lag_ignores_phase():
    """A phase-scrambled copy (same magnitude spectrogram envelope) delayed by 20 ms."""
    ref = speechlike(seed=1)
    spec_ = torch.stft(ref, 512, 128, window=torch.hann_window(512), return_complex=True)
    noise = torch.rand(spec_.shape, generator=torch.Generator().manual_seed(0))
    phase = torch.exp(2j * torch.pi * noise)
    scrambled = torch.istft(spec_.abs() * phase, 512, 128, window=torch.hann_window(512),
                            length=ref.shape[0])
    found = find_lag(ref, torch.cat([torch.zeros(320), scrambled]))
    assert abs(found - 320) <= 32


def test_apply_lag_keeps_reference_length():
    x = torch.arange(10, dtype=torch.float32)
    assert apply_lag(x, 3, 10).tolist() == [3, 4, 5, 6, 7, 8, 9, 0, 0, 0]
    assert apply_lag(x, -2, 10).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert apply_lag(x, 0, 12).shape == (12,)
