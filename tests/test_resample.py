"""Resampling: any pair of rates in bounded memory, the lengths .bsq files are built on, quality.

Equality of the streamed and whole-signal results is in test_streaming.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bsqaudio
from bsqaudio.dsp.resample import resample, resampled_length

REPO = Path(bsqaudio.__file__).resolve().parents[1]


@pytest.mark.parametrize(("rate_from", "rate_to"), [(44100, 16000), (16000, 44100), (48001, 16000),
                                                    (7919, 16000), (16000, 8000), (1000, 384000)])
def test_length_is_the_ceiling(rate_from, rate_to):
    for length in (1, 2, 3, 159, 160, 161, 44099, 44100, 44101):
        expected = math.ceil(length * rate_to / rate_from)
        assert resampled_length(length, rate_from, rate_to) == expected
        assert resample(torch.zeros(length), rate_from, rate_to).shape == (expected,)


@pytest.mark.parametrize("rate_from", [44100, 44101, 7919 * 4])
def test_tones_pass_and_aliases_are_removed(rate_from):
    """A 1 kHz tone comes out as the ideal resampler gives it; a 10 kHz one, past the 8 kHz
    Nyquist frequency of 16 kHz, does not fold back to 6 kHz (torchaudio let -14 dB through at
    8.8 kHz)."""
    t_in, t_out = np.arange(rate_from) / rate_from, np.arange(16000) / 16000
    low = resample(torch.from_numpy(np.sin(2 * np.pi * 1000 * t_in).astype(np.float32)), rate_from, 16000)
    error = low.numpy()[1600:-1600] - np.sin(2 * np.pi * 1000 * t_out)[1600:-1600]
    assert np.abs(error).max() < 1e-4
    high = resample(torch.from_numpy(np.sin(2 * np.pi * 10000 * t_in).astype(np.float32)), rate_from, 16000)
    assert np.abs(high.numpy()[1600:-1600]).max() < 1e-4  # below -80 dB


CHILD = r"""
import resource, sys
import numpy as np, soundfile as sf
import bsqaudio
from bsqaudio.codec import Codec

model, folder = sys.argv[1], sys.argv[2]
codec = Codec.from_pretrained(model, device="cpu", griffin_lim_iterations=1)
tone = 0.3 * np.sin(np.arange(2 * 48001) * 0.05).astype(np.float32)
for rate in (16000, 44101, 7919):
    sf.write(f"{folder}/{rate}.wav", tone[: 2 * rate], rate)
codec.decode(codec.encode_file(f"{folder}/16000.wav"), 16001)  # threads and libraries in place

def address_space():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))

# From here on, allocating more than 300 MiB fails (torchaudio's resampler wanted 2.7 GB for
# 7919 Hz and over 10 GB for 44101 Hz).
limit = address_space() + 300 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for rate in (44101, 7919):
    codes = codec.encode_file(f"{folder}/{rate}.wav")
    assert codes.num_samples == 32000, codes.num_samples
    assert codec.decode(codes, rate).shape == (2 * rate,)
print("ok")
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_odd_rates_encode_and_decode_in_bounded_memory(tmp_path, tiny_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tiny_model_dir), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
