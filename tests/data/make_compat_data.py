"""How the frozen .bsq files in tests/data were made (format versions 1 and 2). Kept as a record.

    python tests/data/make_compat_data.py            # writes into a scratch folder, compares
    python tests/data/make_compat_data.py --add      # adds the files tests/data lacks (never rewrites)

Do NOT rewrite stored files to make tests/test_compat.py pass: those files are the compatibility
promise: files written by an older bsqaudio must keep decoding; if a deliberate format change
breaks them, bump FORMAT_VERSION and add new files beside the old ones instead of replacing them.
The small-tone-1s and small-swell-12s files were written by a model that was never released
(db96df47a73d58e4): this script can no longer make them, and ``--add`` keeps them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import bsqaudio
from bsqaudio import AudioBSQ, Codec, Codes, preset, read_bsq, write_bsq
from bsqaudio.bitstream import FORMAT_VERSION
from bsqaudio.code_space import decoder_id, embedded_release
from bsqaudio.token_files import npz_bytes

HERE = Path(__file__).resolve().parent
RATE = 16000


def tone(seconds: float, seed: int = 0, swell: bool = False) -> np.ndarray:
    """(T,) float32 at 16 kHz: 220, 660 and 1870 Hz at 0.15 each, plus noise at 0.02 (seeded);
    with ``swell`` the level rises 20 dB over the clip, so each window gets its own gain."""
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    wave = sum(0.15 * np.sin(2 * math.pi * f * t) for f in (220.0, 660.0, 1870.0))
    wave = wave + 0.02 * np.random.default_rng(seed).standard_normal(n)
    if swell:
        wave = wave * 10 ** (-1 + t / t[-1])
    return wave.astype(np.float32)


def format_codes(num_samples: int, code_bits: int, geometry=(160, 128, 1024, 16, 16),
                 seed: int = 0) -> Codes:
    """Hand-made Codes for format-only files (no model): extremes in the first and last places."""
    hop, n_mels, window_frames, patch_time, patch_freq = geometry
    rows = math.ceil(math.ceil(num_samples / hop) / patch_time)
    header = {
        "model": "bsqaudio-format-test", "model_hash": "0000000000000000", "sample_rate": RATE,
        "n_fft": 1024, "hop_length": hop, "win_length": 400, "n_mels": n_mels,
        "window_frames": window_frames, "patch_time": patch_time, "patch_freq": patch_freq,
        "code_bits": code_bits, "num_windows": math.ceil(rows / (window_frames // patch_time)),
        "num_rows": rows, "num_samples": num_samples, "source_sample_rate": 44100,
        "source_channels": 2,
    }
    freq = n_mels // patch_freq
    rng = np.random.default_rng(seed)
    top = 2**code_bits - 1
    indices = rng.integers(0, top, size=rows * freq, dtype=np.uint64, endpoint=True)
    indices[:4] = [0, top, top >> 1, 1 & top]
    indices[-1] = top
    gains = rng.uniform(-60, 60, size=header["num_windows"]).astype(np.float16)
    specials = [0.0, -0.0, 65504.0, -65504.0, 6e-8]  # zero, negative zero, max, min, subnormal
    gains[: len(specials)] = specials[: len(gains)]
    return Codes(indices=torch.from_numpy(indices.astype(np.int64).reshape(rows, freq)),
                 gains_db=torch.from_numpy(gains.astype(np.float32)), header=header)


def format1(codes: Codes) -> Codes:
    """The codes as format 1 writes them: no code space in the header."""
    return Codes(codes.indices, codes.gains_db, {k: v for k, v in codes.header.items() if k != "code_space"})


def pooled_mel_db(codec: Codec, codes: Codes) -> np.ndarray:
    """What the model decodes the tokens to, small enough to keep: the decoded mel in dB
    (floored at -100 dB), averaged over blocks of 4 frames x 4 mel bands."""
    power = codec.decode_mel(codes)
    mel_db = (10 * torch.log10(power.clamp_min(1e-10))).numpy()
    frames = mel_db.shape[0] // 4 * 4
    return mel_db[:frames].reshape(frames // 4, 4, -1, 4).mean(axis=(1, 3))


def make(out: Path, keep: dict | None = None) -> dict:
    """Write every file into ``out`` but those in ``keep`` (a stored manifest's entries, kept as
    they are); return the manifest."""
    keep = keep or {}
    tiny_dir = out / "tiny-model"
    tiny_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the same weights as the tiny_model_dir fixture in tests/conftest.py
    bsqaudio.save_pretrained(AudioBSQ(preset("tiny")), tiny_dir)
    tiny = Codec.from_pretrained(tiny_dir, device="cpu")
    small = Codec.from_pretrained(device="cpu")  # the embedded default model
    jobs = [
        ("tiny-tone-1s.bsq", "tiny-model", lambda: format1(tiny.encode(torch.from_numpy(tone(1.0)), RATE, 1)),
         "tiny preset, torch.manual_seed(0), saved as tests/data/tiny-model; encoded tone(1.0): "
         "1 s of 220+660+1870 Hz tones plus seeded noise"),
        ("small-v1-tone-1s.bsq", "embedded", lambda: format1(small.encode(torch.from_numpy(tone(1.0)), RATE, 1)),
         "embedded bsqaudio-small-v1 (Codec.from_pretrained()); encoded tone(1.0)"),
        ("small-v1-tone-1s.format2.bsq", "embedded", lambda: small.encode(torch.from_numpy(tone(1.0)), RATE, 1),
         "the same as small-v1-tone-1s.bsq in format 2 (code space in the header, compact header)"),
        ("small-v1-swell-12s.bsq", "embedded",
         lambda: format1(small.encode(torch.from_numpy(tone(12.0, seed=1, swell=True)), RATE, 1)),
         "embedded bsqaudio-small-v1; encoded tone(12.0, seed=1, swell=True): 2 windows, a partial "
         "last window, two different gains; also stored as the token file small-v1-swell-12s.npz"),
        ("format-L1.bsq", None, lambda: format_codes(2 * 1024 * 160 + 2561, 1),
         "format only (no model): L=1, 3 windows (last one 2 rows), default geometry"),
        ("format-L63.bsq", None, lambda: format_codes(1024 * 160 + 1, 63, seed=1),
         "format only (no model): L=63, indices 0 and 2**63-1, gains 0, -0, +-65504, subnormal"),
        ("format-padded-L7.bsq", None,
         lambda: format_codes(160 * 24 * 2 + 160 * 9, 7, geometry=(160, 80, 24, 8, 16), seed=2),
         "format only (no model): L=7, 5 patches a row, 3 rows a window: 105 code bits a "
         "window, so each window ends with 7 zero padding bits"),
    ]
    manifest = dict(keep)
    for name, model, make_codes, how in jobs:
        if name in keep:
            continue
        codes = make_codes()
        data = write_bsq(codes)
        (out / name).write_bytes(data)
        back = read_bsq(data)
        stem = name[: -len(".bsq")].replace(".", "-")
        np.save(out / f"{stem}.indices.npy", back.indices.numpy())
        entry = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "format_version": data[4],
            "model": model,
            "model_name": back.header["model"],
            "model_hash": back.header["model_hash"],
            "how": how,
            "header": back.header,
            "gains_db": back.gains_db.tolist(),
            "indices": f"{stem}.indices.npy",
            "indices_sha256": hashlib.sha256(back.indices.numpy().astype("<i8").tobytes()).hexdigest(),
        }
        if model is not None:
            codec = tiny if model == "tiny-model" else small
            np.save(out / f"{stem}.mel_db.npy", pooled_mel_db(codec, back).astype(np.float16))
            entry["mel_db"] = f"{stem}.mel_db.npy"
            entry["code_space"], entry["decoder"] = codec.code_space, decoder_id(codec.model)
        if model == "embedded" and name.count(".") == 1:
            entry["model_version"] = embedded_release()["version"]
            tokens = npz_bytes(back)
            (out / f"{stem}.npz").write_bytes(tokens)
            entry["npz"], entry["npz_sha256"] = f"{stem}.npz", hashlib.sha256(tokens).hexdigest()
        manifest[name] = entry
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--add", action="store_true", help="add the files tests/data lacks")
    args = parser.parse_args()
    assert FORMAT_VERSION == 2, "these files record format versions 1 and 2"
    if args.add:
        manifest = make(HERE, keep=json.loads((HERE / "manifest.json").read_text()))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="bsq-compat-"))
        manifest = make(scratch)
        stored = json.loads((HERE / "manifest.json").read_text())
        for name, entry in manifest.items():
            same = stored.get(name, {}).get("sha256") == entry["sha256"]
            print(f"{name}: {'same bytes as' if same else 'DIFFERS from'} the stored file")
        shutil.rmtree(scratch)
    for name, entry in manifest.items():
        print(name, entry["sha256"], entry["model_name"], entry["model_hash"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
