"""Tokenize a clip with the embedded default model, save it as .bsq, and decode it back.

    python examples/api_example.py examples/speech_en.wav
"""

import sys

import soundfile as sf

import bsqaudio


def main(path: str) -> None:
    codec = bsqaudio.Codec.from_pretrained(device="cpu")
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    codes = codec.encode(audio.T, rate)  # (C, T) or (T,) at any rate
    tokens = codes.window_indices()  # (windows, 512) int64, time-major, -1 past the end
    print(f"{codes.duration:.2f} s -> {codes.indices.numel()} tokens of {codes.code_bits} bits "
          f"({codes.bitrate:.0f} bit/s); first tokens: {tokens[0, :4].tolist()}")

    payload = bsqaudio.write_bsq(codes)
    with open("example.bsq", "wb") as handle:
        handle.write(payload)
    print(f"example.bsq: {len(payload)} bytes")

    decoded = codec.decode(bsqaudio.load_bsq("example.bsq"), sample_rate=rate)
    sf.write("example_decoded.wav", decoded.numpy(), rate)
    print(f"example_decoded.wav: {decoded.shape[0] / rate:.2f} s at {rate} Hz")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/speech_en.wav")
