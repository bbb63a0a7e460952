"""The tokenizer model: config, quantizer, transformer blocks and the encoder/decoder."""

from bsqaudio.model.config import PRESETS, ModelConfig, preset
from bsqaudio.model.quantizer import BinarySphericalQuantizer
from bsqaudio.model.tokenizer import AudioBSQ, patchify, unpatchify

__all__ = ["PRESETS", "AudioBSQ", "BinarySphericalQuantizer", "ModelConfig", "patchify", "preset",
           "unpatchify"]
