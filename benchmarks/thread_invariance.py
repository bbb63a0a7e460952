"""Codes do not depend on the CPU thread count: encode every file at 1 and at 2 threads, count bits.

    python benchmarks/thread_invariance.py /work/exp/sweep_manifest.jsonl

Input: a manifest (jsonl with absolute ``path`` fields) or a .txt list; each file's first 30 s.
Float sums round differently with the thread count, so a code bit whose latent is within rounding
of zero could flip; this counts how many do. Session 8: 0 of 475,200 bits over 262 s (the 18 files
of the Griffin-Lim curve in docs/benchmarks.md), which the README states for ``--threads``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bsqaudio.codec import Codec
from bsqaudio.io.audio_files import load_mono
from bsqaudio.io.inputs import read_path_list


def main(source: str) -> int:
    paths = ([json.loads(line)["path"] for line in Path(source).read_text().splitlines() if line.strip()]
             if source.endswith(".jsonl") else read_path_list(source))
    codec = Codec.from_pretrained(device="cpu")
    differing = total = 0
    seconds = 0.0
    for path in paths:
        wave, _, _ = load_mono(path, 16000)
        wave = wave[: 30 * 16000]
        codes = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            codes[threads] = codec.encode(wave, 16000).indices
        flips = codes[1] ^ codes[2]
        differing += sum(bin(int(v)).count("1") for v in flips.reshape(-1).tolist())
        total += flips.numel() * codec.config.code_bits
        seconds += wave.shape[0] / 16000
    print(f"{differing} differing bits of {total} over {seconds:.0f} s in {len(paths)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
