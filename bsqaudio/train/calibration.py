"""Bit-threshold calibration: move each code bit's threshold so the bit is balanced on data.

A code bit is the sign of one quantizer input, so ``quant_embed``'s bias is that bit's threshold.
The training loss balances bits over training batches, where every domain is mixed; a domain on
its own (speech alone, music alone) can still lean one way on many bits. Calibration picks, per
bit, the threshold that keeps the worst group's share of ones closest to one half (minimax over
groups), then moves the bias by it. Bits flip only for tokens near a threshold; the decoder is
then fine-tuned on the new codes (``bsqaudio train --freeze-encoder``).
"""

from __future__ import annotations

import torch

from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.dsp.windows import WindowCutter
from bsqaudio.model.tokenizer import AudioBSQ


@torch.inference_mode()
def audio_latents(model: AudioBSQ, frontend: MelFrontend, wave: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """(T,) audio at the model's rate -> (tokens, L) quantizer inputs of the patches that hold audio,
    windowed and normalized exactly as ``Codec.encode`` does."""
    cutter = WindowCutter(frontend.config)
    segments = cutter.feed(wave) + cutter.finish()
    mels = torch.stack([frontend.analyze_segment(segment)[0] for segment in segments])
    latents = torch.cat([model.latents(batch) for batch in mels.split(batch_size)])
    rows = frontend.config.num_rows(wave.shape[0])
    return latents.reshape(-1, model.config.code_bits)[: rows * model.config.grid_freq].float()


def share_above(latents_nl: torch.Tensor, thresholds_cl: torch.Tensor) -> torch.Tensor:
    """(N, L) latents, (C, L) candidate thresholds -> (C, L) share of latents above each."""
    ordered = latents_nl.sort(0).values.T.contiguous()  # (L, N)
    below = torch.searchsorted(ordered, thresholds_cl.T.contiguous(), right=True)  # (L, C)
    return 1.0 - below.T.float() / latents_nl.shape[0]


def balanced_thresholds(groups: list[torch.Tensor], candidates: int = 801) -> tuple[torch.Tensor, torch.Tensor]:
    """(N_g, L) latents of each group -> ((L,) thresholds, (L,) worst group's distance from 0.5).

    Candidates are quantiles of all groups pooled; where several tie, the one nearest zero wins
    (the smallest change to the codes)."""
    per_group = 300_000 // len(groups)  # torch.quantile takes at most 2**24 elements
    pooled = torch.cat([g[torch.randperm(g.shape[0], generator=torch.Generator().manual_seed(0))[:per_group]]
                        for g in groups])
    levels = torch.linspace(0.02, 0.98, candidates, dtype=pooled.dtype)
    grid = torch.cat([torch.quantile(pooled, levels, dim=0), torch.zeros(1, pooled.shape[1])])  # (C, L)
    worst = torch.stack([(share_above(g, grid) - 0.5).abs() for g in groups]).amax(0)  # (C, L)
    score = worst + 1e-6 * grid.abs()
    best = score.argmin(0)
    columns = torch.arange(grid.shape[1])
    return grid[best, columns], worst[best, columns]


@torch.no_grad()
def shift_thresholds(model: AudioBSQ, thresholds: torch.Tensor) -> None:
    """Make each bit switch at ``thresholds`` instead of zero."""
    model.quant_embed.bias.sub_(thresholds.to(model.quant_embed.bias))
