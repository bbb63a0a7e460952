"""Griffin-Lim quality against iterations and time: where to stop, and how far the phase start helps.

    python benchmarks/griffin_lim.py /work/data/heldout --json griffin_lim.json

Real speech and music are read from FOLDER: with a ``manifest.jsonl`` (lines with ``path``,
relative to the manifest, and ``kind`` = speech | music; as in /work/data/heldout), by its kinds;
otherwise audio files in subfolders whose name contains "asterisk" (and not "moh", Asterisk's
music on hold) count as speech and the rest as music (the layout of /work/data/corpus/val). Each
kind is read as 16 kHz mono, concatenated in manifest (or sorted) order up to ``--seconds`` and
cut into 10 s clips: an inversion of 10 s is what decoding does per block (1024 frames plus
context).

Each clip's magnitude is inverted two ways:
  stft   the exact STFT magnitude of the clip (n_fft 1024, hop 160, Hann 400);
  mel    that magnitude through the 128-band mel filterbank and back (``mel_to_linear``): what
         decoding inverts, given a perfect mel, and not a consistent spectrogram, so no phase
         reaches it exactly.

Methods, each after 0, 4, 8, 16, 24, 32, 48, 64 iterations (momentum 0.99):
  gradient     ``GriffinLim.invert``: the phase-gradient start (``initial_phase``), then
               Griffin-Lim with the fast inverse STFT; the decoder's inversion.
  zero         the same iterations from zero phase: the decoder's previous inversion, step for
               step torchaudio's with ``rand_init=False``.
  pghi-heap    the same iterations from PGHI's heap integration of the same phase gradients
               (Prusa et al. 2017), in Python: the textbook start, for reference (slow).
  torchaudio   ``torchaudio.transforms.GriffinLim`` (its default random start, seed 0): the
               reference the issue sets, 32 iterations in particular.

Scores: spectral convergence ||S - |STFT(x)||| / ||S|| against the inverted magnitude S (mean over
clips), and for speech STOI of x against the original clip (``pystoi``; the phase-blind measure of
intelligibility). Time: seconds per 10 s clip, start included, measured apart from the scores on the
first speech clip's mel magnitude: ``--timing-rounds`` rounds, each running every method and
iteration count once in turn, and the minimum per cell (the machine is shared: interleaving
spreads other work's bursts over all cells, and the minimum is the least disturbed run).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio

from bsqaudio.dsp.griffin_lim import GriffinLim
from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.hub import load_pretrained
from bsqaudio.io.audio_files import load_mono

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import machine  # noqa: E402  (a sibling script, not a package)

RATE = 16000
CLIP_SECONDS = 10.0
ITERATIONS = (0, 4, 8, 16, 24, 32, 48, 64)
AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".mp3"}


def find_audio(folder: Path) -> dict[str, list[Path]]:
    """kind -> files, from the folder's manifest or from its subfolder names."""
    manifests = sorted(folder.rglob("manifest.jsonl"))
    found: dict[str, list[Path]] = {"speech": [], "music": []}
    if manifests:
        for manifest in manifests:
            for line in manifest.read_text().splitlines():
                row = json.loads(line)
                if row.get("kind") in found:
                    found[row["kind"]].append(manifest.parent / row["path"])
        return found
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in AUDIO_SUFFIXES:
            name = path.relative_to(folder).parts[0].lower()
            speech = "asterisk" in name and "moh" not in name
            found["speech" if speech else "music"].append(path)
    return found


def clips(files: list[Path], seconds: float) -> list[torch.Tensor]:
    """Concatenate files up to ``seconds`` and cut into whole 10 s clips."""
    parts, total = [], 0
    for path in files:
        wave, _, _ = load_mono(path, RATE)
        parts.append(wave)
        total += wave.shape[0]
        if total >= seconds * RATE:
            break
    audio = torch.cat(parts)
    size = int(CLIP_SECONDS * RATE)
    return [audio[i: i + size] for i in range(0, min(audio.shape[0], int(seconds * RATE)) - size + 1, size)]


def pghi_heap(frontend: MelFrontend, magnitude_ft: torch.Tensor, tolerance_db: float = 50.0) -> torch.Tensor:
    """PGHI's heap integration (Prusa et al. 2017) of the same gradients as ``initial_phase``:
    from the loudest unvisited coefficient, spread phase to the four neighbours in order of
    magnitude; coefficients more than ``tolerance_db`` below the peak keep phase 0."""
    c = frontend.config
    a, m_fft = c.hop_length, c.n_fft
    lam = 0.25645 * c.win_length ** 2
    log_mag = magnitude_ft.double().clamp_min(1e-30).log()
    log_mag = log_mag.clamp_min(log_mag.max() - c.db_range / 20 * math.log(10))
    d_freq = torch.zeros_like(log_mag)
    d_freq[1:-1] = (log_mag[2:] - log_mag[:-2]) / 2
    d_time = torch.zeros_like(log_mag)
    d_time[:, 1:-1] = (log_mag[:, 2:] - log_mag[:, :-2]) / 2
    bins = torch.arange(log_mag.shape[0], dtype=log_mag.dtype)[:, None]
    tgrad = (a * m_fft / lam * d_freq + 2 * math.pi * a / m_fft * bins).numpy()
    fgrad = (-lam / (a * m_fft) * d_time + math.pi).numpy()
    mag = magnitude_ft.double().numpy()
    n_bins, frames = mag.shape
    phase = np.zeros_like(mag)
    done = mag < mag.max() * 10 ** (-tolerance_db / 20)
    for seed in np.argsort(-mag, axis=None):
        m, n = divmod(int(seed), frames)
        if done[m, n]:
            continue
        done[m, n] = True
        heap = [(-mag[m, n], m, n)]
        while heap:
            _, m, n = heapq.heappop(heap)
            for m2, n2, step in ((m, n + 1, (tgrad[m, n] + tgrad[m, n + 1]) / 2 if n + 1 < frames else 0),
                                 (m, n - 1, -(tgrad[m, n] + tgrad[m, n - 1]) / 2 if n > 0 else 0),
                                 (m + 1, n, (fgrad[m, n] + fgrad[m + 1, n]) / 2 if m + 1 < n_bins else 0),
                                 (m - 1, n, -(fgrad[m, n] + fgrad[m - 1, n]) / 2 if m > 0 else 0)):
                if 0 <= m2 < n_bins and 0 <= n2 < frames and not done[m2, n2]:
                    phase[m2, n2] = phase[m, n] + step
                    done[m2, n2] = True
                    heapq.heappush(heap, (-mag[m2, n2], m2, n2))
    return torch.from_numpy(np.remainder(phase, 2 * math.pi)).float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="real audio: a folder with manifest.jsonl, or speech "
                        "in subfolders named asterisk-* and music in the others")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per kind (whole 10 s clips)")
    parser.add_argument("--iterations", type=int, nargs="+", default=list(ITERATIONS))
    parser.add_argument("--methods", nargs="+", default=["gradient", "zero", "pghi-heap", "torchaudio"])
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from pystoi import stoi

    frontend = MelFrontend(load_pretrained().model.config)
    inverse = GriffinLim(frontend.config)
    c = frontend.config
    window = frontend.window

    def stft_magnitude(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, c.n_fft, c.hop_length, c.win_length, window, center=True,
                          pad_mode="reflect", return_complex=True).abs()

    def invert(method: str, power: torch.Tensor, iterations: int) -> torch.Tensor:
        start = None
        if method == "torchaudio":
            torch.manual_seed(0)
            transform = torchaudio.transforms.GriffinLim(
                n_fft=c.n_fft, n_iter=iterations, win_length=c.win_length, hop_length=c.hop_length,
                power=2.0, momentum=0.99)
            return transform(power)
        if method == "zero":
            start = torch.zeros_like(power)
        elif method == "pghi-heap":
            start = pghi_heap(frontend, power.sqrt())
        return inverse.invert(power, iterations, phase_ft=start)[: (power.shape[1] - 1) * c.hop_length]

    found = find_audio(args.folder)
    data = {kind: clips(files, args.seconds) for kind, files in found.items() if files}
    print(f"# clips of {CLIP_SECONDS:.0f} s: " + ", ".join(f"{k} {len(v)}" for k, v in data.items()), flush=True)
    results: dict[tuple[str, int], dict] = {}
    for kind, waves in data.items():
        for wave in waves:
            exact = stft_magnitude(wave)
            mel_power = (exact ** 2).T @ frontend.mel_fb
            for target, magnitude in (("stft", exact), ("mel", inverse.mel_to_linear(mel_power).sqrt())):
                power = magnitude ** 2
                for method in args.methods:
                    for iterations in args.iterations:
                        audio = invert(method, power, iterations)
                        rebuilt = stft_magnitude(audio)[:, : magnitude.shape[1]]
                        convergence = float(torch.linalg.norm(magnitude - rebuilt) / torch.linalg.norm(magnitude))
                        row = results.setdefault((method, iterations), {"seconds": math.inf})
                        row.setdefault(f"sc_{kind}_{target}", []).append(convergence)
                        if kind == "speech":
                            n = min(audio.shape[0], wave.shape[0])
                            score = stoi(wave[:n].numpy(), audio[:n].numpy(), RATE, extended=False)
                            row.setdefault(f"stoi_{kind}_{target}", []).append(float(score))
            print(f"# {kind} clip done", flush=True)
    clip = data.get("speech", data.get("music"))[0]
    power = inverse.mel_to_linear((stft_magnitude(clip) ** 2).T @ frontend.mel_fb)
    for _ in range(args.timing_rounds):
        for (method, iterations), row in results.items():
            start = time.perf_counter()
            invert(method, power, iterations)
            row["seconds"] = min(row["seconds"], time.perf_counter() - start)
    print("# timing done", flush=True)

    columns = [key for key in ("sc_speech_stft", "sc_music_stft", "sc_speech_mel", "sc_music_mel",
                               "stoi_speech_stft", "stoi_speech_mel")
               if any(key in row for row in results.values())]
    rows = []
    for (method, iterations), row in results.items():
        out = {"method": method, "iterations": iterations, "seconds_per_10s": row["seconds"]}
        for key in columns:
            out[key] = float(np.mean(row[key]))
        rows.append(out)
    header = f"{'method':<11} {'iter':>4} {'s/10s':>7} " + " ".join(f"{k:>16}" for k in columns)
    print(header)
    for row in rows:
        print(f"{row['method']:<11} {row['iterations']:>4} {row['seconds_per_10s']:>7.4f} "
              + " ".join(f"{row[k]:>16.4f}" for k in columns))
    if args.json:
        report = {"machine": machine(), "folder": str(args.folder), "seconds_per_kind": args.seconds,
                  "timing_rounds": args.timing_rounds,
                  "clips": {k: len(v) for k, v in data.items()}, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
