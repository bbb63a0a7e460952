"""The tokenizer model: config, quantizer, transformer blocks and the encoder/decoder.

``bsqaudio.model.config`` needs no torch (the .bsq reader checks headers against its limits), so
the torch-based names here are imported on first use.
"""

from __future__ import annotations

import importlib

from bsqaudio.model.config import PRESETS, ModelConfig, preset

_WHERE = {"BinarySphericalQuantizer": "bsqaudio.model.quantizer", "AudioBSQ": "bsqaudio.model.tokenizer",
          "patchify": "bsqaudio.model.tokenizer", "unpatchify": "bsqaudio.model.tokenizer"}

__all__ = ["PRESETS", "AudioBSQ", "BinarySphericalQuantizer", "ModelConfig", "patchify", "preset",
           "unpatchify"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'bsqaudio.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
