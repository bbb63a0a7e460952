"""How natural could decoded speech get if one part of it were perfect? Oracle mixes of the decoded
and the true spectrogram, each inverted and scored like a real decode.

    python benchmarks/naturalness_ceiling.py /work/data/lists/heldout_speech12.txt [--json out.json]

The sound-quality issue asks whether a vocoder, a sharper decoder or more information in the codes
would close the gap to Codec2 3200. Each row keeps the decoded spectrogram but replaces one part
of it with the truth (the reference's own STFT):

  decoded              the codec as it is (decoded mel, Griffin-Lim);
  + true phase         the decoded magnitude with the reference's phase: what a perfect
                       vocoder or phase estimator could add to today's spectrogram;
  + true fine (W)      the decoded spectral envelope (a W-band moving average of the dB mel
                       across frequency) with the reference's detail around its own envelope
                       (harmonics, which the MSE decoder smears): what a decoder that restored
                       the fine structure exactly could add; W 9 and 17 bands;
  true env + dec fine  the reverse: the reference's envelope with the decoded detail;
  true mel             the reference's mel through Griffin-Lim (the inversion's own ceiling);
  reference            the clip itself.

Scores, mean over the files: DistillMOS, DNSMOS P.835 overall (``bsqaudio[mos]``), STOI, PESQ-WB.
Speech files only (the MOS predictors are trained on speech); the first 30 s of each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from postfilter import smooth  # the same moving average as the post-filter variants

from bsqaudio.codec import Codec
from bsqaudio.io.audio_files import load_mono
from bsqaudio.io.inputs import read_path_list
from bsqaudio.metrics import naturalness, pesq_wb, stoi

RATE = 16000


def fine_on_envelope(envelope_db: torch.Tensor, fine_db: torch.Tensor, width: int) -> torch.Tensor:
    """(T, n_mels) dB: the smoothed shape of ``envelope_db`` plus ``fine_db``'s detail around
    its own smoothed shape -> mel power."""
    return 10 ** ((smooth(envelope_db, width, 1) + fine_db - smooth(fine_db, width, 1)) / 10)


def variants(codec: Codec, wave: torch.Tensor) -> dict[str, torch.Tensor]:
    """(T,) reference -> name -> audio of the same length."""
    c, gl = codec.config, codec.griffin_lim
    codes = codec.encode(wave, RATE)
    spec = torch.stft(wave, c.n_fft, c.hop_length, c.win_length, gl.window, center=True,
                      pad_mode="reflect", return_complex=True)  # (n_freqs, T), frames as decoded
    decoded = codec.decode_mel(codes)
    frames = min(decoded.shape[0], spec.shape[1])
    decoded, spec = decoded[:frames], spec[:, :frames]
    true = (spec.abs() ** 2).T @ codec.frontend.mel_fb
    decoded_db, true_db = (10 * torch.log10(p.clamp_min(1e-10)) for p in (decoded, true))
    length = (frames - 1) * c.hop_length

    def griffin_lim(power_tf: torch.Tensor) -> torch.Tensor:
        return gl.synthesize(power_tf, iterations=codec.griffin_lim_iterations)[:length]

    return {
        "decoded": griffin_lim(decoded),
        "+ true phase": gl.invert(gl.mel_to_linear(decoded), iterations=0, phase_ft=spec.angle())[:length],
        "+ true fine (9)": griffin_lim(fine_on_envelope(decoded_db, true_db, 9)),
        "+ true fine (17)": griffin_lim(fine_on_envelope(decoded_db, true_db, 17)),
        "true env + dec fine (9)": griffin_lim(fine_on_envelope(true_db, decoded_db, 9)),
        "true mel": griffin_lim(true),
        "reference": wave[:length],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("speech_list", help="a .txt list of speech files")
    parser.add_argument("--model", default=None, help="model folder (default: embedded)")
    parser.add_argument("--json", type=Path, default=None, help="write the per-file scores here")
    args = parser.parse_args(argv)
    codec = Codec.from_pretrained(args.model, device="cpu")
    rows: dict[str, list[dict]] = {}
    for path in read_path_list(args.speech_list):
        wave = load_mono(path, RATE)[0][: 30 * RATE]
        for name, audio in variants(codec, wave).items():
            scores = naturalness(audio, RATE)
            reference = wave[: audio.shape[0]]
            scores.update(stoi=stoi(reference, audio, RATE), pesq=pesq_wb(reference, audio, RATE))
            rows.setdefault(name, []).append({"path": str(path), **scores})
        print(path, flush=True)
    print(f"{'variant':24s} DistillMOS  DNSMOS   STOI  PESQ-WB")
    for name, scores in rows.items():
        mean = {k: float(np.mean([s[k] for s in scores])) for k in ("distillmos", "dnsmos_ovrl", "stoi", "pesq")}
        print(f"{name:24s} {mean['distillmos']:10.2f} {mean['dnsmos_ovrl']:7.2f} {mean['stoi']:6.3f}"
              f" {mean['pesq']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
