"""``bsqaudio eval``: round-trip reference files and measure what survives.

Each file is scored twice: through the codec, and through "oracle Griffin-Lim" (its own
unquantized mel inverted the same way), the ceiling that a better tokenizer alone cannot pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bsqaudio.audio import load_mono
from bsqaudio.bitstream import write_bsq
from bsqaudio.codec import Codec
from bsqaudio.errors import BsqAudioError
from bsqaudio.metrics import MOS_KEYS, all_metrics, naturalness

METRIC_KEYS = ("mel_mae_db", "mel_mse_db", "mrstft", "si_sdr_db", "stoi", "pesq_wb", *MOS_KEYS)


def oracle_griffin_lim(codec: Codec, wave: torch.Tensor) -> torch.Tensor:
    """The unquantized mel of ``wave`` inverted exactly as the decoder inverts its output."""
    frontend = codec.frontend
    mel, gains = frontend.analyze(wave)
    power = frontend.denormalize(mel, gains).reshape(-1, codec.config.n_mels)
    power = power[: frontend.num_frames(wave.shape[0]) + 1]
    return frontend.synthesize(power, iterations=codec.griffin_lim_iterations)[: wave.shape[0]]


def evaluate_file(codec: Codec, path: Path, oracle: bool = True, mos: bool = False) -> dict:
    """Metrics of one file: the codec's, and with ``oracle`` the oracle Griffin-Lim's; with
    ``mos`` also the predicted naturalness of each and of the reference itself (speech only)."""
    rate = codec.config.sample_rate
    wave, _, _ = load_mono(path, rate)
    codes = codec.encode(wave, rate)
    decoded = codec.decode(codes)
    duration = wave.shape[0] / rate
    row = {
        "path": str(path),
        "duration_s": duration,
        "bitrate_bps": codes.bitrate,
        "file_bitrate_bps": len(write_bsq(codes)) * 8 / duration,
        "codec": all_metrics(wave, decoded, codec.frontend),
        "codes": code_statistics(codes.indices, codes.rows_per_window, codes.code_bits),
    }
    if mos:
        row["codec"].update(naturalness(decoded, rate))
        row["reference"] = naturalness(wave, rate)
    if oracle:
        oracle_wave = oracle_griffin_lim(codec, wave)
        row["oracle"] = all_metrics(wave, oracle_wave, codec.frontend)
        if mos:
            row["oracle"].update(naturalness(oracle_wave, rate))
    return row


def code_statistics(indices_rf: torch.Tensor, rows_per_window: int, code_bits: int) -> dict:
    """Token usage of one file: distinct codes per window (fraction of its patches), the count of
    1s per bit and of 1s in both bits of every pair, to aggregate bit balance and bit
    correlation over many files."""
    windows = indices_rf.split(rows_per_window)
    distinct = [w.unique().numel() / w.numel() for w in windows]
    shifts = torch.arange(code_bits - 1, -1, -1)
    bits = ((indices_rf.reshape(-1, 1) >> shifts) & 1).double()
    return {"distinct_per_window": sum(distinct) / len(distinct), "ones_per_bit": bits.sum(0).long().tolist(),
            "ones_per_pair": (bits.T @ bits).long().tolist(), "tokens": indices_rf.numel()}


def copied_bits(ones: torch.Tensor, pairs: torch.Tensor, tokens: int, threshold: float = 0.9) -> int:
    """How many bits are nearly a copy (or the negation) of another: Pearson |r| > ``threshold``
    over the tokens. Per-bit balance cannot see this, and such bits carry almost nothing new."""
    p = ones.double() / tokens
    covariance = pairs.double() / tokens - p[:, None] * p[None, :]
    spread = (p * (1 - p)).sqrt()
    r = covariance / (spread[:, None] * spread[None, :]).clamp_min(1e-12)
    r.fill_diagonal_(0.0)
    return int((r.abs() > threshold).any(1).sum())


def evaluate(codec: Codec, paths: list[Path], oracle: bool = True, mos: bool = False,
             on_row: Callable[[dict], None] | None = None) -> dict:
    """Evaluate every readable file; unreadable ones are listed under ``errors``."""
    rows, errors = [], []
    for path in paths:
        try:
            row = evaluate_file(codec, path, oracle, mos)
        except BsqAudioError as err:
            errors.append({"path": str(path), "error": str(err)})
            continue
        rows.append(row)
        if on_row:
            on_row(row)
    return {"files": rows, "errors": errors, "mean": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """Mean of every metric over the files where it is defined (PESQ may be undefined)."""
    mean: dict = {}
    for key in ("bitrate_bps", "file_bitrate_bps", "duration_s"):
        mean[key] = sum(r[key] for r in rows) / len(rows) if rows else None
    if rows:
        tokens = sum(r["codes"]["tokens"] for r in rows)
        ones = torch.tensor([r["codes"]["ones_per_bit"] for r in rows]).sum(0)
        pairs = torch.tensor([r["codes"]["ones_per_pair"] for r in rows]).sum(0)
        balance = ones.double() / tokens
        mean["codes"] = {
            "distinct_per_window": sum(r["codes"]["distinct_per_window"] for r in rows) / len(rows),
            "bit_balance_min": float(balance.min()),
            "bit_balance_max": float(balance.max()),
            "bits_outside_0.4_0.6": int(((balance < 0.4) | (balance > 0.6)).sum()),
            "copied_bits": copied_bits(ones, pairs, tokens),
        }
    for system in ("codec", "oracle", "reference"):
        values = [r[system] for r in rows if system in r]
        if not values:
            continue
        mean[system] = {}
        for key in METRIC_KEYS:
            defined = [v[key] for v in values if v.get(key) is not None]
            if defined or key in values[0]:
                mean[system][key] = sum(defined) / len(defined) if defined else None
    return mean
