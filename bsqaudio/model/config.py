"""Every shape of the tokenizer in one dataclass, saved as ``config.json`` beside the weights.

The audio front-end settings live here too: a model is only meaningful together with the
spectrogram it was trained on, so the two travel in one place and one file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from bsqaudio.errors import BsqAudioError

# A config.json is untrusted input (a --model folder, a Hub repo) and every size in it becomes a
# tensor, so each one is bounded: (low, high) inclusive. The limits are generous past the presets
# (base: width 768, 12 + 12 layers; every preset: 16 kHz, 1024 x 128 windows of 512 patches); a
# .bsq header, which names the same front-end and patch geometry, is held to the same limits.
INT_LIMITS: dict[str, tuple[int, int]] = {
    "sample_rate": (1000, 384_000),  # the output rates bsqaudio decodes to
    "n_fft": (2, 16384),
    "win_length": (1, 16384),
    "hop_length": (1, 16384),
    "n_mels": (1, 1024),
    "window_frames": (1, 16384),
    "patch_time": (1, 16384),
    "patch_freq": (1, 1024),
    "width": (1, 4096),
    "heads": (1, 256),
    "encoder_layers": (0, 64),
    "decoder_layers": (0, 64),
    "conv_kernel": (1, 255),
    "refine_channels": (0, 256),
    "code_bits": (1, 63),
}
# (low, high) for floats; all must be finite (JSON's NaN and Infinity parse): a NaN db_range
# silently turns every spectrogram into NaN and every code into zero.
FLOAT_LIMITS: dict[str, tuple[float, float]] = {
    "db_range": (1.0, 200.0),
    "mlp_ratio": (0.0, 16.0),  # and width * mlp_ratio >= 1
    "layer_scale_init": (-1e3, 1e3),
    "inv_temperature": (1e-6, 1e6),
}
MAX_PATCHES = 4096  # patches a window (grid_time * grid_freq): attention is quadratic in it
MAX_WINDOW_BINS = 1 << 20  # window_frames * n_mels, the size of one window's spectrogram
MAX_PARAMETERS = 1 << 30  # checked by bsqaudio.hub before allocating; base has 215 M
MAX_NAME_CHARS = 200  # the name goes into every .bsq header and error message


@dataclass(frozen=True)
class ModelConfig:
    # Audio front-end (see bsqaudio.dsp.mel).
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 128
    window_frames: int = 1024
    db_range: float = 80.0
    # Patch grid.
    patch_time: int = 16
    patch_freq: int = 16
    # Transformer.
    width: int = 256
    heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_ratio: float = 4.0
    conv: bool = True
    conv_kernel: int = 31
    layer_scale_init: float = 0.1
    # Convolutional refinement over the whole decoded spectrogram (0 disables it): a linear head
    # per patch leaves visible block edges at patch borders, a small conv stack removes them.
    refine_channels: int = 32
    # Quantizer.
    code_bits: int = 36
    inv_temperature: float = 1.0
    # Identity, for the .bsq header and the model card.
    name: str = "bsqaudio-custom"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # also for configs built in Python, not from JSON
            value, expected = getattr(self, f.name), type(f.default)
            allowed = (int, float) if expected is float else expected
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, allowed):
                raise BsqAudioError(f"model config field {f.name!r} must be {expected.__name__}")
        out_of_range = [f"{key} must be between {low} and {high}"
                        for key, (low, high) in INT_LIMITS.items()
                        if not low <= getattr(self, key) <= high]
        out_of_range += [f"{key} must be a finite number in ({low:g}, {high:g}]"
                         for key, (low, high) in FLOAT_LIMITS.items()
                         if not (math.isfinite(v := getattr(self, key)) and low < v <= high)]
        if not self.name.isprintable() or len(self.name) > MAX_NAME_CHARS:
            out_of_range.append(f"name must be printable text of at most {MAX_NAME_CHARS} characters")
        if out_of_range:  # before the checks below, which divide by these
            raise BsqAudioError("invalid model config: " + "; ".join(out_of_range))
        problems = []
        if self.win_length > self.n_fft:
            problems.append("win_length must be at most n_fft")
        if int(self.width * self.mlp_ratio) < 1:
            problems.append("width * mlp_ratio must be at least 1")
        if self.window_frames % self.patch_time:
            problems.append("window_frames must be a multiple of patch_time")
        if self.n_mels % self.patch_freq:
            problems.append("n_mels must be a multiple of patch_freq")
        if self.width % self.heads:
            problems.append("width must be a multiple of heads")
        if self.conv and self.conv_kernel % 2 == 0:
            problems.append("conv_kernel must be odd")
        if self.n_fft // 2 + 1 < self.n_mels:
            problems.append("n_fft too small for n_mels")
        if not problems and self.num_patches > MAX_PATCHES:
            problems.append(f"a window may have at most {MAX_PATCHES} patches, not {self.num_patches}")
        if self.window_frames * self.n_mels > MAX_WINDOW_BINS:
            problems.append(f"window_frames * n_mels must be at most {MAX_WINDOW_BINS}")
        if problems:
            raise BsqAudioError("invalid model config: " + "; ".join(problems))

    @property
    def grid_time(self) -> int:
        return self.window_frames // self.patch_time

    @property
    def grid_freq(self) -> int:
        return self.n_mels // self.patch_freq

    @property
    def num_patches(self) -> int:
        return self.grid_time * self.grid_freq

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.hop_length

    # -- geometry: where audio falls in frames, patch rows and windows (defined only here) -------

    def num_frames(self, num_samples: int) -> int:
        """Mel frames that cover ``num_samples`` of audio: one per hop, at least one."""
        return max(1, -(-num_samples // self.hop_length))

    def num_rows(self, num_samples: int) -> int:
        """Patch rows (time) that cover ``num_samples`` of audio."""
        return rows_and_windows(max(num_samples, 1), self.hop_length, self.patch_time, self.window_frames)[0]

    def num_windows(self, num_samples: int) -> int:
        return rows_and_windows(max(num_samples, 1), self.hop_length, self.patch_time, self.window_frames)[1]

    @property
    def segment_samples(self) -> int:
        """Samples a window is analysed from: its own frames' hops plus n_fft/2 of context each
        side (frames are centred on multiples of the hop)."""
        return self.window_samples - self.hop_length + self.n_fft

    def segment_start(self, window: int) -> int:
        """First sample of window ``window``'s segment (negative for the first: zeros before the
        audio)."""
        return window * self.window_samples - self.n_fft // 2

    @property
    def tokens_per_second(self) -> float:
        return self.num_patches * self.sample_rate / self.window_samples

    @property
    def bitrate(self) -> float:
        """Bits per second of codes (gains add 16 bits per window on top)."""
        return self.tokens_per_second * self.code_bits

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise BsqAudioError("model config must be a JSON object")
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            names = ", ".join(_printable(name) for name in unknown[:5])
            raise BsqAudioError(f"unknown model config fields: {names}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelConfig:
        """Parse an untrusted config.json (text, or bytes that must be UTF-8)."""
        if len(text) > MAX_CONFIG_BYTES:
            raise BsqAudioError(f"model config is longer than {MAX_CONFIG_BYTES} bytes")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise BsqAudioError("model config is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BsqAudioError(f"model config is not valid JSON: {err}") from None
        except (ValueError, RecursionError):  # an int of over 4300 digits; nesting too deep
            raise BsqAudioError("model config is not valid JSON (too deeply nested, or a "
                                "number too long)") from None
        return cls.from_dict(data)


MAX_CONFIG_BYTES = 64 * 1024  # a real config.json is under 1 KB


def _printable(name: str, limit: int = 40) -> str:
    """A field name as one short printable line, for error messages."""
    if not name.isprintable():
        name = name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return name if len(name) <= limit else name[:limit] + "..."


PRESETS: dict[str, ModelConfig] = {
    # The seed's reference model.
    "base": ModelConfig(
        width=768, heads=12, encoder_layers=12, decoder_layers=12, code_bits=18, conv=True,
        name="bsqaudio-base",
    ),
    # The embedded default: trains in hours, encodes far faster than real time on 2 CPU cores.
    "small": ModelConfig(
        width=256, heads=4, encoder_layers=5, decoder_layers=5, code_bits=36, conv=True,
        name="bsqaudio-small",
    ),
    # For tests: a few thousand parameters, milliseconds a window.
    "tiny": ModelConfig(
        width=32, heads=2, encoder_layers=1, decoder_layers=1, mlp_ratio=2.0, code_bits=18,
        conv=True, conv_kernel=7, refine_channels=4, name="bsqaudio-tiny",
    ),
}


def rows_and_windows(num_samples: int, hop_length: int, patch_time: int, window_frames: int) -> tuple[int, int]:
    """Patch rows and windows that ``num_samples`` of audio fill. Integer arithmetic: num_samples
    may be up to 2**64, past a float's exact range (``.bsq`` headers are checked with it)."""
    frames = -(-num_samples // hop_length)
    rows = -(-frames // patch_time)
    return rows, -(-rows // max(window_frames // patch_time, 1))


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise BsqAudioError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
