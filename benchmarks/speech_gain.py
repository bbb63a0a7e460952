"""The loudness that tokens without gains decode at (``token_files.DEFAULT_GAIN_DB``).

    python benchmarks/speech_gain.py /work/data/corpus

The window gain is a window's peak mel power in dB (``MelFrontend.normalize``). This reports its
median and 10th-90th percentiles over the first 30 s of the first 60 validation files of each kind
in CORPUS/manifest.jsonl (as ``scripts/build_corpus.py`` writes it). Session 8: speech 31.5 dB
(66 windows, 28.4-34.6), music 29.0 dB (36 windows, 19.9-32.7).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bsqaudio.codec import Codec
from bsqaudio.io.audio_files import load_mono


def main(corpus: str) -> int:
    root = Path(corpus)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    codec = Codec.from_pretrained(device="cpu")
    for kind in ("speech", "music"):
        gains = []
        for row in [r for r in rows if r.get("split") == "val" and r.get("kind") == kind][:60]:
            wave, _, _ = load_mono(root / row["path"], 16000)
            gains += codec.frontend.analyze(wave[: 30 * 16000])[1].tolist()
        low, median, high = np.percentile(gains, [10, 50, 90])
        print(f"{kind}: median {median:.1f} dB over {len(gains)} windows (10-90 %: {low:.1f}-{high:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
