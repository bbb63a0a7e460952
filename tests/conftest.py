"""Shared fixtures: tiny saved models, a ready codec, and wav writers.

Everything uses the ``tiny`` preset and a few seconds of audio, so the suite runs in about a minute
on two shared CPU cores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import bsqaudio
from bsqaudio import AudioBSQ, preset
from bsqaudio.codec import Codec
from bsqaudio.hub import EMBEDDED_DIR, WEIGHTS_NAME

RATE = 16000
HAS_EMBEDDED_MODEL = (EMBEDDED_DIR / WEIGHTS_NAME).exists()


def make_signal(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(T, C) float32: a few tones plus a little noise, well inside [-1, 1]."""
    n = max(1, int(round(seconds * rate)))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    out = np.empty((n, channels), dtype=np.float32)
    for ch in range(channels):
        tone = sum(0.15 * np.sin(2 * math.pi * f * (ch + 1) * t) for f in (220.0, 660.0, 1870.0))
        out[:, ch] = tone + 0.02 * rng.standard_normal(n)
    return out


def write_wav(path: str | Path, seconds: float, rate: int = RATE, channels: int = 1,
              seed: int = 0, subtype: str = "FLOAT") -> Path:
    path = Path(path)
    sf.write(path, make_signal(seconds, rate, channels, seed), rate, subtype=subtype)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved ``tiny`` model (seed 0): model.safetensors + config.json."""
    folder = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    bsqaudio.save_pretrained(AudioBSQ(preset("tiny")), folder)
    return folder


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    """Another ``tiny`` model with different weights (seed 1), hence a different hash."""
    folder = tmp_path_factory.mktemp("other_model")
    torch.manual_seed(1)
    bsqaudio.save_pretrained(AudioBSQ(preset("tiny")), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_codec(tiny_model_dir) -> Codec:
    # Few Griffin-Lim iterations: these tests check lengths, determinism and plumbing, not quality.
    return Codec.from_pretrained(tiny_model_dir, device="cpu", griffin_lim_iterations=4)


@pytest.fixture
def wav_writer(tmp_path):
    """make(name, seconds, rate=16000, channels=1, seed=0) -> path of a new wav in tmp_path."""

    def make(name: str = "in.wav", seconds: float = 1.0, rate: int = RATE, channels: int = 1,
             seed: int = 0, subtype: str = "FLOAT") -> Path:
        return write_wav(tmp_path / name, seconds, rate, channels, seed, subtype)

    return make


@pytest.fixture
def no_hang():
    """Fail instead of hanging: a FIFO with no writer blocks open() and read() forever."""
    import signal

    def alarm(signum, frame):
        raise TimeoutError("still blocked after 20 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
