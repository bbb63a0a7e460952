"""bsqaudio: an audio tokenizer and codec after BSQ-ViT (binary spherical quantization).

    import bsqaudio
    codec = bsqaudio.Codec.from_pretrained()          # the embedded default model
    codes = codec.encode(waveform, sample_rate)       # -> Codes: L-bit tokens + gains
    audio = codec.decode(codes)                       # -> (T,) float32 at 16 kHz
"""

from bsqaudio.bitstream import Codes, load_bsq, read_bsq, write_bsq
from bsqaudio.codec import Codec, decode, encode
from bsqaudio.errors import BsqAudioError
from bsqaudio.hub import from_pretrained, save_pretrained
from bsqaudio.model import AudioBSQ, ModelConfig, preset

__version__ = "0.1.0"

__all__ = ["AudioBSQ", "BsqAudioError", "Codec", "Codes", "ModelConfig", "__version__", "decode",
           "encode", "from_pretrained", "load_bsq", "preset", "read_bsq", "save_pretrained",
           "write_bsq"]
