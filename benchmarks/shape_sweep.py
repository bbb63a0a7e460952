"""Choose the `small` preset by measurement: a few shapes, one short fixed training budget each.

    python benchmarks/shape_sweep.py /work/data/corpus --steps 300 --batch-size 4 \\
        --out /tmp/sweep --json sweep.json

Every shape is trained from scratch with `bsqaudio train` (same data, seed, schedule and number of
windows seen: ``--steps`` x ``--batch-size``), then scored by its final validation mel MAE (EMA
weights, ``--val-windows`` validation windows). Equal windows rather than equal minutes, so that
the ranking does not depend on what else the machine was doing; each shape's cost is reported
separately as FLOPs per 10.24 s window (torch's FlopCounterMode, encoder + quantizer) and as
encode time per window on this CPU (float32, batch 8, best of 5 after a warm-up; measure on an
idle machine). Finished shapes are skipped on a rerun, so the sweep resumes after a kill.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bsqaudio.model import AudioBSQ, preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import flop_formula_fixes  # noqa: E402  (a sibling script: counts CPU attention)

# (label, --set overrides relative to `small`)
SHAPES: list[tuple[str, list[str]]] = [
    ("small (w256 d5+5 L36 conv)", []),
    ("no conv module", ["conv=false"]),
    ("narrow w192 h3", ["width=192", "heads=3"]),
    ("shallow d3+3", ["encoder_layers=3", "decoder_layers=3"]),
    ("wide w384 h6 d4+4", ["width=384", "heads=6", "encoder_layers=4", "decoder_layers=4"]),
    ("L18 (900 bit/s)", ["code_bits=18"]),
    ("patch_time 8, L18", ["patch_time=8", "code_bits=18"]),
]


def config_for(overrides: list[str]):
    import dataclasses

    from bsqaudio.model.config import ModelConfig

    fields = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    values = {}
    for item in overrides:
        key, value = item.split("=", 1)
        kind = fields[key]
        values[key] = value.lower() == "true" if kind in (bool, "bool") else (
            int(value) if kind in (int, "int") else float(value))
    return dataclasses.replace(preset("small"), **values)


def encode_cost(config) -> tuple[float, float, int]:
    """-> (GFLOPs per window, encode seconds per window, parameters)."""
    model = AudioBSQ(config).eval()
    mel = torch.rand(8, config.window_frames, config.n_mels) * 2 - 1
    with torch.inference_mode():
        with FlopCounterMode(display=False, custom_mapping=flop_formula_fixes()) as counter:
            model.encode(mel[:1])
        model.encode(mel)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            model.encode(mel)
            best = min(best, time.perf_counter() - start)
    return counter.get_total_flops() / 1e9, best / 8, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="folder with train/ and val/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val-windows", type=int, default=64)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--only", type=int, nargs="*", default=None, help="indices of SHAPES")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for index, (label, overrides) in enumerate(SHAPES):
        if args.only is not None and index not in args.only:
            continue
        run = args.out / f"shape{index}"
        metrics = run / "metrics.jsonl"
        vals = []
        if metrics.exists():
            vals = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "val"]
        if not vals or vals[-1]["step"] < args.steps:
            command = [sys.executable, "-m", "bsqaudio", "train", str(args.corpus / "train"),
                       "--val-dir", str(args.corpus / "val"), "--out", str(run), "--preset", "small",
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--lr", str(args.lr), "--warmup", str(max(1, args.steps // 10)),
                       "--val-every", str(args.steps), "--val-windows", str(args.val_windows),
                       "--checkpoint-every", "50", "--cache", str(args.out / "cache"), "--device", "cpu"]
            for item in overrides:
                command += ["--set", item]
            if (run / "checkpoint" / "meta.json").exists():
                command.append("--resume")
            started = time.time()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            print(f"{label}: trained in {time.time() - started:.0f} s", file=sys.stderr)
            vals = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "val"]
        config = config_for(overrides)
        gflops, seconds, params = encode_cost(config)
        final = vals[-1]
        rows.append({"shape": label, "overrides": overrides, "params": params,
                     "bitrate_bps": config.num_patches * config.code_bits / (config.window_samples
                                                                             / config.sample_rate),
                     "val_mel_mae_db": final["mel_mae_db"], "bits": [final["bit_balance_min"],
                                                                     final["bit_balance_max"]],
                     "distinct": final["distinct_per_window"],
                     "encode_gflops_per_window": gflops, "encode_ms_per_window": seconds * 1000})
    print(f"\n{args.steps} steps x {args.batch_size} windows, lr {args.lr}, seed 0, "
          f"val on {args.val_windows} windows; encode timed on {os.cpu_count()} CPUs\n")
    print("| shape | params | bit/s | val mel MAE dB | bit balance | distinct | encode GFLOP/window "
          "| encode ms/window |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['params'] / 1e6:.1f} M | {r['bitrate_bps']:.0f} | "
              f"{r['val_mel_mae_db']:.2f} | {r['bits'][0]:.2f}-{r['bits'][1]:.2f} | {r['distinct']:.2f} | "
              f"{r['encode_gflops_per_window']:.1f} | {r['encode_ms_per_window']:.0f} |")
    if args.json:
        report = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "settings": vars(args) | {"corpus": str(args.corpus), "out": str(args.out),
                                            "json": str(args.json)}, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
