#!/usr/bin/env python
"""Quality benchmark: bsqaudio against oracle Griffin-Lim, Codec2 and Opus on reference audio.

    python benchmarks/quality.py /work/data/corpus/manifest.jsonl --split val --kind all \\
        --json quality.json

Inputs are a JSONL manifest (one object per line with ``path`` relative to the manifest's folder,
and optionally ``split`` and ``kind``), audio files, folders (searched recursively) or .txt lists.
Every reference is read as 16 kHz mono and, for each system, coded, decoded, aligned and scored with
``bsqaudio.metrics.all_metrics`` (mel MAE/MSE in dB, multi-resolution STFT distance, SI-SDR, STOI,
wideband PESQ); with --mos, speech files also get DistillMOS and DNSMOS P.835 overall (no-reference
naturalness predictors) for every system and for the reference itself.

Systems
  bsqaudio      the default model (``Codec.from_pretrained(device="cpu")``), encode + decode.
                Bitrate = size of the .bsq file (``write_bsq``, header included) / duration; the
                code bitrate (``codes.bitrate``, tokens only) is reported too.
  bsqaudio-glN  the same with N Griffin-Lim iterations instead of the default (``--systems
                bsqaudio-gl0,bsqaudio-gl4,bsqaudio``: the quality/time curve the default is
                chosen from; ``codec_seconds`` is the time of encode + decode).
  oracle-gl     the file's own unquantized mel through the decoder's Griffin-Lim: a ceiling for
                any tokenizer with this decoder (no bitstream, bitrate n/a).
  codec2-*      Debian ``codec2`` (``c2enc``/``c2dec``) modes 700C, 1200 and 3200 on 8 kHz 16-bit
                raw audio (16k -> 8k -> 16k with torchaudio.functional.resample); headerless bit
                file, bitrate = its size / duration.
  opus-*        Debian ``opus-tools``: ``opusenc --bitrate 6|8 --discard-comments`` on a 16 kHz
                16-bit WAV, ``opusdec --rate 16000``; bitrate = .opus file size (Ogg pages and
                Opus headers included) / duration.

Alignment (identical for every system, bsqaudio included): the decoded signal is shifted by the lag
that best matches the reference, searched over +-50 ms in two steps: (1) in 1 ms steps, the lag
maximizing the cross-correlation of the log power spectrograms (256-point FFT, 1 ms hop, floored
60 dB below the peak, each bin's mean removed, summed over bins); this ignores phase, so it works
for Codec2 and Griffin-Lim, whose waveforms are not phase-coherent with the reference; then (2) a
refinement within +-1 ms of it maximizing the waveform cross-correlation (sample-exact for waveform
codecs such as Opus). The shifted signal is zero-padded / trimmed to the reference's
length, so the reference is never modified. The lag found is stored per file and system.

Bitrates in the tables are total bits / total seconds over the files of the table (file headers
weigh more on short files; the per-file values are in the JSON).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from bsqaudio.alignment import MAX_LAG_S, REFINE_LAG_S, apply_lag, find_lag

RATE = 16000
MOS_KEYS = ("distillmos", "dnsmos_ovrl")  # bsqaudio.metrics.MOS_KEYS; speech files only, with --mos
METRIC_KEYS = ("mel_mae_db", "mel_mse_db", "mrstft", "si_sdr_db", "stoi", "pesq_wb", *MOS_KEYS)
CODEC2_MODES = ("700C", "1200", "3200")
OPUS_KBPS = (6, 8)
ALL_SYSTEMS = (("bsqaudio", "oracle-gl") + tuple(f"codec2-{m}" for m in CODEC2_MODES)
               + tuple(f"opus-{k}k" for k in OPUS_KBPS))
GL_SWEEP = "bsqaudio-gl"  # bsqaudio-gl4: the bsqaudio system decoding with 4 Griffin-Lim iterations
AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au"}


# --------------------------------------------------------------------------- inputs

def collect_inputs(inputs: list[str], split: str | None, kind: str) -> list[dict]:
    """-> [{"path": Path, "kind": str, "name": str}] from manifests, folders, files, .txt lists."""
    items: dict[Path, dict] = {}
    for item in inputs:
        path = Path(item)
        if path.suffix == ".jsonl":
            root = path.parent
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                entry = json.loads(line)
                if split and entry.get("split") != split:
                    continue
                audio = (root / entry["path"]).resolve()
                items[audio] = {"path": audio, "kind": entry.get("kind", "unlabelled"),
                                "name": entry["path"]}
        elif path.is_dir():
            for audio in sorted(path.rglob("*")):
                if audio.is_file() and audio.suffix.lower() in AUDIO_SUFFIXES:
                    items.setdefault(audio.resolve(), {"path": audio.resolve(),
                                                       "kind": "unlabelled", "name": str(audio)})
        elif path.suffix.lower() in (".txt", ".lst", ".list"):
            for line in path.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    audio = Path(line.strip()).resolve()
                    items.setdefault(audio, {"path": audio, "kind": "unlabelled",
                                             "name": line.strip()})
        elif path.exists():
            items.setdefault(path.resolve(), {"path": path.resolve(), "kind": "unlabelled",
                                              "name": str(path)})
        else:
            sys.exit(f"quality.py: {path}: no such file or folder")
    rows = sorted(items.values(), key=lambda r: (r["kind"], r["name"]))
    if kind != "all":
        rows = [r for r in rows if r["kind"] == kind]
    return rows


# --------------------------------------------------------------------------- systems

def _to_int16(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(-1.0, 32767 / 32768) * 32768).round().to(torch.int16).numpy()


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                           f"{detail[-1] if detail else ''}")


def run_codec2(wave: torch.Tensor, mode: str, tmp: Path) -> tuple[torch.Tensor, int]:
    narrow = AF.resample(wave, RATE, 8000)
    raw_in, bits, raw_out = tmp / "c2_in.raw", tmp / f"c2_{mode}.bit", tmp / f"c2_{mode}.raw"
    _to_int16(narrow).tofile(raw_in)
    _run(["c2enc", mode, str(raw_in), str(bits)])
    _run(["c2dec", mode, str(bits), str(raw_out)])
    decoded = torch.from_numpy(np.fromfile(raw_out, dtype=np.int16).astype(np.float32) / 32768)
    return AF.resample(decoded, 8000, RATE), bits.stat().st_size * 8


def run_opus(wave: torch.Tensor, kbps: int, tmp: Path) -> tuple[torch.Tensor, int]:
    wav_in, opus, wav_out = tmp / "opus_in.wav", tmp / f"o{kbps}.opus", tmp / f"o{kbps}.wav"
    sf.write(wav_in, _to_int16(wave), RATE, subtype="PCM_16")
    _run(["opusenc", "--quiet", "--bitrate", str(kbps), "--discard-comments", str(wav_in),
          str(opus)])
    _run(["opusdec", "--quiet", "--rate", str(RATE), str(opus), str(wav_out)])
    data, rate = sf.read(wav_out, dtype="float32", always_2d=True)
    if rate != RATE:
        raise RuntimeError(f"opusdec wrote {rate} Hz")
    return torch.from_numpy(data.mean(1)), opus.stat().st_size * 8


class Systems:
    def __init__(self, names: list[str], model: str | None = None) -> None:
        import bsqaudio

        self.names = names
        self.codec = bsqaudio.Codec.from_pretrained(model, device="cpu")
        self.frontend = self.codec.frontend
        if self.codec.config.sample_rate != RATE:
            raise SystemExit(f"quality.py assumes a {RATE} Hz model")

    def run(self, name: str, wave: torch.Tensor, tmp: Path) -> tuple[torch.Tensor, dict]:
        """-> (decoded (T',) at 16 kHz, extra fields: bits, code_bitrate_bps...)."""
        if name == "bsqaudio":
            from bsqaudio import write_bsq

            codes = self.codec.encode(wave, RATE)
            decoded = self.codec.decode(codes)
            return decoded, {"bits": len(write_bsq(codes)) * 8,
                             "code_bitrate_bps": float(codes.bitrate)}
        if name.startswith(GL_SWEEP):  # the same decode with another Griffin-Lim iteration count
            codec = copy.copy(self.codec)
            codec.griffin_lim_iterations = int(name[len(GL_SWEEP):])
            codes = codec.encode(wave, RATE)
            from bsqaudio import write_bsq

            return codec.decode(codes), {"bits": len(write_bsq(codes)) * 8,
                                         "code_bitrate_bps": float(codes.bitrate)}
        if name == "oracle-gl":
            from bsqaudio.evaluate import oracle_griffin_lim

            return oracle_griffin_lim(self.codec, wave), {"bits": None}
        if name.startswith("codec2-"):
            decoded, bits = run_codec2(wave, name.split("-", 1)[1], tmp)
            return decoded, {"bits": bits}
        if name.startswith("opus-"):
            decoded, bits = run_opus(wave, int(name.split("-", 1)[1].rstrip("k")), tmp)
            return decoded, {"bits": bits}
        raise ValueError(name)


def evaluate_file(systems: Systems, item: dict, max_seconds: float | None, mos: bool = False) -> dict:
    from bsqaudio.io.audio_files import load_mono
    from bsqaudio.metrics import all_metrics, naturalness, si_sdr

    mos = mos and item["kind"] == "speech"  # the predictors were trained on speech

    wave, source_rate, channels = load_mono(item["path"], RATE)
    full = wave.shape[0] / RATE
    if max_seconds and wave.shape[0] > int(max_seconds * RATE):
        wave = wave[: int(max_seconds * RATE)].clone()
    duration = wave.shape[0] / RATE
    row = {"path": str(item["path"]), "name": item["name"], "kind": item["kind"],
           "duration_s": duration, "full_duration_s": full, "truncated": duration < full,
           "source_rate": source_rate, "source_channels": channels, "systems": {}}
    if mos:
        row["reference"] = naturalness(wave, RATE)
    with tempfile.TemporaryDirectory(prefix="bsq-quality-") as tmp:
        for name in systems.names:
            start = time.perf_counter()
            try:
                decoded, extra = systems.run(name, wave, Path(tmp))
                if not torch.isfinite(decoded).all():
                    raise RuntimeError("decoded audio has NaN or infinite samples")
                coded_s = time.perf_counter() - start
                lag = find_lag(wave, decoded)
                aligned = apply_lag(decoded, lag, wave.shape[0])
                result = all_metrics(wave, aligned, systems.frontend)
                result["si_sdr_db"] = si_sdr(wave, aligned)
                if mos:
                    result.update(naturalness(aligned, RATE))
                result.update(extra)
                result["bitrate_bps"] = (extra["bits"] / duration) if extra.get("bits") else None
                result["lag_samples"] = lag
                result["decoded_samples"] = int(decoded.shape[0])
                result["codec_seconds"] = coded_s
            except Exception as err:  # record and go on with the next system
                result = {"error": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc(limit=3)}
            result["seconds"] = time.perf_counter() - start
            row["systems"][name] = result
    return row


# --------------------------------------------------------------------------- summary

def summarize(rows: list[dict], names: list[str]) -> dict:
    """Per system: mean of each metric over files where defined (with counts), total bitrate."""
    out: dict = {"files": len(rows), "seconds_of_audio": sum(r["duration_s"] for r in rows),
                 "truncated_files": sum(1 for r in rows if r["truncated"]), "systems": {}}
    for name in names:
        ok = [r for r in rows if name in r["systems"] and "error" not in r["systems"][name]]
        s: dict = {"files_ok": len(ok),
                   "errors": sum(1 for r in rows if "error" in r["systems"].get(name, {}))}
        for key in METRIC_KEYS:
            values = [r["systems"][name][key] for r in ok
                      if r["systems"][name].get(key) is not None]
            s[key] = sum(values) / len(values) if values else None
            s[f"{key}_n"] = len(values)
        bits = [r["systems"][name]["bits"] for r in ok]
        seconds = sum(r["duration_s"] for r in ok)
        if ok and all(b is not None for b in bits) and seconds > 0:
            s["bitrate_bps"] = sum(bits) / seconds
            per_file = [r["systems"][name]["bitrate_bps"] for r in ok]
            s["mean_file_bitrate_bps"] = sum(per_file) / len(per_file)
        else:
            s["bitrate_bps"] = s["mean_file_bitrate_bps"] = None
        codes = [r["systems"][name].get("code_bitrate_bps") for r in ok]
        if codes and all(c is not None for c in codes):
            weighted = sum(c * r["duration_s"] for c, r in zip(codes, ok, strict=True))
            s["code_bitrate_bps"] = weighted / seconds
        lags = [r["systems"][name]["lag_samples"] for r in ok]
        s["median_lag_ms"] = float(np.median(lags)) / RATE * 1000 if lags else None
        s["codec_seconds"] = sum(r["systems"][name]["codec_seconds"] for r in ok)
        out["systems"][name] = s
    references = [r["reference"] for r in rows if "reference" in r]
    if references:
        out["reference"] = {key: sum(r[key] for r in references) / len(references) for key in MOS_KEYS}
    return out


def paired(rows: list[dict], key: str, system: str, other: str, higher_is_better: bool,
           resamples: int = 5000) -> dict | None:
    """Per-file advantage of ``system`` over ``other`` on ``key`` (positive: ``system`` better):
    its mean, a seeded bootstrap 95% interval of the mean, and the number of files it wins."""
    diffs = []
    for r in rows:
        a, b = r["systems"].get(system, {}), r["systems"].get(other, {})
        if a.get(key) is not None and b.get(key) is not None:
            diffs.append((a[key] - b[key]) * (1 if higher_is_better else -1))
    if not diffs:
        return None
    d = np.asarray(diffs)
    rng = np.random.default_rng(0)
    means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"n": len(d), "mean_advantage": float(d.mean()), "ci95": [float(low), float(high)],
            "wins": int((d > 0).sum())}


def target_check(summary: dict, rows: list[dict]) -> dict | None:
    """The speech goal: at <= 1.8 kbit/s, STOI and PESQ-WB above Codec2 1200's and MR-STFT
    distance below Codec2 3200's (means over files), with paired per-file statistics."""
    s = summary["systems"]
    if not all(k in s for k in ("bsqaudio", "codec2-1200", "codec2-3200")):
        return None
    b, c12, c32 = s["bsqaudio"], s["codec2-1200"], s["codec2-3200"]

    def cmp(a, c, better):
        if a is None or c is None:
            return None
        return a > c if better == "higher" else a < c

    return {
        "code_bitrate_le_1800": (b.get("code_bitrate_bps") is not None
                                 and b["code_bitrate_bps"] <= 1800 + 1e-6),
        "file_bitrate_le_1800": b["bitrate_bps"] is not None and b["bitrate_bps"] <= 1800 + 1e-6,
        "stoi_above_codec2_1200": cmp(b["stoi"], c12["stoi"], "higher"),
        "pesq_wb_above_codec2_1200": cmp(b["pesq_wb"], c12["pesq_wb"], "higher"),
        "mrstft_below_codec2_3200": cmp(b["mrstft"], c32["mrstft"], "lower"),
        "values": {"bsqaudio": {k: b[k] for k in ("stoi", "pesq_wb", "mrstft")},
                   "codec2-1200": {k: c12[k] for k in ("stoi", "pesq_wb")},
                   "codec2-3200": {"mrstft": c32["mrstft"]}},
        "paired": {"stoi": paired(rows, "stoi", "bsqaudio", "codec2-1200", True),
                   "pesq_wb": paired(rows, "pesq_wb", "bsqaudio", "codec2-1200", True),
                   "mrstft": paired(rows, "mrstft", "bsqaudio", "codec2-3200", False)},
    }


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(title: str, summary: dict, names: list[str]) -> str:
    """A Markdown-compatible plain-text table of the means."""
    with_mos = "reference" in summary
    header = ["system", "bit/s", "mel MAE dB", "mel MSE dB²", "MR-STFT", "SI-SDR dB", "STOI",
              "PESQ-WB", *(["DistillMOS", "DNSMOS"] if with_mos else []), "lag ms", "files ok"]
    lines = [f"{title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    for name in names:
        s = summary["systems"][name]
        rate = _fmt(s["bitrate_bps"], 0)
        if s.get("code_bitrate_bps") is not None:
            rate = f"{rate} (codes {s['code_bitrate_bps']:.0f})"
        if name == "oracle-gl":
            rate = "n/a"
        cells = [name, rate, _fmt(s["mel_mae_db"]), _fmt(s["mel_mse_db"], 1), _fmt(s["mrstft"], 3),
                 _fmt(s["si_sdr_db"], 1), _fmt(s["stoi"], 3), _fmt(s["pesq_wb"]),
                 *([_fmt(s["distillmos"]), _fmt(s["dnsmos_ovrl"])] if with_mos else []),
                 _fmt(s["median_lag_ms"], 1), f"{s['files_ok']}/{summary['files']}"]
        if s["pesq_wb"] is not None and s["pesq_wb_n"] < s["files_ok"]:
            cells[7] += f" (n={s['pesq_wb_n']})"
        if s["stoi"] is not None and s["stoi_n"] < s["files_ok"]:
            cells[6] += f" (n={s['stoi_n']})"
        lines.append("| " + " | ".join(cells) + " |")
    if with_mos:
        ref = summary["reference"]
        cells = ["reference", "-", *["-"] * 6, _fmt(ref["distillmos"]), _fmt(ref["dnsmos_ovrl"]), "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass

    def version(cmd):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            return (proc.stdout or proc.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return None

    codec2 = None
    try:
        codec2 = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "codec2"],
                                capture_output=True, text=True).stdout.strip() or None
    except OSError:
        pass
    return {"cpu_model": model, "nproc": os.cpu_count(),
            "nproc_available": (len(os.sched_getaffinity(0))
                                if hasattr(os, "sched_getaffinity") else None),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "opusenc": version(["opusenc", "--version"]), "codec2_deb": codec2}


def _write_json(path: Path, report: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*",
                        help="manifest.jsonl, audio files, folders, .txt lists")
    parser.add_argument("--split", default=None, help="manifest split to use (e.g. val)")
    parser.add_argument("--kind", default="all", help="speech, music or all (manifest 'kind')")
    parser.add_argument("--limit", type=int, default=None, help="at most N files per kind")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="score only the first S seconds of every file")
    parser.add_argument("--music-max-seconds", type=float, default=60.0,
                        help="score only the first S seconds of music files "
                             "(default 60; 0: whole files)")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS),
                        help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}")
    parser.add_argument("--mos", action="store_true",
                        help="also predict naturalness of speech files (DistillMOS, DNSMOS P.835 "
                             "overall; pip install 'bsqaudio[mos]')")
    parser.add_argument("--model", default=None,
                        help="model folder, .safetensors or Hub id for the bsqaudio system (default: embedded)")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here "
                        "(rewritten after every file)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="with --from-json: add the systems this report lacks (e.g. the reference "
                             "codecs, which a new model does not change) from an earlier report on the "
                             "same files and settings")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="do not evaluate: re-summarize and print a report written by --json")
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        if args.reuse:
            reuse_systems(report, json.loads(args.reuse.read_text()), args.reuse)
        report["summary"] = {}
        finish(report)
        return 0
    if not args.inputs:
        parser.error("give a manifest, audio files or folders (or --from-json)")

    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in names if s not in ALL_SYSTEMS
               and not (s.startswith(GL_SWEEP) and s[len(GL_SWEEP):].isdigit())]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {ALL_SYSTEMS} or {GL_SWEEP}N")
    missing = [tool for tool, need in (("c2enc", "codec2"), ("c2dec", "codec2"),
                                       ("opusenc", "opus"), ("opusdec", "opus"))
               if any(n.startswith(need) for n in names) and shutil.which(tool) is None]
    if missing:
        print(f"quality.py: missing {missing}: apt-get install -y codec2 opus-tools "
              "(those systems will record errors)", file=sys.stderr)

    items = collect_inputs(args.inputs, args.split, args.kind)
    if args.limit:
        kept, seen = [], {}
        for item in items:
            seen[item["kind"]] = seen.get(item["kind"], 0) + 1
            if seen[item["kind"]] <= args.limit:
                kept.append(item)
        items = kept
    if not items:
        print("quality.py: no audio files among the inputs", file=sys.stderr)
        return 1

    import bsqaudio

    systems = Systems(names, args.model)
    started = _dt.datetime.now(_dt.timezone.utc)
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]) if argv is None
        else " ".join(argv),
        "date_utc": started.isoformat(timespec="seconds"),
        "bsqaudio_version": bsqaudio.__version__,
        "model": systems.codec.config.name, "model_hash": systems.codec.model_hash,
        "model_source": str(systems.codec.source),
        "machine": machine_info(),
        "settings": {"max_seconds": args.max_seconds,
                     "music_max_seconds": args.music_max_seconds or None,
                     "alignment": f"log-spectrogram xcorr +-{MAX_LAG_S * 1000:.0f} ms in 1 ms "
                                  f"steps, waveform xcorr refine +-{REFINE_LAG_S * 1000:.0f} ms, "
                                  "same for all systems",
                     "griffin_lim_iterations": systems.codec.griffin_lim_iterations,
                     "systems": names},
        "complete": False, "files": [], "summary": {},
    }
    total_audio = 0.0
    t0 = time.perf_counter()
    for index, item in enumerate(items, 1):
        cap = args.max_seconds
        if item["kind"] == "music" and args.music_max_seconds:
            cap = min(cap, args.music_max_seconds) if cap else args.music_max_seconds
        try:
            row = evaluate_file(systems, item, cap, args.mos)
        except Exception as err:  # unreadable reference: no system can be scored
            row = {"path": str(item["path"]), "name": item["name"], "kind": item["kind"],
                   "error": f"{type(err).__name__}: {err}"}
        report["files"].append(row)
        total_audio += row.get("duration_s", 0.0)
        elapsed = time.perf_counter() - t0
        errs = [n for n, r in row.get("systems", {}).items() if "error" in r]
        b = row.get("systems", {}).get("bsqaudio", {})
        print(f"[{index}/{len(items)}] {item['kind']} {item['name']} "
              f"{row.get('duration_s', 0):.1f}s  bsq STOI {_fmt(b.get('stoi'), 3)} "
              f"PESQ {_fmt(b.get('pesq_wb'))}  elapsed {elapsed:.0f}s "
              f"({total_audio:.0f}s audio)" + (f"  ERRORS {errs}" if errs else "")
              + (f"  FILE ERROR {row['error']}" if "error" in row else ""),
              file=sys.stderr, flush=True)
        if args.json and (index % 5 == 0 or index == len(items)):
            _write_json(args.json, report)

    report["complete"] = True
    report["wall_seconds"] = time.perf_counter() - t0
    finish(report)
    if args.json:
        _write_json(args.json, report)
    return 0


def reuse_systems(report: dict, earlier: dict, source: Path) -> None:
    """Copy into ``report`` the per-file results of systems it did not run from ``earlier``, a
    report on the same files with the same truncation; refuse anything that does not line up."""
    for key in ("max_seconds", "music_max_seconds"):
        if report["settings"][key] != earlier["settings"][key]:
            raise SystemExit(f"quality.py: --reuse {source}: its {key} differs from this report's")
    rows = {(r["path"], r.get("duration_s")): r for r in earlier["files"] if "error" not in r}
    added = [n for n in earlier["settings"]["systems"] if n not in report["settings"]["systems"]]
    for row in report["files"]:
        if "error" in row:
            continue
        match = rows.get((row["path"], row.get("duration_s")))
        if match is None:
            raise SystemExit(f"quality.py: --reuse {source} has no result for {row['path']}")
        for name in added:
            if name in match["systems"]:
                row["systems"][name] = match["systems"][name]
    report["settings"]["systems"] = report["settings"]["systems"] + added
    report["settings"]["reused"] = {"from": str(source), "date_utc": earlier["date_utc"],
                                    "systems": added}


def finish(report: dict) -> None:
    """Summarize ``report`` per kind (into report["summary"]) and print the tables."""
    names = report["settings"]["systems"]
    settings = report["settings"]
    good = [r for r in report["files"] if "error" not in r]
    kinds = sorted({r["kind"] for r in good}, key=lambda k: (k != "speech", k))
    tables = []
    for kind in kinds:
        rows = [r for r in good if r["kind"] == kind]
        summary = summarize(rows, names)
        if kind == "speech":
            summary["target"] = target_check(summary, rows)
        report["summary"][kind] = summary
        trunc = [r for r in rows if r["truncated"]]
        title = (f"{kind}: {len(rows)} files, {summary['seconds_of_audio']:.1f} s of audio")
        if trunc:
            cap = settings["max_seconds"]
            if kind == "music" and settings["music_max_seconds"]:
                cap = min(cap or math.inf, settings["music_max_seconds"])
            title += f"; {len(trunc)} files truncated to their first {cap:g} s"
        if kind == "speech":
            title += " (the table that matters for STOI and PESQ-WB)"
        elif kind == "music":
            title += " (STOI and PESQ-WB are speech measures: shown for completeness only)"
        tables.append(render_table(title, summary, names))
    report["file_errors"] = [r for r in report["files"] if "error" in r]

    m = report["machine"]
    print(f"bsqaudio {report['bsqaudio_version']}, model {report['model']} "
          f"({report['model_hash']}); {m['cpu_model']}, nproc {m['nproc']}; "
          f"{report['date_utc']}; wall {report.get('wall_seconds', 0):.0f} s")
    print("bit/s = file size x 8 / duration, totals over the table's files (bsqaudio: .bsq "
          "file with header; codes = token bitrate).\nAlignment: log-spectrogram "
          "cross-correlation over +-50 ms refined by waveform cross-correlation over +-1 ms, "
          "identical for every system.")
    reused = settings.get("reused")
    if reused:
        print(f"Rows of {', '.join(reused['systems'])} reused from {reused['from']} "
              f"({reused['date_utc']}), the same files and settings.")
    print()
    print("\n\n".join(tables))
    target = report["summary"].get("speech", {}).get("target")
    if target:
        v = target["values"]
        print("\nspeech target (at <= 1.8 kbit/s: STOI and PESQ-WB above codec2-1200, "
              "MR-STFT below codec2-3200):")
        print(f"  code bitrate <= 1800: {target['code_bitrate_le_1800']}  "
              f"(file bitrate <= 1800: {target['file_bitrate_le_1800']})")
        b, c12, c32 = v["bsqaudio"], v["codec2-1200"], v["codec2-3200"]
        lines = [("STOI   ", "stoi", b["stoi"], "codec2-1200", c12["stoi"], 3,
                  target["stoi_above_codec2_1200"]),
                 ("PESQ-WB", "pesq_wb", b["pesq_wb"], "codec2-1200", c12["pesq_wb"], 2,
                  target["pesq_wb_above_codec2_1200"]),
                 ("MR-STFT", "mrstft", b["mrstft"], "codec2-3200", c32["mrstft"], 3,
                  target["mrstft_below_codec2_3200"])]
        for label, key, ours, other, theirs, digits, ok in lines:
            p = target.get("paired", {}).get(key)
            extra = ""
            if p:
                extra = (f"  [paired advantage {p['mean_advantage']:+.{digits + 1}f}, 95% CI "
                         f"{p['ci95'][0]:+.{digits + 1}f}..{p['ci95'][1]:+.{digits + 1}f}, "
                         f"better on {p['wins']}/{p['n']} files]")
            print(f"  {label} {_fmt(ours, digits)} vs {other} {_fmt(theirs, digits)}: {ok}{extra}")
    if report["file_errors"]:
        print(f"\n{len(report['file_errors'])} reference files could not be read: "
              + ", ".join(r["name"] for r in report["file_errors"]))
    sys_errors = sum(s["errors"] for k in report["summary"].values()
                     for s in k["systems"].values())
    if sys_errors:
        print(f"{sys_errors} (file, system) pairs failed; see the JSON for the errors")


if __name__ == "__main__":
    sys.exit(main())
