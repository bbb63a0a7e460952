"""How a model uses its codes: distinct codes per window, per-bit balance, and bits that copy
another bit. One place for what ``eval`` reports over files and training validation logs."""

from __future__ import annotations

import torch

from bsqaudio.model.quantizer import indices_to_bits


def code_statistics(indices_rf: torch.Tensor, rows_per_window: int, code_bits: int) -> dict:
    """Token usage of one file: distinct codes per window (fraction of its patches), the count of
    1s per bit and of 1s in both bits of every pair, to aggregate bit balance and bit
    correlation over many files."""
    windows = indices_rf.split(rows_per_window)
    distinct = [w.unique().numel() / w.numel() for w in windows]
    bits = indices_to_bits(indices_rf.reshape(-1), code_bits).double()
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


def summarize_codes(stats: list[dict]) -> dict:
    """Token usage over many files: distinct codes per window, per-bit balance, copied bits."""
    tokens = sum(s["tokens"] for s in stats)
    ones = torch.tensor([s["ones_per_bit"] for s in stats]).sum(0)
    pairs = torch.tensor([s["ones_per_pair"] for s in stats]).sum(0)
    balance = ones.double() / tokens
    return {
        "distinct_per_window": sum(s["distinct_per_window"] for s in stats) / len(stats),
        "bit_balance_min": float(balance.min()),
        "bit_balance_max": float(balance.max()),
        "bits_outside_0.4_0.6": int(((balance < 0.4) | (balance > 0.6)).sum()),
        "copied_bits": copied_bits(ones, pairs, tokens),
    }
