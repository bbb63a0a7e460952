"""Resampler quality and speed: torchaudio's sinc resampler (what bsqaudio used) against soxr.

    python benchmarks/resample.py [--seconds 60] [--json resample.json]

For each pair of rates (the common file rates to the model's 16 kHz, and back for ``decode
--rate``):

* passband SNR: ten tones from 50 Hz to 0.9 x the lower Nyquist frequency, resampled, against the
  same tones computed at the output rate (the ideal resampler), over the middle of the signal;
* edge: the gain of a tone at 0.95 x the lower Nyquist frequency (how far up the passband goes);
* alias (downsampling only): the loudest output of tones between 1.1 x the output's Nyquist
  frequency and 0.95 x the input's, which an ideal resampler removes, relative to the tone;
* time: best of three, ``--seconds`` of noise, whole signal; "stream" is soxr through
  ``bsqaudio.dsp.resample.resample_stream`` in 20 s chunks, as ``encode`` and ``decode`` use it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import soxr
import torch
import torchaudio.functional as AF

from bsqaudio.dsp.resample import resample_stream

PAIRS = [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000),
         (16000, 44100), (16000, 48000), (16000, 22050), (16000, 8000)]


def torchaudio_resample(x: np.ndarray, a: int, b: int) -> np.ndarray:
    return AF.resample(torch.from_numpy(x), a, b).numpy()


def soxr_resample(quality: str):
    return lambda x, a, b: soxr.resample(x, a, b, quality=quality)


def soxr_stream(x: np.ndarray, a: int, b: int) -> np.ndarray:
    chunks = [torch.from_numpy(x[i: i + 20 * a]) for i in range(0, x.shape[0], 20 * a)]
    return np.concatenate([chunk.numpy() for chunk in resample_stream(chunks, a, b)])


METHODS = {"torchaudio": torchaudio_resample, "soxr HQ": soxr_resample("HQ"),
           "soxr VHQ": soxr_resample("VHQ"), "soxr stream": soxr_stream}


def tones(freqs: np.ndarray, phases: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.05 * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)


def middle(x: np.ndarray, rate: int) -> np.ndarray:
    return x[rate // 10: x.shape[0] - rate // 10]


def quality(method, a: int, b: int) -> dict:
    rng = np.random.default_rng(0)
    nyquist = min(a, b) / 2
    freqs = np.geomspace(50, 0.9 * nyquist, 10)
    phases = rng.uniform(0, 2 * np.pi, freqs.shape[0])
    out = method(tones(freqs, phases, a, 2.0).astype(np.float32), a, b)
    ideal = tones(freqs, phases, b, 2.0)[: out.shape[0]]
    err = middle(out - ideal, b)
    snr = 10 * math.log10((middle(ideal, b) ** 2).sum() / (err ** 2).sum())
    one = np.array([0.95 * nyquist]), np.zeros(1)
    edge_out = middle(method(tones(*one, a, 2.0).astype(np.float32), a, b), b)
    edge = 20 * math.log10(edge_out.std() / (0.05 / math.sqrt(2)))
    result = {"snr_db": round(snr, 1), "edge_gain_db": round(edge, 2)}
    if b < a:
        worst = -math.inf
        for f in np.linspace(1.1 * b / 2, 0.95 * a / 2, 8):
            leak = middle(method(tones(np.array([f]), np.zeros(1), a, 2.0).astype(np.float32), a, b), b)
            worst = max(worst, 20 * math.log10(max(leak.std(), 1e-12) / (0.05 / math.sqrt(2))))
        result["alias_db"] = round(worst, 1)
    return result


def speed(method, a: int, b: int, seconds: float) -> float:
    x = np.random.default_rng(1).standard_normal(int(seconds * a)).astype(np.float32) * 0.1
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        method(x, a, b)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"# load average at start: {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    print(f"{'rates':>13} {'method':>11} {'SNR dB':>7} {'edge dB':>8} {'alias dB':>9} "
          f"{'ms/' + str(int(args.seconds)) + ' s':>9} {'x real':>7}")
    rows = []
    for a, b in PAIRS:
        for name, method in METHODS.items():
            row = {"from": a, "to": b, "method": name, **quality(method, a, b)}
            row["seconds"] = speed(method, a, b, args.seconds)
            rows.append(row)
            alias = f"{row['alias_db']:9.1f}" if "alias_db" in row else f"{'':>9}"
            print(f"{a:>6}->{b:<6} {name:>11} {row['snr_db']:7.1f} {row['edge_gain_db']:8.2f} {alias} "
                  f"{1000 * row['seconds']:9.1f} {args.seconds / row['seconds']:7.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
