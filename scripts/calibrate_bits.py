#!/usr/bin/env python3
"""Balance every code bit on each group of training files by moving its threshold.

    python3 scripts/calibrate_bits.py MODEL OUT --group speech=speech.txt --group music=music/

MODEL is a model folder or file (``-`` for the embedded default); each group is a folder, an
audio file or a .txt list (as ``bsqaudio train`` takes them). Every file's first
``--max-seconds`` are encoded exactly as ``bsqaudio encode`` would; each bit's threshold is set
so that the group furthest from half ones is as near as possible (bsqaudio.train.calibration),
and the model with the moved thresholds is written to OUT. Its codes differ from MODEL's for
tokens near a threshold, so fine-tune its decoder next:
``bsqaudio train ... --init-from OUT --freeze-encoder``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.errors import BsqAudioError
from bsqaudio.hub import load_pretrained, save_pretrained
from bsqaudio.io.audio_files import load_mono
from bsqaudio.io.inputs import list_inputs
from bsqaudio.train.calibration import audio_latents, balanced_thresholds, share_above, shift_thresholds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--group", action="append", required=True, metavar="NAME=INPUT",
                        help="a named group of training audio; repeat for each group")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="audio read from each file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    try:
        model = load_pretrained(None if args.model == "-" else args.model).model.eval()
        frontend = MelFrontend(model.config)
        rate = model.config.sample_rate
        names, groups = [], []
        for spec in args.group:
            name, sep, source = spec.partition("=")
            if not sep or not name or not source:
                raise BsqAudioError(f"--group {spec!r}: expected NAME=INPUT")
            latents = []
            for path in list_inputs([source]):
                wave = load_mono(path, rate)[0][: int(args.max_seconds * rate)]
                latents.append(audio_latents(model, frontend, wave))
            if not latents:
                raise BsqAudioError(f"--group {name}: no audio files in {source}")
            names.append(name)
            groups.append(torch.cat(latents))
            print(f"{name}: {len(latents)} files, {groups[-1].shape[0]} tokens", flush=True)
    except BsqAudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    thresholds, worst = balanced_thresholds(groups)
    shares = [(share_above(g, torch.zeros_like(thresholds)[None])[0], share_above(g, thresholds[None])[0])
              for g in groups]  # per group: ((L,) before, (L,) after)
    print(f"{'bit':>3} {'threshold':>9} " + " ".join(f"{n + ' before':>14} {n + ' after':>13}" for n in names))
    for bit in range(thresholds.shape[0]):
        cells = " ".join(f"{before[bit]:14.3f} {after[bit]:13.3f}" for before, after in shares)
        print(f"{bit:3d} {thresholds[bit]:9.4f} {cells}")
    print(f"worst group's share of ones: {0.5 - worst.max():.3f}-{0.5 + worst.max():.3f} at most")
    shift_thresholds(model, thresholds)
    save_pretrained(model, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
