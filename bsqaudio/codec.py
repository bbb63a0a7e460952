"""Inference: waveform -> Codes -> waveform, the public Python API behind the CLI.

Windows are batched through the model under ``torch.inference_mode()``, but the Codes and audio
returned are ordinary tensors. float32 on CPU (bf16 matmul is very slow there), bf16 autocast on
CUDA. On CPU the same input gives the same codes on every run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from bsqaudio import code_space
from bsqaudio.codes import Codes
from bsqaudio.dsp.griffin_lim import GRIFFIN_LIM_ITERATIONS, GriffinLim
from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.dsp.resample import resample, resample_stream
from bsqaudio.dsp.windows import WindowCutter
from bsqaudio.errors import BsqAudioError
from bsqaudio.heap import release_freed_memory
from bsqaudio.hub import Pretrained, load_pretrained
from bsqaudio.io.audio_files import MAX_RATE, MIN_RATE, check_peak, load_mono, sf_frames, stream_mono

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
                 griffin_lim_iterations: int = GRIFFIN_LIM_ITERATIONS) -> None:
        self.device = resolve_device(device)
        self.model = pretrained.model.to(self.device).eval()
        self.config = self.model.config
        self.model_hash = pretrained.model_hash
        self.source = pretrained.source
        self.frontend = MelFrontend(self.config)
        self.griffin_lim = GriffinLim(self.config)
        self.batch_size = max(1, batch_size)
        self.griffin_lim_iterations = griffin_lim_iterations
        self._silence: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, name: str | Path | None = None, device: str = "auto",
                        revision: str | None = None, cache_dir: str | Path | None = None,
                        **kwargs) -> Codec:
        """Load weights (see ``bsqaudio.hub.load_pretrained``); ``kwargs`` go to ``Codec``."""
        return cls(load_pretrained(name, revision=revision, cache_dir=cache_dir), device=device,
                   **kwargs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, waveform: torch.Tensor | np.ndarray, sample_rate: int, source_channels: int | None = None,
               progress: Progress | None = None) -> Codes:
        """Audio at ``sample_rate`` -> Codes: (T,) or (C, T), float in [-1, 1] or integer PCM
        (see ``as_mono``)."""
        wave, channels = as_mono(waveform)
        if not (isinstance(sample_rate, numbers.Integral) and MIN_RATE <= sample_rate <= MAX_RATE):
            raise BsqAudioError(f"sample_rate must be a whole number of Hz in {MIN_RATE}-{MAX_RATE}, "
                                f"not {sample_rate!r}")
        wave = resample(wave, int(sample_rate), self.config.sample_rate)
        return self.encode_stream([wave], int(sample_rate), source_channels or channels, progress,
                                  expected_samples=wave.shape[0])

    def encode_file(self, source: str | Path | BinaryIO, progress: Progress | None = None,
                    allow_truncated: bool = False) -> Codes:
        """Encode a file; a path is read and resampled block by block, so memory does not grow
        with its length (stdin and file objects are read whole).

        A file holding less audio than its header declares raises
        ``bsqaudio.io.audio_files.TruncatedAudioError``; with ``allow_truncated=True`` its readable part is
        encoded and a ``bsqaudio.io.audio_files.TruncatedAudioWarning`` is issued (``warnings``)."""
        rate = self.config.sample_rate
        if isinstance(source, (str, Path)) and str(source) != "-":
            chunks, source_rate, channels = stream_mono(source, rate, allow_truncated=allow_truncated)
            expected = round(sf_frames(source) * rate / source_rate)
            return self.encode_stream(chunks, source_rate, channels, progress, expected)
        wave, source_rate, channels = load_mono(source, rate, allow_truncated=allow_truncated)
        return self.encode_stream([wave], source_rate, channels, progress, wave.shape[0])

    def encode_stream(self, chunks: Iterable[torch.Tensor], source_rate: int, source_channels: int,
                      progress: Progress | None = None, expected_samples: int | None = None) -> Codes:
        """(T,) chunks of audio at the model's rate -> Codes, holding only a batch of windows.

        A window is analysed as soon as its samples (and half an FFT of context) have arrived,
        and windows are run through the model ``batch_size`` at a time."""
        cutter = WindowCutter(self.config)
        pending: list[torch.Tensor] = []  # (frames, n_mels) normalized mel of windows not yet encoded
        indices: list[torch.Tensor] = []
        gains: list[float] = []
        expected_windows = self.config.num_windows(expected_samples) if expected_samples else 0

        def run() -> None:
            indices.append(self.encode_mel(torch.stack(pending)))
            pending.clear()
            if progress:
                done = sum(i.shape[0] for i in indices)
                progress(done, max(done, expected_windows))

        def take(segments: list[torch.Tensor]) -> None:
            for segment in segments:
                mel, gain = self.frontend.analyze_segment(segment)
                pending.append(mel)
                gains.append(gain)
                if len(pending) == self.batch_size:
                    run()

        # Analysis under inference mode (measured 15 % faster than with autograd's bookkeeping,
        # on the front-end alone); the Codes are built outside it, so they hold ordinary tensors
        # that a caller can edit in place.
        with torch.inference_mode():
            for chunk in chunks:
                take(cutter.feed(chunk))
            take(cutter.finish())
            if pending:
                run()
        return self.make_codes(torch.cat(indices), torch.tensor(gains), cutter.total, source_rate,
                               source_channels)

    @torch.inference_mode()
    def encode_mel(self, mel_bfm: torch.Tensor) -> torch.Tensor:
        """(B, frames, n_mels) normalized mel windows -> (B, patches) code indices on the CPU."""
        with self._autocast():
            indices = self.model.encode(mel_bfm.to(self.device)).indices.cpu()
        release_freed_memory()
        return indices

    def make_codes(self, window_indices: torch.Tensor, gains_db: torch.Tensor, num_samples: int,
                   source_rate: int, source_channels: int) -> Codes:
        """Per-window codes and gains of ``num_samples`` of audio -> Codes with its header."""
        c = self.config
        rows = self.config.num_rows(num_samples)
        header = {
            "model": c.name,
            "model_hash": self.model_hash,
            "code_space": self.code_space,
            "sample_rate": c.sample_rate,
            "n_fft": c.n_fft,
            "hop_length": c.hop_length,
            "win_length": c.win_length,
            "n_mels": c.n_mels,
            "window_frames": c.window_frames,
            "patch_time": c.patch_time,
            "patch_freq": c.patch_freq,
            "code_bits": c.code_bits,
            "num_windows": self.config.num_windows(num_samples),
            "num_rows": rows,
            "num_samples": num_samples,
            "source_sample_rate": int(source_rate),
            "source_channels": int(source_channels),
        }
        indices = window_indices.reshape(-1, c.grid_freq)[:rows].clone()
        return Codes(indices=indices, gains_db=gains_db, header=header)

    def codes_from_tokens(self, tokens, gains_db=None, num_samples: int | None = None,
                          source_rate: int | None = None, source_channels: int = 1) -> Codes:
        """Codes from bare token indices, e.g. a language model's output, to ``decode``.

        ``tokens``: the window layout of ``Codes.window_indices`` / ``encode --format npy``
        (W, rows_per_window * F), rows (R, F), or a flat (R * F,) sequence, time-major; rows of
        -1 at the end (padding) are dropped. ``gains_db``: (W,) window gains, or None for
        ``DEFAULT_GAIN_DB`` (typical speech loudness). ``num_samples``: the audio's length, by
        default the whole rows."""
        from bsqaudio.token_files import DEFAULT_GAIN_DB

        c = self.config
        freq, per_window = c.grid_freq, c.window_frames // c.patch_time
        array = torch.as_tensor(tokens)
        if array.is_floating_point() or array.is_complex() or array.dtype == torch.bool:
            raise BsqAudioError(f"tokens must be integers, not {array.dtype}")
        array = array.to(torch.int64)
        if array.dim() == 2 and array.shape[1] == per_window * freq:
            array = array.reshape(-1, freq)
        elif array.dim() == 1 and array.numel() % freq == 0:
            array = array.reshape(-1, freq)
        elif not (array.dim() == 2 and array.shape[1] == freq):
            raise BsqAudioError(f"tokens of shape {tuple(array.shape)}: expected (windows, "
                                f"{per_window * freq}), (rows, {freq}) or a flat multiple of {freq}")
        padding = (array == -1).all(1)
        rows = int(padding.logical_not().nonzero().max()) + 1 if not padding.all() else 0
        array = array[:rows]
        if rows == 0:
            raise BsqAudioError("no tokens (every row is padding)")
        if ((array >> c.code_bits) != 0).any():  # negative ones too: the shift keeps the sign
            raise BsqAudioError(f"a token is outside [0, 2**{c.code_bits}) (or -1 inside the tokens)")
        full = rows * c.patch_time * c.hop_length
        num_samples = full if num_samples is None else int(num_samples)
        if self.config.num_rows(num_samples) != rows:
            raise BsqAudioError(f"{num_samples} samples make {self.config.num_rows(num_samples)} rows of "
                                f"tokens, not {rows}")
        windows = self.config.num_windows(num_samples)
        gains = (torch.full((windows,), DEFAULT_GAIN_DB) if gains_db is None
                 else torch.as_tensor(gains_db, dtype=torch.float32).reshape(-1))
        if gains.shape != (windows,):
            raise BsqAudioError(f"{gains.shape[0]} gains for {windows} windows of tokens")
        codes = self.make_codes(array, gains, num_samples, source_rate or c.sample_rate, source_channels)
        codes.check_gains()
        return codes

    @functools.cached_property
    def code_space(self) -> str:
        """What this model's tokens mean (``bsqaudio.code_space``): files of this code space
        decode with this model whichever model of it wrote them. A released model's is read from
        the registry (tests/test_code_space.py holds it to the weights); others' are hashed (about
        60 ms for bsqaudio-small, paid by every encode otherwise)."""
        release = code_space.release_of(self.model_hash)
        return release["code_space"] if release else code_space.code_space_id(self.model)

    def check_compatible(self, codes: Codes) -> None:
        """Refuse codes this model cannot decode: those of weights that are neither this model's
        nor a released model of its code space (the registry), or of other settings."""
        h, c = codes.header, self.config
        if "code_space" in h:  # format 2 names its code space: any decoder of it will do
            if h["code_space"] != self.code_space:
                known = next((r for r in code_space.registry() if r["code_space"] == h["code_space"]), None)
                where = (f"; to decode it: {code_space.how_to_get(known)}" if known
                         else "; pass --model with a model of that code space")
                raise BsqAudioError(
                    f"this file was encoded with model {h['model']} ({h['model_hash']}, code space "
                    f"{h['code_space']}), but the loaded model {c.name} ({self.model_hash}) has code "
                    f"space {self.code_space}{where}")
        elif h["model_hash"] != self.model_hash:
            release = code_space.release_of(h["model_hash"])
            if release is None:
                raise BsqAudioError(
                    f"this file was encoded with model {h['model']} ({h['model_hash']}), which is not a "
                    f"released model, but the loaded model is {c.name} ({self.model_hash}); pass --model "
                    "with the model that wrote it")
            if release["code_space"] != self.code_space:
                raise BsqAudioError(
                    f"this file was encoded with {release['version']} (code space {release['code_space']}), "
                    f"but the loaded model {c.name} ({self.model_hash}) has code space {self.code_space}; "
                    f"to decode it: {code_space.how_to_get(release)}")
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

    def decode_mel_chunks(self, codes: Codes, progress: Progress | None = None) -> Iterator[torch.Tensor]:
        """Codes -> (frames, n_mels) mel power, a batch of windows at a time, over the real audio
        (plus one frame)."""
        self.check_compatible(codes)
        c = self.config
        windows = codes.window_indices(pad_value=-1)
        windows = torch.where(windows < 0, self.silence_indices(), windows)
        total = windows.shape[0]
        remaining = min(self.config.num_frames(codes.num_samples) + 1, total * c.window_frames)
        for first in range(0, total, self.batch_size):
            batch = windows[first: first + self.batch_size].to(self.device)
            with torch.inference_mode(), self._autocast():
                mel = self.model.decode_indices(batch)
            gains = codes.gains_db[first: first + self.batch_size]
            power = self.frontend.denormalize(mel.float().cpu(), gains).reshape(-1, c.n_mels)
            release_freed_memory()
            yield power[:remaining]
            remaining -= min(remaining, power.shape[0])
            if progress:
                progress(min(first + self.batch_size, total), total)

    def decode_mel(self, codes: Codes, progress: Progress | None = None) -> torch.Tensor:
        """Codes -> (frames, n_mels) mel power over the real audio (plus one frame)."""
        return torch.cat(list(self.decode_mel_chunks(codes, progress)))

    def decode_stream(self, codes: Codes, sample_rate: int | None = None,
                      progress: Progress | None = None) -> Iterator[torch.Tensor]:
        """Codes -> (T_i,) float32 audio chunks at ``sample_rate`` (the model's by default),
        produced block by block: memory does not grow with the length of the audio."""
        mel = self.decode_mel_chunks(codes, progress)
        audio = self.griffin_lim.synthesize_stream(mel, iterations=self.griffin_lim_iterations)
        rate = sample_rate or self.config.sample_rate
        return resample_stream(_exact_length(audio, codes.num_samples), self.config.sample_rate, rate)

    def decode(self, codes: Codes, sample_rate: int | None = None,
               progress: Progress | None = None) -> torch.Tensor:
        """Codes -> (T,) float32 audio at ``sample_rate`` (the model's rate by default)."""
        return torch.cat(list(self.decode_stream(codes, sample_rate, progress)))


# Integer sample types taken as PCM -> (offset, full scale): x -> (x - offset) / scale in [-1, 1).
# What soundfile (dtype="int16"/"int32"), scipy.io.wavfile (uint8 for 8-bit) and torchaudio
# return; other integer types (int64: a Python list of ints) have no known full scale.
PCM_SCALES = {torch.int8: (0, 2**7), torch.uint8: (2**7, 2**7), torch.int16: (0, 2**15), torch.int32: (0, 2**31)}

# More channels than this is no recording: an array in another layout, or the wrong array.
MAX_CHANNELS = 64
# soundfile's (T, C) layout is recognized (and transposed) for up to this many channels.
MAX_CHANNELS_LAST = 16


def as_mono(waveform: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, int]:
    """Audio given to the Python API -> ((T,) float32 downmix, channels), checked.

    (T,) is mono and (C, T) channels-first, the documented layout. A 2-D array whose second
    dimension is at most 16 and shorter than its first is soundfile's (T, C) (what ``sf.read``
    returns; read as (C, T), a 2 s stereo file was 88200 "channels" of 2 samples); any other is
    (C, T), refused past 64 channels. Integer PCM is scaled by ``PCM_SCALES`` (int16 taken as
    floats was a gain of 90 dB); samples far past full scale are refused
    (``bsqaudio.io.audio_files.check_peak``)."""
    try:
        wave = torch.as_tensor(waveform).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise BsqAudioError(f"waveform must be an array of samples, not {type(waveform).__name__} ({err})") from None
    if wave.dim() not in (1, 2):
        raise BsqAudioError(f"waveform of shape {tuple(wave.shape)}: expected (T,) or (C, T)")
    if wave.numel() == 0:
        raise BsqAudioError("audio is empty")
    if wave.dim() == 1:
        wave = wave[None]
    elif wave.shape[1] <= MAX_CHANNELS_LAST and wave.shape[1] < wave.shape[0]:
        wave = wave.T  # soundfile's (T, C)
    elif not wave.shape[0] <= MAX_CHANNELS:
        raise BsqAudioError(
            f"waveform of shape {tuple(wave.shape)}: expected (T,) or (C, T) with at most "
            f"{MAX_CHANNELS} channels (or soundfile's (T, C) with at most {MAX_CHANNELS_LAST})")
    if wave.dtype in PCM_SCALES:
        offset, scale = PCM_SCALES[wave.dtype]
        wave = (wave.float() - offset) / scale
    elif not wave.dtype.is_floating_point:
        raise BsqAudioError(f"samples of type {str(wave.dtype).removeprefix('torch.')}: give float samples "
                            "in [-1, 1] or integer PCM as int8, uint8, int16 or int32")
    peak = float(wave.abs().max())
    if not math.isfinite(peak):
        raise BsqAudioError("audio contains NaN or infinite samples")
    check_peak("audio", peak)
    return wave.float().mean(0), wave.shape[0]


def _exact_length(chunks: Iterable[torch.Tensor], length: int) -> Iterator[torch.Tensor]:
    """Cut (or zero-pad) a stream of chunks to exactly ``length`` samples."""
    produced = 0
    for chunk in chunks:
        take = chunk[: max(0, length - produced)]
        produced += take.shape[0]
        if take.shape[0]:
            yield take
    if produced < length:
        yield torch.zeros(length - produced)


def resolve_rate(codes: Codes | None, rate: str) -> int:
    """An output rate from 'model', 'source' (the rate recorded in the file) or a number of Hz,
    checked to lie in MIN_RATE-MAX_RATE: the header is untrusted input, never allocate from it
    unchecked."""
    if rate == "model" and codes is not None:
        return codes.sample_rate
    if rate == "source" and codes is not None:
        value = codes.header["source_sample_rate"]
        if not MIN_RATE <= value <= MAX_RATE:
            raise BsqAudioError(f"the file's source rate {value} Hz is outside {MIN_RATE}-{MAX_RATE} Hz; "
                                "pass --rate in Hz")
        return value
    try:
        value = int(rate)
    except ValueError:
        value = 0
    if not MIN_RATE <= value <= MAX_RATE:
        raise BsqAudioError(f"--rate must be 'model', 'source' or a rate in Hz, not {rate!r}")
    return value


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


def from_pretrained(name: str | Path | None = None, device: str = "auto", revision: str | None = None,
                    cache_dir: str | Path | None = None, **kwargs) -> Codec:
    """``bsqaudio.from_pretrained``: the same as ``Codec.from_pretrained``, one return type for
    both (a ``Codec``; its ``model``, ``model_hash`` and ``source`` are the loaded weights')."""
    return Codec.from_pretrained(name, device=device, revision=revision, cache_dir=cache_dir, **kwargs)
