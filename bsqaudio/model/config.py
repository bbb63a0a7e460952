"""Every shape of the tokenizer in one dataclass, saved as ``config.json`` beside the weights.

The audio front-end settings live here too: a model is only meaningful together with the
spectrogram it was trained on, so the two travel in one place and one file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from bsqaudio.errors import BsqAudioError


@dataclass(frozen=True)
class ModelConfig:
    # Audio front-end (see bsqaudio.audio).
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
        problems = []
        if self.window_frames % self.patch_time:
            problems.append("window_frames must be a multiple of patch_time")
        if self.n_mels % self.patch_freq:
            problems.append("n_mels must be a multiple of patch_freq")
        if self.width % self.heads:
            problems.append("width must be a multiple of heads")
        if not 1 <= self.code_bits <= 63:
            problems.append("code_bits must be between 1 and 63")
        if self.conv and self.conv_kernel % 2 == 0:
            problems.append("conv_kernel must be odd")
        if self.n_fft // 2 + 1 < self.n_mels:
            problems.append("n_fft too small for n_mels")
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
            raise BsqAudioError(f"unknown model config fields: {', '.join(unknown)}")
        defaults = cls()
        for key, value in data.items():
            expected = type(getattr(defaults, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise BsqAudioError(f"model config field {key!r} must be {expected.__name__}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BsqAudioError(f"model config is not valid JSON: {err}") from None
        return cls.from_dict(data)


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


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise BsqAudioError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
