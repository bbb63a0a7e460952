"""Token statistics that `bsqaudio eval` reports: balance per bit and bits that copy another."""

from __future__ import annotations

import torch

from bsqaudio.model.quantizer import bits_to_indices
from bsqaudio.token_statistics import code_statistics, summarize_codes


def _report(bits_nl: torch.Tensor) -> dict:
    indices = bits_to_indices(bits_nl).reshape(-1, 8)  # 8 tokens a row
    stats = code_statistics(indices, rows_per_window=4, code_bits=bits_nl.shape[1])
    return summarize_codes([stats])


def test_copied_and_negated_bits_are_counted_and_independent_ones_are_not():
    generator = torch.Generator().manual_seed(0)
    bits = torch.rand(4096, 6, generator=generator) < 0.5
    independent = _report(bits)
    assert independent["copied_bits"] == 0
    assert independent["bits_outside_0.4_0.6"] == 0
    bits[:, 4] = bits[:, 0]  # a copy
    bits[:, 5] = ~bits[:, 0]  # a negated copy
    assert _report(bits)["copied_bits"] == 3  # bits 0, 4 and 5 each have a near-twin


def test_unbalanced_bits_are_counted():
    generator = torch.Generator().manual_seed(1)
    bits = torch.rand(4096, 6, generator=generator) < torch.tensor([0.5, 0.5, 0.3, 0.5, 0.7, 0.5])
    report = _report(bits)
    assert report["bits_outside_0.4_0.6"] == 2
    assert 0.25 < report["bit_balance_min"] < 0.35 and 0.65 < report["bit_balance_max"] < 0.75
