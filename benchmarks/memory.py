"""Peak memory (RSS) of `bsqaudio encode` and `decode` against input length.

    python benchmarks/memory.py --minutes 1 10 60 [--json memory.json] [--model DIR]

Each measurement is a fresh `bsqaudio` process (so the peak is its own), on a generated
44.1 kHz stereo WAV of the given length (speech-like tones and noise bursts: content does not
change memory); peak RSS comes from the kernel (getrusage of the child). Streaming should keep
the peak flat: the target is the 60-minute peak within 10 % of the 1-minute one, under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf


def make_wav(path: Path, minutes: float, rate: int = 44100) -> None:
    """Write block by block, so making a long file does not itself need the memory."""
    rng = np.random.default_rng(0)
    block = rate * 10
    with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as handle:
        for start in range(0, int(minutes * 60 * rate), block):
            t = (start + np.arange(block)) / rate
            tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * np.sin(t)) * t)
            bursts = rng.normal(0, 0.05, block) * (np.sin(2 * np.pi * 0.5 * t) > 0.8)
            mono = (tone + bursts).astype(np.float32)
            handle.write(np.stack([mono, 0.5 * mono], axis=1))


def peak_rss(args: list[str]) -> tuple[float, float]:
    """Run ``python -m bsqaudio ARGS`` in a fresh process -> (peak RSS MiB, wall seconds)."""
    script = ("import resource, subprocess, sys; "
              "r = subprocess.run(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    start = time.time()
    result = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "bsqaudio", *args],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"bsqaudio {' '.join(args)} failed:\n{result.stderr}")
    return int(result.stdout.strip().splitlines()[-1]) / 1024, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = ["--model", args.model] if args.model else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            wav, bsq, out = Path(tmp) / "in.wav", Path(tmp) / "in.bsq", Path(tmp) / "out.wav"
            make_wav(wav, minutes)
            enc_mib, enc_s = peak_rss(["encode", str(wav), "-o", str(bsq), "--quiet", "--force", *model])
            dec_mib, dec_s = peak_rss(["decode", str(bsq), "-o", str(out), "--quiet", "--force", *model])
            rows.append({"minutes": minutes, "encode_peak_mib": enc_mib, "encode_s": enc_s,
                         "decode_peak_mib": dec_mib, "decode_s": dec_s})
            print(f"{minutes:6.1f} min  encode {enc_mib:7.1f} MiB {enc_s:7.1f} s   "
                  f"decode {dec_mib:7.1f} MiB {dec_s:7.1f} s", flush=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "nproc": os.cpu_count(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "max_rss_unit": "MiB of the bsqaudio child process"}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    first, last = rows[0], rows[-1]
    for kind in ("encode", "decode"):
        ratio = last[f"{kind}_peak_mib"] / first[f"{kind}_peak_mib"]
        print(f"{kind}: {last['minutes']:.0f} min peak / {first['minutes']:.0f} min peak = {ratio:.3f}")


if __name__ == "__main__":
    main()
