"""The model's log-mel front-end: analysis of 16 kHz mono audio and its normalization.

Frames are centred on multiples of the hop over the whole file (zero padding at both ends), so a
window's spectrogram is computed from its own samples plus half an FFT of context on each side and
equals the whole-file spectrogram: windows can be processed one at a time, in any batch, with the
same result. Each window is referenced to its own peak (its gain), clamped to ``db_range`` below
it and normalized to [-1, 1] for the model.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF

from bsqaudio.model.config import ModelConfig

# Gains below this (a mel power of 0.01, about 66 dB below a full-scale sine) are treated as
# near-silence: the window is referenced to this floor instead of its own peak, so a silent window
# codes as -80 dB everywhere (POWER_EPS is 80 dB below the floor) rather than as noise amplified
# to full scale.
GAIN_FLOOR_DB = -20.0
POWER_EPS = 1e-10


def mel_filterbank(config: ModelConfig) -> torch.Tensor:
    """(n_freqs, n_mels) HTK mel filterbank, unnormalized, over 0 .. sample_rate / 2."""
    c = config
    return AF.melscale_fbanks(n_freqs=c.n_fft // 2 + 1, f_min=0.0, f_max=c.sample_rate / 2, n_mels=c.n_mels,
                              sample_rate=c.sample_rate, norm=None, mel_scale="htk")


class MelFrontend:
    """The model's log-mel analysis of 16 kHz mono audio (its inverse: ``dsp.griffin_lim``).

    A plain object rather than an ``nn.Module``: its two tensors (a 400-sample window, a
    513 x 128 filterbank) are moved to the input's device per call, which is free on the CPU
    (``.to`` returns the same tensor) and a few microseconds on a GPU, and keeps every model
    state dict free of buffers that are not weights."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.window = torch.hann_window(config.win_length)
        self.mel_fb = mel_filterbank(config)  # (n_freqs, n_mels)

    def window_segment(self, wave: torch.Tensor, index: int) -> torch.Tensor:
        """The samples window ``index`` of (T,) audio is analysed from (``segment_samples``,
        zeros outside the audio)."""
        c = self.config
        start, length = c.segment_start(index), c.segment_samples
        lo, hi = max(start, 0), min(start + length, wave.shape[0])
        segment = wave[lo:hi] if hi > lo else wave[:0]
        return torch.nn.functional.pad(segment, (lo - start, start + length - lo - segment.shape[0]))

    def power_mel(self, segments_bs: torch.Tensor) -> torch.Tensor:
        """(B, S) window segments -> (B, frames, n_mels) mel power."""
        c = self.config
        spec = torch.stft(segments_bs, c.n_fft, c.hop_length, c.win_length,
                          self.window.to(segments_bs.device), center=False, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (B, n_freqs, frames)
        return power.transpose(1, 2) @ self.mel_fb.to(segments_bs.device)

    def normalize(self, power_btf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel power -> (normalized mel in [-1, 1], gain in dB per window (B,)).

        Gains are rounded to float16, as the .bsq file stores them, so the Python API and a file
        round trip decode identically."""
        c = self.config
        db = 10.0 * torch.log10(power_btf.clamp_min(POWER_EPS))
        gain = db.amax(dim=(1, 2)).clamp_min(GAIN_FLOOR_DB).half().float()
        rel = (db - gain[:, None, None]).clamp(-c.db_range, 0.0)
        return rel / (c.db_range / 2) + 1.0, gain

    def denormalize(self, mel_btf: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
        """Normalized mel and per-window gain -> mel power."""
        c = self.config
        db = (mel_btf.float() - 1.0) * (c.db_range / 2) + gain_db[:, None, None].float()
        return 10.0 ** (db / 10.0)

    def analyze(self, wave: torch.Tensor, first: int = 0, count: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) audio -> normalized mel (W, frames, n_mels) and gains (W,) for windows
        ``first .. first+count`` (all by default)."""
        total = self.config.num_windows(wave.shape[0])
        count = total - first if count is None else count
        segments = torch.stack([self.window_segment(wave, i) for i in range(first, first + count)])
        return self.normalize(self.power_mel(segments))

    def analyze_segment(self, segment: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One window's segment (as ``WindowCutter`` cuts it) -> normalized mel (frames, n_mels) and
        its gain in dB. Streams analyse one window at a time: the STFT of a whole batch at once was
        the largest transient of an encode."""
        mel, gain = self.normalize(self.power_mel(segment[None]))
        return mel[0], float(gain[0])
