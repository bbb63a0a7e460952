"""Inference: waveform -> Codes -> waveform, the public Python API behind the CLI.

Windows are batched through the model under ``torch.inference_mode()``: float32 on CPU (bf16
matmul is very slow there), bf16 autocast on CUDA. On CPU the same input gives the same codes on
every run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from bsqaudio.audio import MelFrontend, load_mono, resample
from bsqaudio.bitstream import Codes
from bsqaudio.errors import BsqAudioError
from bsqaudio.hub import Pretrained, from_pretrained

Progress = Callable[[int, int], None]  # (done, total) windows


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BsqAudioError("--device cuda was asked for, but no CUDA GPU is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise BsqAudioError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


class Codec:
    """A loaded model with its front-end, ready to encode and decode."""

    def __init__(self, pretrained: Pretrained, device: str = "auto", batch_size: int = 8,
                 griffin_lim_iterations: int = 32) -> None:
        self.device = resolve_device(device)
        self.model = pretrained.model.to(self.device).eval()
        self.config = self.model.config
        self.model_hash = pretrained.model_hash
        self.source = pretrained.source
        self.frontend = MelFrontend(self.config)
        self.batch_size = max(1, batch_size)
        self.griffin_lim_iterations = griffin_lim_iterations
        self._silence: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, name: str | Path | None = None, device: str = "auto",
                        revision: str | None = None, cache_dir: str | Path | None = None,
                        **kwargs) -> Codec:
        """Load weights (see ``bsqaudio.hub.from_pretrained``); ``kwargs`` go to ``Codec``."""
        return cls(from_pretrained(name, revision=revision, cache_dir=cache_dir), device=device,
                   **kwargs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode(self, waveform: torch.Tensor, sample_rate: int, source_channels: int | None = None,
               progress: Progress | None = None) -> Codes:
        """(T,) or (C, T) audio at ``sample_rate`` -> Codes."""
        wave = torch.as_tensor(waveform, dtype=torch.float32)
        if wave.dim() == 2:
            channels = wave.shape[0]
            wave = wave.mean(0)
        elif wave.dim() == 1:
            channels = 1
        else:
            raise BsqAudioError("waveform must be (T,) or (C, T)")
        if wave.numel() == 0:
            raise BsqAudioError("audio is empty")
        if not torch.isfinite(wave).all():
            raise BsqAudioError("audio contains NaN or infinite samples")
        c = self.config
        source_rate = sample_rate
        wave = resample(wave, sample_rate, c.sample_rate)
        num_samples = max(1, wave.shape[0])
        windows = self.frontend.num_windows(num_samples)
        rows = self.frontend.num_rows(num_samples)
        all_indices, all_gains = [], []
        for first in range(0, windows, self.batch_size):
            count = min(self.batch_size, windows - first)
            mel, gains = self.frontend.analyze(wave, first, count)
            with self._autocast():
                indices = self.model.encode(mel.to(self.device)).indices
            all_indices.append(indices.cpu())
            all_gains.append(gains)
            if progress:
                progress(first + count, windows)
        indices = torch.cat(all_indices).view(-1, c.grid_freq)[:rows].clone()
        header = {
            "model": c.name,
            "model_hash": self.model_hash,
            "sample_rate": c.sample_rate,
            "n_fft": c.n_fft,
            "hop_length": c.hop_length,
            "win_length": c.win_length,
            "n_mels": c.n_mels,
            "window_frames": c.window_frames,
            "patch_time": c.patch_time,
            "patch_freq": c.patch_freq,
            "code_bits": c.code_bits,
            "num_windows": windows,
            "num_rows": rows,
            "num_samples": num_samples,
            "source_sample_rate": int(source_rate),
            "source_channels": int(source_channels or channels),
        }
        return Codes(indices=indices, gains_db=torch.cat(all_gains), header=header)

    def encode_file(self, source: str | Path | BinaryIO, progress: Progress | None = None) -> Codes:
        wave, source_rate, channels = load_mono(source, self.config.sample_rate)
        codes = self.encode(wave, self.config.sample_rate, source_channels=channels,
                            progress=progress)
        codes.header["source_sample_rate"] = source_rate
        return codes

    def check_compatible(self, codes: Codes) -> None:
        h, c = codes.header, self.config
        if h["model_hash"] != self.model_hash:
            raise BsqAudioError(
                f"this file was encoded with model {h['model']} ({h['model_hash']}), but the loaded "
                f"model is {c.name} ({self.model_hash}); pass --model with the model that wrote it"
            )
        ours = (c.sample_rate, c.n_fft, c.hop_length, c.win_length, c.n_mels, c.window_frames,
                c.patch_time, c.patch_freq, c.code_bits)
        theirs = tuple(h[k] for k in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels",
                                      "window_frames", "patch_time", "patch_freq", "code_bits"))
        if ours != theirs:
            raise BsqAudioError("this file's spectrogram or code settings differ from the model's")

    def silence_indices(self) -> torch.Tensor:
        """(N,) codes the model gives a silent window: what fills rows past the end of audio."""
        if self._silence is None:
            c = self.config
            silent = torch.full((1, c.window_frames, c.n_mels), -1.0, device=self.device)
            with torch.inference_mode(), self._autocast():
                self._silence = self.model.encode(silent).indices[0].cpu()
        return self._silence

    @torch.inference_mode()
    def decode_mel(self, codes: Codes, progress: Progress | None = None) -> torch.Tensor:
        """Codes -> (frames, n_mels) mel power over the real audio (plus one frame)."""
        self.check_compatible(codes)
        c = self.config
        windows = codes.window_indices(pad_value=-1)
        windows = torch.where(windows < 0, self.silence_indices(), windows)
        mels = []
        total = windows.shape[0]
        for first in range(0, total, self.batch_size):
            batch = windows[first: first + self.batch_size].to(self.device)
            with self._autocast():
                mel = self.model.decode_indices(batch)
            gains = codes.gains_db[first: first + self.batch_size]
            mels.append(self.frontend.denormalize(mel.float().cpu(), gains).reshape(-1, c.n_mels))
            if progress:
                progress(min(first + self.batch_size, total), total)
        frames = min(self.frontend.num_frames(codes.num_samples) + 1, total * c.window_frames)
        return torch.cat(mels)[:frames]

    def decode(self, codes: Codes, sample_rate: int | None = None,
               progress: Progress | None = None) -> torch.Tensor:
        """Codes -> (T,) float32 audio at ``sample_rate`` (the model's rate by default)."""
        power = self.decode_mel(codes, progress)
        wave = self.frontend.synthesize(power, iterations=self.griffin_lim_iterations)
        wave = wave[: codes.num_samples]
        if wave.shape[0] < codes.num_samples:
            wave = torch.nn.functional.pad(wave, (0, codes.num_samples - wave.shape[0]))
        rate = sample_rate or self.config.sample_rate
        return resample(wave, self.config.sample_rate, rate)


_DEFAULT: Codec | None = None


def _default_codec() -> Codec:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Codec.from_pretrained()
    return _DEFAULT


def encode(waveform: torch.Tensor, sample_rate: int, codec: Codec | None = None) -> Codes:
    """Tokenize audio with the default model (or ``codec``)."""
    return (codec or _default_codec()).encode(waveform, sample_rate)


def decode(codes: Codes, sample_rate: int | None = None, codec: Codec | None = None) -> torch.Tensor:
    """Turn Codes back into audio with the default model (or ``codec``)."""
    return (codec or _default_codec()).decode(codes, sample_rate)
