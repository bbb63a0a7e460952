"""bsqaudio: an audio tokenizer and codec after BSQ-ViT (binary spherical quantization).

    import bsqaudio
    codec = bsqaudio.Codec.from_pretrained()          # the embedded default model
    codes = codec.encode(waveform, sample_rate)       # -> Codes: L-bit tokens + gains
    audio = codec.decode(codes)                       # -> (T,) float32 at 16 kHz

Names are imported on first use (PEP 562): torch takes over a second to import, and
``bsqaudio --help``, ``info`` and ``tokens`` should not wait for it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {
    "AudioBSQ": "bsqaudio.model", "ModelConfig": "bsqaudio.model", "preset": "bsqaudio.model",
    "BsqAudioError": "bsqaudio.errors",
    "Codec": "bsqaudio.codec", "decode": "bsqaudio.codec", "encode": "bsqaudio.codec",
    "Codes": "bsqaudio.codes", "load_bsq": "bsqaudio.bitstream", "read_bsq": "bsqaudio.bitstream",
    "save_bsq": "bsqaudio.bitstream", "write_bsq": "bsqaudio.bitstream",
    "from_pretrained": "bsqaudio.codec", "save_pretrained": "bsqaudio.hub",
}

__all__ = ["AudioBSQ", "BsqAudioError", "Codec", "Codes", "ModelConfig", "__version__", "decode",
           "encode", "from_pretrained", "load_bsq", "preset", "read_bsq", "save_bsq", "save_pretrained",
           "write_bsq"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'bsqaudio' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
