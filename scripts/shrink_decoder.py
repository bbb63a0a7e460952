#!/usr/bin/env python3
"""Start a cheaper decoder: a model whose decoder keeps only some of a trained one's blocks.

    python3 scripts/shrink_decoder.py MODEL OUT --keep 0,3,4

MODEL is a model folder or file (``-`` for the embedded default). OUT gets the same encoder,
quantizer, head and refiner, and the decoder blocks listed (in that order): its codes mean what
MODEL's do, so it decodes every file MODEL wrote, but it decodes worse until trained to copy
MODEL (bsqaudio.train.distill):

    bsqaudio train DATA --init-from OUT --set decoder_layers=3 --freeze-encoder --distill-from MODEL ...

Which blocks to keep: those whose removal costs least, measured on validation windows (the
embedded model: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys

import torch

from bsqaudio.errors import BsqAudioError
from bsqaudio.hub import load_pretrained, save_pretrained
from bsqaudio.train.distill import keep_decoder_blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder or file, or - for the embedded default")
    parser.add_argument("out", help="folder for the smaller model")
    parser.add_argument("--keep", required=True, help="decoder blocks to keep, comma-separated (from 0)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    args = parser.parse_args()
    try:
        try:
            keep = [int(part) for part in args.keep.split(",")]
        except ValueError:
            raise BsqAudioError(f"--keep {args.keep!r}: expected block numbers such as 0,3,4") from None
        model = load_pretrained(None if args.model == "-" else args.model).model
        smaller = keep_decoder_blocks(model, keep)
        save_pretrained(smaller, args.out, dtype=getattr(torch, args.dtype))
    except BsqAudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: decoder blocks {keep} of {model.config.decoder_layers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
