"""Binary Spherical Quantizer (BSQ, Zhao et al. 2024), with its losses and code <-> index maps.

A latent vector ``z`` of L dimensions is projected onto the unit sphere, then each coordinate is
replaced by its sign, scaled by ``1/sqrt(L)``: the code is a corner of the hypercube that also lies
on the unit sphere, so the quantization error is bounded and no codebook is stored. Gradients pass
straight through the sign.

The entropy regularizer follows BSQ-ViT with group size 1 (a closed form per bit): it lowers the
per-sample entropy (each bit decided) and raises the codebook entropy (each bit balanced across the
batch). Both terms are *averaged* over the L bits rather than summed: summed over 36 bits they
overwhelm the reconstruction loss and collapse every patch onto one code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    codes: torch.Tensor  # (..., L) in {-1, +1}/sqrt(L), straight-through gradient
    indices: torch.Tensor  # (...,) int64
    loss: torch.Tensor  # scalar: commit + entropy penalty
    commit_loss: torch.Tensor
    sample_entropy: torch.Tensor  # mean per-bit entropy of each sample, nats; low is decided
    codebook_entropy: torch.Tensor  # mean per-bit entropy of the batch average; high is balanced
    bit_balance: torch.Tensor  # (L,) fraction of +1 per bit


def bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
    """(..., L) bool/0-1 -> (...,) int64, most significant bit first."""
    num_bits = bits.shape[-1]
    weights = torch.tensor([1 << (num_bits - 1 - i) for i in range(num_bits)], dtype=torch.int64,
                           device=bits.device)
    return (bits.to(torch.int64) * weights).sum(-1)


def indices_to_bits(indices: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(...,) int64 -> (..., L) bool, most significant bit first."""
    shifts = torch.arange(num_bits - 1, -1, -1, device=indices.device, dtype=torch.int64)
    return (indices.unsqueeze(-1) >> shifts) & 1 == 1


def indices_to_codes(indices: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(...,) int64 -> (..., L) float codes on the unit sphere."""
    bits = indices_to_bits(indices, num_bits).float()
    return (2.0 * bits - 1.0) / math.sqrt(num_bits)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class BinarySphericalQuantizer(nn.Module):
    """(..., L) latents -> L-bit codes.

    ``beta`` weights the commit loss, ``gamma0`` the per-sample entropy, ``gamma`` the codebook
    entropy and ``zeta`` the whole entropy penalty; all are explicit, none reset silently.
    """

    def __init__(self, num_bits: int, beta: float = 0.25, gamma0: float = 1.0, gamma: float = 1.0,
                 zeta: float = 1.0, inv_temperature: float = 1.0) -> None:
        super().__init__()
        self.num_bits = num_bits
        self.beta = beta
        self.gamma0 = gamma0
        self.gamma = gamma
        self.zeta = zeta
        self.inv_temperature = inv_temperature

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z = F.normalize(z.float(), dim=-1)
        bits = z > 0
        hard = torch.where(bits, 1.0, -1.0) / math.sqrt(self.num_bits)
        codes = z + (hard - z).detach()
        commit = ((hard - z) ** 2).sum(-1).mean()
        # Probability that each bit is +1: a softmax over the two candidate values, which for
        # coordinates scaled to unit size (z * sqrt(L) is about +-1 at a corner) is a sigmoid.
        p_plus = torch.sigmoid(4.0 * self.inv_temperature * z * math.sqrt(self.num_bits))
        sample_entropy = _binary_entropy(p_plus).mean()
        flat = p_plus.reshape(-1, self.num_bits)
        codebook_entropy = _binary_entropy(flat.mean(0)).mean()
        penalty = self.gamma0 * sample_entropy - self.gamma * codebook_entropy
        loss = self.beta * commit + self.zeta * penalty
        return QuantizerOutput(
            codes=codes,
            indices=bits_to_indices(bits),
            loss=loss,
            commit_loss=commit.detach(),
            sample_entropy=sample_entropy.detach(),
            codebook_entropy=codebook_entropy.detach(),
            bit_balance=bits.reshape(-1, self.num_bits).float().mean(0),
        )
