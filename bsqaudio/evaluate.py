"""``bsqaudio eval``: round-trip reference files and measure what survives, beside other codecs.

Each reference is scored through the codec; with ``oracle``, through "oracle Griffin-Lim" (its
own unquantized mel inverted the same way: the ceiling a better tokenizer alone cannot pass);
and for each ``decoded`` folder, that folder's file of the same relative path (another codec's
output: EnCodec, DAC, Opus...). Every system is aligned to the reference the same way
(``bsqaudio.alignment``) before it is scored.

No SI-SDR: it needs the reference's waveform phase, which a phase-free decoder (Griffin-Lim, a
vocoder) never reproduces; it read about -36 dB even for the oracle, which sounds near perfect.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bsqaudio.alignment import align
from bsqaudio.bitstream import write_bsq
from bsqaudio.codec import Codec
from bsqaudio.errors import BsqAudioError
from bsqaudio.io.audio_files import load_mono
from bsqaudio.io.inputs import AUDIO_SUFFIXES
from bsqaudio.metrics import MOS_KEYS, all_metrics, naturalness
from bsqaudio.token_statistics import code_statistics, summarize_codes

METRIC_KEYS = ("mel_mae_db", "mel_mse_db", "mrstft", "stoi", "pesq_wb", *MOS_KEYS)


@dataclass
class Reference:
    """One reference file and the path other codecs' outputs are matched by."""

    path: Path
    relative: Path


def oracle_griffin_lim(codec: Codec, wave: torch.Tensor) -> torch.Tensor:
    """The unquantized mel of ``wave`` inverted exactly as the decoder inverts its output."""
    frontend = codec.frontend
    mel, gains = frontend.analyze(wave)
    power = frontend.denormalize(mel, gains).reshape(-1, codec.config.n_mels)
    power = power[: frontend.config.num_frames(wave.shape[0]) + 1]
    return codec.griffin_lim.synthesize(power, iterations=codec.griffin_lim_iterations)[: wave.shape[0]]


def decoded_file(folder: Path, relative: Path) -> Path:
    """``folder``'s output for the reference at ``relative``: the same path with the same or any
    audio suffix (a codec may write .wav for a .flac reference)."""
    suffixes = [relative.suffix] + sorted(AUDIO_SUFFIXES - {relative.suffix.lower()})
    for suffix in suffixes:
        candidate = folder / relative.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise BsqAudioError(f"{folder / relative.with_suffix('.*')}: no decoded file for {relative}")


def score(reference: torch.Tensor, decoded: torch.Tensor, codec: Codec, mos: bool) -> dict:
    """Metrics of ``decoded`` (any length) after aligning it to ``reference``."""
    rate = codec.config.sample_rate
    aligned, lag = align(reference, decoded, rate)
    metrics = all_metrics(reference, aligned, codec.frontend)
    if mos:
        metrics.update(naturalness(aligned, rate))
    metrics["lag_ms"] = 1000.0 * lag / rate
    return metrics


def evaluate_file(codec: Codec, reference: Reference, oracle: bool = True, mos: bool = False,
                  decoded: dict[str, Path] | None = None) -> tuple[dict, dict]:
    """(the file's row: metrics per system; its code statistics, for ``summarize_codes``). With
    ``mos`` also the predicted naturalness of each system and of the reference (speech only)."""
    rate = codec.config.sample_rate
    wave, _, _ = load_mono(reference.path, rate)
    codes = codec.encode(wave, rate)
    duration = wave.shape[0] / rate
    stats = code_statistics(codes.indices, codes.rows_per_window, codes.code_bits)
    row = {
        "path": str(reference.path),
        "name": str(reference.relative),
        "duration_s": duration,
        "bitrate_bps": codes.bitrate,
        "file_bitrate_bps": len(write_bsq(codes)) * 8 / duration,
        "distinct_per_window": stats["distinct_per_window"],
        "codec": score(wave, codec.decode(codes), codec, mos),
    }
    if mos:
        row["reference"] = naturalness(wave, rate)
    if oracle:
        row["oracle"] = score(wave, oracle_griffin_lim(codec, wave), codec, mos)
    if decoded:
        row["decoded"] = {}
        for name, folder in decoded.items():
            try:
                other, _, _ = load_mono(decoded_file(folder, reference.relative), rate)
                row["decoded"][name] = score(wave, other, codec, mos)
            except BsqAudioError as err:
                row["decoded"][name] = {"error": str(err)}
    return row, stats


def evaluate(codec: Codec, references: list[Reference], oracle: bool = True, mos: bool = False,
             decoded: dict[str, Path] | None = None, on_row: Callable[[dict], None] | None = None) -> dict:
    """Evaluate every readable file; unreadable ones are listed under ``errors``, and a decoded
    folder's missing or unreadable files under each row's ``decoded``."""
    rows, stats, errors = [], [], []
    for reference in references:
        try:
            row, file_stats = evaluate_file(codec, reference, oracle, mos, decoded)
        except BsqAudioError as err:
            errors.append({"path": str(reference.path), "error": str(err)})
            continue
        rows.append(row)
        stats.append(file_stats)
        if on_row:
            on_row(row)
    mean = summarize(rows)
    if stats:
        mean["codes"] = summarize_codes(stats)
    return {**describe(codec, oracle, decoded), "files": rows, "errors": errors, "mean": mean}


def describe(codec: Codec, oracle: bool, decoded: dict[str, Path] | None) -> dict:
    """What a report was measured with: model, code space, versions, machine, settings."""
    from bsqaudio import __version__

    return {
        "bsqaudio_version": __version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": codec.config.name, "hash": codec.model_hash, "source": str(codec.source),
                  "code_bits": codec.config.code_bits, "bitrate_bps": codec.config.bitrate},
        "griffin_lim_iterations": codec.griffin_lim_iterations,
        "systems": ["codec"] + (["oracle"] if oracle else []) + list(decoded or {}),
        "decoded_folders": {name: str(folder) for name, folder in (decoded or {}).items()},
        "alignment": "bsqaudio.alignment: log-spectrogram lag within 50 ms, waveform refinement within 1 ms",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": str(codec.device)},
    }


def _mean_metrics(values: list[dict]) -> dict:
    ok = [v for v in values if "error" not in v]
    mean: dict = {"files": len(ok), "missing": len(values) - len(ok)}
    for key in (*METRIC_KEYS, "lag_ms"):
        defined = [v[key] for v in ok if v.get(key) is not None]
        if defined or any(key in v for v in ok):
            mean[key] = sum(defined) / len(defined) if defined else None
    return mean


def summarize(rows: list[dict]) -> dict:
    """Mean of every metric over the files where it is defined (PESQ may be undefined)."""
    mean: dict = {}
    for key in ("bitrate_bps", "file_bitrate_bps", "duration_s"):
        mean[key] = sum(r[key] for r in rows) / len(rows) if rows else None
    for system in ("codec", "oracle", "reference"):
        values = [r[system] for r in rows if system in r]
        if values:
            mean[system] = _mean_metrics(values)
    names = list(dict.fromkeys(name for r in rows for name in r.get("decoded", {})))
    if names:
        mean["decoded"] = {name: _mean_metrics([r["decoded"][name] for r in rows]) for name in names}
    return mean
