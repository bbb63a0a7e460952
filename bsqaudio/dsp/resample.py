"""Resampling to and from the model's rate, whole or streamed, with soxr."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import soxr
import torch

# soxr's "high quality" (20-bit) recipe. Measured on tones (docs/benchmarks.md): aliasing
# below -135 dB and a passband error 70 dB or more below the signal up to 0.9 x Nyquist, where
# torchaudio's default sinc lets aliases through at -14 dB and errs at -22 dB; VHQ is 2 dB
# better at the band edge (inaudible) and no faster.
RESAMPLE_QUALITY = "HQ"


def resample_stream(chunks: Iterable[torch.Tensor], rate_from: int, rate_to: int
                    ) -> Iterator[torch.Tensor]:
    """Resample a signal given in (T_i,) chunks; the chunks join into what ``resample`` gives for
    the whole signal (soxr's stream and one-shot resamplers agree to the sample), and memory
    stays flat whatever the length or the rates. See ``resample`` for the length and quality."""
    if rate_from == rate_to:
        yield from chunks
        return
    stream = soxr.ResampleStream(rate_from, rate_to, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    consumed = produced = 0
    for chunk in chunks:
        consumed += chunk.shape[0]
        out = stream.resample_chunk(_as_numpy(chunk))
        produced += out.shape[0]
        if out.shape[0]:
            yield torch.from_numpy(out)
    if consumed:
        tail = stream.resample_chunk(np.zeros(_tail_padding(rate_from, rate_to), np.float32), last=True)
        wanted = resampled_length(consumed, rate_from, rate_to) - produced
        yield torch.from_numpy(np.ascontiguousarray(tail[:wanted]))


def resample(wave: torch.Tensor, rate_from: int, rate_to: int) -> torch.Tensor:
    """(T,) audio -> (ceil(T * rate_to / rate_from),) audio at ``rate_to``, with soxr.

    soxr's cost and memory do not depend on how the two rates reduce: torchaudio's resampler,
    used before, builds a kernel of (rate_to / g) x (rate_from / g) taps (g their gcd), over 10
    GB for 44101 -> 16000 Hz. soxr at RESAMPLE_QUALITY is also closer to the ideal resampler and
    faster on the common rates (docs/benchmarks.md, benchmarks/resample.py). The length is
    torchaudio's (ceil), which .bsq headers and decoded lengths were built on: soxr's own
    (rounded) length is padded with the zeros that lie past the end of the signal anyway."""
    if rate_from == rate_to:
        return wave
    x = np.concatenate([_as_numpy(wave), np.zeros(_tail_padding(rate_from, rate_to), np.float32)])
    out = soxr.resample(x, rate_from, rate_to, quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(out[: resampled_length(wave.shape[0], rate_from, rate_to)]))


def resampled_length(samples: int, rate_from: int, rate_to: int) -> int:
    """Samples that ``resample`` returns for ``samples`` input samples: ceil(T * to / from)."""
    return -(-samples * rate_to // rate_from)


def _tail_padding(rate_from: int, rate_to: int) -> int:
    """Zeros to append so that soxr, which returns round(T * to / from) samples, returns at least
    ceil(T * to / from): 1.5 output periods of input, and some to spare."""
    return 2 * math.ceil(rate_from / rate_to) + 2


def _as_numpy(wave: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(wave).detach().cpu().float().numpy())

