"""Dataset tokenization throughput and memory: many short clips, and one long file.

    python benchmarks/batch_throughput.py [--clips 1000] [--workers 0 1 2] [--json out.json]

Runs the installed CLI the way a user would (`bsqaudio encode --from LIST --out-dir DIR`, a fresh
process per measurement, default embedded model unless --model) on

  * ``--clips`` generated clips of 1-5 s (uniform), mixed formats and rates (FLAC 16 kHz, WAV
    44.1 kHz stereo, WAV 48 kHz), for each ``--workers`` value;
  * one file each of ``--minutes`` (default 1, 2 and 60; 44.1 kHz stereo WAV), default workers.
    With the default batch of 8 windows a 1-minute file (6 windows) never fills a batch and its
    reader has finished before the model's peak; from 2 minutes on, both hold.

Reported per run: audio-hours encoded per wall-clock hour (process start and model load
included, which is what a user waits for), and peak memory of the whole process tree (main
process + reader workers), sampled every 50 ms as the sum of each process's PSS (proportional set
size: pages shared after fork are split between the processes, not counted twice). The target
(issue 5): the 60-minute file's peak within 10 % of the 1-minute file's. Measure on an otherwise
idle machine: any other process mapping the same libraries (another torch job) takes a share of
their pages and lowers the PSS measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from memory import make_wav  # noqa: E402  (the same generated long input as benchmarks/memory.py)
from train_throughput import machine  # noqa: E402  (CPU model, cores, torch, load average)


def make_clips(folder: Path, count: int, seed: int = 0) -> tuple[list[Path], float]:
    """``count`` speech-like clips of 1-5 s in three formats -> (paths, total seconds)."""
    rng = np.random.default_rng(seed)
    paths, total = [], 0.0
    formats = (("flac", 16000, 1), ("wav", 44100, 2), ("wav", 48000, 1))
    for i in range(count):
        suffix, rate, channels = formats[i % len(formats)]
        seconds = float(rng.uniform(1.0, 5.0))
        t = np.arange(int(seconds * rate)) / rate
        pitch = rng.uniform(90, 250)
        voiced = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, 12))
        envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > -0.3).astype(float)
        mono = 0.1 * voiced * envelope + rng.normal(0, 0.01, t.shape)
        data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
        path = folder / f"clip{i:05d}.{suffix}"
        sf.write(path, data.astype(np.float32), rate)
        paths.append(path)
        total += seconds
    return paths, total


def pss_mib(pid: int) -> float:
    """PSS of ``pid`` and all its descendants, MiB (0 for processes that have gone)."""
    total_kib, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        stack.extend(int(c) for c in children)
    return total_kib / 1024


def run_measured(args: list[str]) -> dict:
    """Run ``bsqaudio ARGS`` -> wall seconds and peak process-tree PSS."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "bsqaudio", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, pss_mib(process.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = process.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"bsqaudio {' '.join(args)} failed:\n{stderr}")
    return {"wall_s": round(wall, 2), "peak_pss_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000, help="0: only the long-file runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0, 60.0],
                        help="lengths of the single-file runs; ratios are to the first")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = ["--model", args.model] if args.model else []
    machine_before = machine()  # includes the load average: other work skews these numbers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "clips").mkdir()
        paths, clip_seconds = make_clips(tmp / "clips", args.clips)
        listing = tmp / "clips.txt"
        listing.write_text("".join(f"{p}\n" for p in paths))
        for workers in args.workers if args.clips else []:
            out = tmp / f"out-clips-{workers}"
            result = run_measured(["encode", "--from", str(listing), "--out-dir", str(out), "--quiet",
                                   "--workers", str(workers), "--batch-size", str(args.batch_size), *model])
            rows.append({"input": f"{args.clips} clips of 1-5 s", "audio_s": round(clip_seconds, 1),
                         "workers": workers, **result})
        for minutes in args.minutes:
            wav = tmp / f"long-{minutes:g}.wav"
            make_wav(wav, minutes)
            result = run_measured(["encode", str(wav), "--out-dir", str(tmp / "out-long"), "--quiet",
                                   "--batch-size", str(args.batch_size), *model])
            rows.append({"input": f"one {minutes:g}-minute file", "audio_s": minutes * 60,
                         "workers": "default", **result})
            wav.unlink()
    for row in rows:
        row["audio_h_per_h"] = round(row["audio_s"] / row["wall_s"], 1)
    print("| input | workers | audio s | wall s | audio-hours per hour | peak PSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['input']} | {r['workers']} | {r['audio_s']:.0f} | {r['wall_s']:.1f} | "
              f"{r['audio_h_per_h']:.0f} | {r['peak_pss_mib']:.0f} |")
    singles = rows[-len(args.minutes):]
    base = singles[0]
    for row in singles[1:]:
        row["peak_over_first"] = round(row["peak_pss_mib"] / base["peak_pss_mib"], 3)
        print(f"{row['input']} peak / {base['input']} peak: {row['peak_over_first']:.3f}")
    print("(target: 60-minute file within 1.10 of the 1-minute file)")
    report = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_before, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
