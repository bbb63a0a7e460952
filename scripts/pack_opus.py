#!/usr/bin/env python3
"""Re-encode a corpus (the output of build_corpus.py) as Opus, to carry it where space is tight.

Used to move the training set to a GPU machine whose upload is capped (64 MiB): 16 kHz mono
speech and music at 20 kbit/s Opus lose little that a 128-bin mel spectrogram can see. Files are
processed in a deterministic order; ``--max-hours`` per kind keeps the pack under its budget by
taking files in sha1 order (a stable, unbiased subset).

    python scripts/pack_opus.py /work/data/corpus .gpu/corpus --bitrate 20k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="folder with manifest.jsonl")
    parser.add_argument("out", type=Path)
    parser.add_argument("--bitrate", default="20k")
    parser.add_argument("--max-hours", type=json.loads, default={},
                        help='JSON, e.g. {"music": 4.0}: cap the train hours of a kind')
    parser.add_argument("--val-seconds", type=float, default=None,
                        help="keep only the start of each validation file (training validates on "
                             "the first 10.24 s of each, so 11 s loses nothing and saves space)")
    args = parser.parse_args()
    entries = [json.loads(line) for line in (args.corpus / "manifest.jsonl").read_text().splitlines()]
    entries.sort(key=lambda e: hashlib.sha1(e["path"].encode()).hexdigest())
    used: dict[str, float] = {}
    chosen = []
    for entry in entries:
        cap = args.max_hours.get(entry["kind"])
        if entry["split"] == "train" and cap is not None:
            if used.get(entry["kind"], 0.0) + entry["duration_s"] / 3600 > cap:
                continue
            used[entry["kind"]] = used.get(entry["kind"], 0.0) + entry["duration_s"] / 3600
        chosen.append(entry)

    def convert(entry: dict) -> None:
        target = (args.out / entry["path"]).with_suffix(".opus")
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.opus")
        limit = ["-t", str(args.val_seconds)] if entry["split"] == "val" and args.val_seconds else []
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(args.corpus / entry["path"]), *limit,
                        "-c:a", "libopus", "-b:a", args.bitrate, "-ac", "1", str(tmp)], check=True)
        tmp.replace(target)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(convert, chosen))
    hours = sum(e["duration_s"] for e in chosen) / 3600
    print(f"{len(chosen)} files, {hours:.2f} h -> {args.out}")


if __name__ == "__main__":
    main()
