"""Does sharpening the decoded log-mel (a training-free post-filter) make speech sound more natural?

    python benchmarks/postfilter.py /work/data/lists/heldout_speech12.txt [--model DIR]

The decoder, trained to minimise a spectrogram error, outputs the average of all spectrograms
that share a code: smooth, with smeared harmonics. Statistical speech synthesis met the same
over-smoothing and answered it with global-variance compensation. Each variant here scales the
decoded mel's deviations (in dB) from a smoothed version by ``a`` and inverts it with the
decoder's Griffin-Lim:

  base   the decoded mel as it is;
  freq   deviations from a 9-band moving average across frequency (formants, harmonics);
  both   deviations from a 9 x 9 moving average over time and frequency;
  gv     deviations of each band from its mean over the utterance (global variance).

Values are clamped to the decoded peak. Reported per variant, mean over the files: DistillMOS,
DNSMOS P.835 overall (``bsqaudio[mos]``), STOI, PESQ-WB and mel MAE against the reference. The
input is a .txt list of speech files (the MOS predictors are trained on speech). Results of the
run in session 8 are in the model card.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from bsqaudio.codec import Codec
from bsqaudio.io.audio_files import load_mono
from bsqaudio.io.inputs import read_path_list
from bsqaudio.metrics import mel_errors, naturalness, pesq_wb, stoi

RATE = 16000
VARIANTS = [("base", 1.0)] + [(name, a) for name in ("freq", "both", "gv") for a in (1.25, 1.5)]


def smooth(db_tf: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Moving average of ``width`` along ``dim`` of a (frames, mels) array, edges replicated."""
    x = db_tf.movedim(dim, -1)
    flat = torch.nn.functional.pad(x.reshape(1, -1, x.shape[-1]), (width // 2, width // 2), mode="replicate")
    return torch.nn.functional.avg_pool1d(flat, width, stride=1).reshape(x.shape).movedim(-1, dim)


def sharpen(db_tf: torch.Tensor, name: str, a: float) -> torch.Tensor:
    if name == "base":
        return db_tf
    if name == "freq":
        reference = smooth(db_tf, 9, 1)
    elif name == "both":
        reference = smooth(smooth(db_tf, 9, 1), 9, 0)
    else:  # gv
        reference = db_tf.mean(0, keepdim=True)
    return reference + a * (db_tf - reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("speech_list", help="a .txt list of speech files")
    parser.add_argument("--model", default=None, help="model folder (default: embedded)")
    args = parser.parse_args(argv)
    codec = Codec.from_pretrained(args.model, device="cpu")
    rows: dict[str, list[dict]] = {f"{name}:{a}": [] for name, a in VARIANTS}
    for path in read_path_list(args.speech_list):
        wave, _, _ = load_mono(path, RATE)
        db = 10 * torch.log10(codec.decode_mel(codec.encode(wave, RATE)).clamp_min(1e-10))
        for name, a in VARIANTS:
            power = 10 ** (sharpen(db, name, a).clamp(max=db.max()) / 10)
            out = codec.griffin_lim.synthesize(power, iterations=codec.griffin_lim_iterations)[: wave.shape[0]]
            scores = naturalness(out, RATE)
            scores.update(stoi=stoi(wave, out, RATE), pesq=pesq_wb(wave, out, RATE),
                          mel_mae_db=mel_errors(wave, out, codec.frontend)[0])
            rows[f"{name}:{a}"].append(scores)
        print(path, flush=True)
    for variant, scores in rows.items():
        mean = {k: round(float(np.mean([s[k] for s in scores if s[k] is not None])), 3) for k in scores[0]}
        print(variant, json.dumps(mean))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
