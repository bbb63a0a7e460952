"""Binary Spherical Quantizer (BSQ, Zhao et al. 2024), with its losses and code <-> index maps.

A latent vector ``z`` of L dimensions is projected onto the unit sphere, then each coordinate is
replaced by its sign, scaled by ``1/sqrt(L)``: the code is a corner of the hypercube that also lies
on the unit sphere, so the quantization error is bounded and no codebook is stored. Gradients pass
straight through the sign.

The entropy regularizer follows BSQ-ViT: it lowers the per-sample entropy (each bit decided) and
raises the codebook entropy (the batch's codes spread out). Per sample the bits are independent, so
its entropy is a closed form per bit. The codebook entropy is of the batch average, which is not:
with groups of one bit (``group_size`` 1) it only asks each bit to be balanced, and a model can
satisfy that by copying one balanced feature into many bits (the first default model had 20 of its
36 bits correlated above 0.9 with another). Groups of g bits measure the average distribution over
the 2^g patterns of each group, so copies within a group lower it. Both terms are *averaged* per
bit rather than summed: summed over 36 bits they overwhelm the reconstruction loss and collapse
every patch onto one code.

Where this departs from BSQ-ViT's code, and why (each departure is a training-loss choice; codes
are always the signs):
- Bit probabilities are ``sigmoid(4 tau z sqrt(L))``, where BSQ-ViT's soft assignment amounts to
  ``sigmoid(4 tau z / sqrt(L))``: here the logit is taken on coordinates scaled to unit size
  (``z sqrt(L)`` is +-1 at a corner), so ``inv_temperature`` means the same sharpness at any L.
  The same tau is therefore L times sharper than BSQ-ViT's (36x at L = 36); our default 1.0 was
  chosen on this scale.
- The entropy penalty is not divided by tau (BSQ-ViT divides it): with tau at 1 the two agree,
  and the penalty's weight is ``zeta`` alone rather than a product of two knobs.
- ``beta`` (commit loss) defaults to 0.25 where BSQ-ViT's is 0: the shipped models were trained
  with it, and it keeps latents near the corners so the sign is not decided by noise.
- Every term counts only the samples ``mask`` selects (in training, patches that hold audio):
  padding past the end of a file does not pull codes towards silence's.
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


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only the samples where ``mask`` (``x``'s shape up to and
    including ``dim``) is true: a weighted mean, not a gather, so no host sync on a GPU."""
    if mask is None:
        return x.mean(dim)
    weight = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim())).to(x.dtype)
    return (x * weight).sum(dim) / weight.sum(dim).clamp_min(1.0)


class BinarySphericalQuantizer(nn.Module):
    """(..., L) latents -> L-bit codes.

    ``beta`` weights the commit loss, ``gamma0`` the per-sample entropy, ``gamma`` the codebook
    entropy and ``zeta`` the whole entropy penalty; ``group_size`` (dividing L) is the number of
    bits whose joint patterns the codebook entropy counts. ``gamma_window`` weights the same
    per-bit balance measured within each window (latents shaped (windows, patches, L)) instead of
    over the whole batch: it asks every recording, not only the mix, to use both values of each
    bit (it needs 3-D latents and refuses others). None changes the codes, only the training loss.
    """

    def __init__(self, num_bits: int, beta: float = 0.25, gamma0: float = 1.0, gamma: float = 1.0,
                 zeta: float = 1.0, inv_temperature: float = 1.0, group_size: int = 1,
                 gamma_window: float = 0.0) -> None:
        super().__init__()
        self.num_bits = num_bits
        self.beta = beta
        self.gamma0 = gamma0
        self.gamma = gamma
        self.zeta = zeta
        self.gamma_window = gamma_window
        self.inv_temperature = inv_temperature
        self.group_size = group_size

    @property
    def group_size(self) -> int:
        return self._group_size

    @group_size.setter
    def group_size(self, size: int) -> None:
        if size < 1 or self.num_bits % size or size > 12:
            raise ValueError(f"group size {size} must divide the {self.num_bits} code bits and be at most 12")
        self._group_size = size

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """``mask`` (z's shape without L), if given, selects the samples every loss term and
        ``bit_balance`` count (in training: the patches that hold audio, not padding)."""
        if self.gamma_window and z.dim() != 3:
            raise ValueError(f"gamma_window needs latents shaped (windows, patches, L), not {tuple(z.shape)}")
        z = F.normalize(z.float(), dim=-1)
        bits = z > 0
        hard = torch.where(bits, 1.0, -1.0) / math.sqrt(self.num_bits)
        codes = z + (hard - z).detach()
        flat_mask = None if mask is None else mask.reshape(-1)
        commit = _masked_mean(((hard - z) ** 2).sum(-1).reshape(-1), flat_mask, 0)
        # Probability that each bit is +1: a softmax over the two candidate values, which for
        # coordinates scaled to unit size (z * sqrt(L) is about +-1 at a corner) is a sigmoid.
        p_plus = torch.sigmoid(4.0 * self.inv_temperature * z * math.sqrt(self.num_bits))
        sample_entropy = _masked_mean(_binary_entropy(p_plus).mean(-1).reshape(-1), flat_mask, 0)
        codebook_entropy = self._codebook_entropy(p_plus.reshape(-1, self.num_bits), mask)
        penalty = self.gamma0 * sample_entropy - self.gamma * codebook_entropy
        if self.gamma_window:
            penalty = penalty - self.gamma_window * self._window_entropy(p_plus, mask)
        loss = self.beta * commit + self.zeta * penalty
        return QuantizerOutput(
            codes=codes,
            indices=bits_to_indices(bits),
            loss=loss,
            commit_loss=commit.detach(),
            sample_entropy=sample_entropy.detach(),
            codebook_entropy=codebook_entropy.detach(),
            bit_balance=_masked_mean(bits.reshape(-1, self.num_bits).float(), flat_mask, 0),
        )

    def _window_entropy(self, p_plus_bnl: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Mean over windows and bits of the entropy of each window's average bit (at most ln 2)."""
        return _binary_entropy(_masked_mean(p_plus_bnl, mask, 1)).mean()

    def _codebook_entropy(self, p_plus_nl: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Entropy of the batch-average code distribution, per bit (at most ln 2), with the bits
        in independent groups of ``group_size``; masked-out samples do not count."""
        mask = None if mask is None else mask.reshape(-1)
        g = self.group_size
        if g == 1:
            return _binary_entropy(_masked_mean(p_plus_nl, mask, 0)).mean()
        p = p_plus_nl.clamp(1e-6, 1 - 1e-6).reshape(p_plus_nl.shape[0], -1, g)  # (N, groups, g)
        patterns = indices_to_bits(torch.arange(2 ** g, device=p.device), g).to(p.dtype)  # (2^g, g)
        log_joint = p.log() @ patterns.T + (1 - p).log() @ (1 - patterns).T  # (N, groups, 2^g)
        average = _masked_mean(log_joint.exp(), mask, 0)  # (groups, 2^g)
        entropy = -(average * average.clamp_min(1e-12).log()).sum(-1)
        return entropy.mean() / g
