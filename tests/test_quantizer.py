"""Binary Spherical Quantizer: codes on the sphere, index maps, losses and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bsqaudio.model.quantizer import (
    BinarySphericalQuantizer,
    bits_to_indices,
    indices_to_bits,
    indices_to_codes,
)


@pytest.mark.parametrize("num_bits", [1, 18, 36, 63])
def test_codes_are_unit_norm_corners(num_bits):
    torch.manual_seed(0)
    q = BinarySphericalQuantizer(num_bits)
    z = torch.randn(3, 7, num_bits) * 5.0
    out = q(z)
    assert out.codes.shape == (3, 7, num_bits)
    assert out.indices.shape == (3, 7) and out.indices.dtype == torch.int64
    norms = out.codes.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    scale = 1.0 / math.sqrt(num_bits)
    torch.testing.assert_close(out.codes.abs(), torch.full_like(out.codes, scale))
    # The sign of each code entry is the sign of the latent.
    assert torch.equal(out.codes > 0, z > 0)
    # The indices describe exactly the codes the decoder is given.
    torch.testing.assert_close(indices_to_codes(out.indices, num_bits), out.codes)


def test_zero_latent_still_gives_a_valid_code():
    q = BinarySphericalQuantizer(18)
    out = q(torch.zeros(4, 18))
    torch.testing.assert_close(out.codes.norm(dim=-1), torch.ones(4))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("num_bits", [1, 18, 36, 63])
def test_index_bits_codes_round_trip(num_bits):
    top = 2 ** num_bits - 1
    gen = torch.Generator().manual_seed(num_bits)
    # Random indices over the whole range, plus both extremes.
    random = torch.randint(0, 2 ** min(num_bits, 62), (100,), generator=gen, dtype=torch.int64)
    if num_bits == 63:
        random = random * 2 + torch.randint(0, 2, (100,), generator=gen)
    indices = torch.cat([torch.tensor([0, top, top // 2, 1 % (top + 1)]), random])
    assert indices.max() <= top and indices.min() >= 0

    bits = indices_to_bits(indices, num_bits)
    assert bits.shape == (indices.shape[0], num_bits) and bits.dtype == torch.bool
    assert torch.equal(bits_to_indices(bits), indices)

    codes = indices_to_codes(indices, num_bits)
    recovered = bits_to_indices(codes > 0)
    assert torch.equal(recovered, indices)
    # Max index is all ones; MSB first.
    assert bits[1].all()
    assert not bits[0].any()


def test_max_index_for_63_bits():
    top = torch.tensor([2 ** 63 - 1], dtype=torch.int64)
    bits = indices_to_bits(top, 63)
    assert bits.all()
    assert bits_to_indices(bits).item() == 2 ** 63 - 1
    codes = indices_to_codes(top, 63)
    torch.testing.assert_close(codes, torch.full((1, 63), 1 / math.sqrt(63)))


def test_bits_are_most_significant_first():
    bits = indices_to_bits(torch.tensor([1, 4]), 3)
    assert bits.tolist() == [[False, False, True], [True, False, False]]
    assert bits_to_indices(torch.tensor([[1, 0, 1, 1]])).item() == 11


def test_quantizer_indices_follow_latent_signs():
    q = BinarySphericalQuantizer(4)
    z = torch.tensor([[1.0, -1.0, 0.5, 2.0], [-0.1, -0.2, -0.3, 0.4]])
    out = q(z)
    assert out.indices.tolist() == [0b1011, 0b0001]


def test_losses_finite_with_gradients():
    torch.manual_seed(0)
    q = BinarySphericalQuantizer(18)
    z = torch.randn(2, 64, 18, requires_grad=True)
    out = q(z)
    for value in (out.loss, out.commit_loss, out.sample_entropy, out.codebook_entropy):
        assert value.dim() == 0 and torch.isfinite(value)
    assert out.commit_loss >= 0
    assert 0 <= out.sample_entropy <= math.log(2) + 1e-6
    assert 0 <= out.codebook_entropy <= math.log(2) + 1e-6
    out.loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


def test_entropy_terms_measure_decision_and_balance():
    q = BinarySphericalQuantizer(8)
    # Decided latents at hypercube corners, balanced across the batch: every bit pattern.
    bits = indices_to_bits(torch.arange(256), 8)
    z = torch.where(bits, 1.0, -1.0) * 10.0
    balanced = q(z)
    assert balanced.codebook_entropy > 0.99 * math.log(2)
    # All samples identical: decided but not balanced.
    same = q(torch.full((256, 8), 1.0))
    assert same.codebook_entropy < 0.2
    # Undecided latents (near zero on some bits) have a higher per-sample entropy.
    vague = q(torch.randn(256, 8) * 1e-3 + torch.tensor([1.0] + [0.0] * 7))
    assert vague.sample_entropy > balanced.sample_entropy + 0.1
    # The penalty prefers balanced, decided codes over collapsed ones.
    assert balanced.loss < same.loss


def test_straight_through_gradient():
    """d(codes)/dz is the gradient of the unquantized, normalized latent: sign is skipped."""
    torch.manual_seed(0)
    q = BinarySphericalQuantizer(18)
    z = torch.randn(5, 18, requires_grad=True)
    weights = torch.randn(5, 18)
    (q(z).codes * weights).sum().backward()

    z_ref = z.detach().clone().requires_grad_(True)
    (F.normalize(z_ref, dim=-1) * weights).sum().backward()
    torch.testing.assert_close(z.grad, z_ref.grad)
    assert z.grad.abs().sum() > 0


def test_bit_balance():
    q = BinarySphericalQuantizer(6)
    z = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0, -1.0],
                      [1.0, -1.0, -1.0, 1.0, -1.0, 1.0],
                      [1.0, 1.0, -1.0, -1.0, -1.0, 1.0],
                      [1.0, -1.0, -1.0, -1.0, -1.0, 1.0]]).view(2, 2, 6)
    out = q(z)
    assert out.bit_balance.shape == (6,)
    torch.testing.assert_close(out.bit_balance, torch.tensor([1.0, 0.5, 0.0, 0.5, 0.0, 0.75]))


def test_bit_balance_shape_for_model_batch():
    q = BinarySphericalQuantizer(36)
    out = q(torch.randn(3, 512, 36))
    assert out.bit_balance.shape == (36,)
    assert ((out.bit_balance >= 0) & (out.bit_balance <= 1)).all()


def test_masked_samples_do_not_count_in_the_bit_balance_term():
    """Padding (here every masked sample is the same 'silence' code) must not tilt the balance the
    codebook entropy asks of the real samples: the real ones alone are perfectly balanced."""
    q = BinarySphericalQuantizer(8)
    real = torch.where(indices_to_bits(torch.arange(256), 8), 1.0, -1.0) * 10.0
    padding = torch.full((256, 8), 10.0)
    z = torch.cat([real, padding]).view(2, 256, 8)
    mask = torch.tensor([True, False])[:, None].expand(2, 256)
    masked = q(z, mask)
    assert masked.codebook_entropy > 0.99 * math.log(2)
    assert q(z).codebook_entropy < 0.85 * math.log(2)  # each bit 3/4 ones: H(0.75) = 0.81 ln 2
    torch.testing.assert_close(masked.codebook_entropy, q(real).codebook_entropy)



def test_masked_samples_do_not_count_in_any_term():
    """Padding off the corners (less decided, costly to commit) changes no loss term and no bit
    balance once masked: every term is that of the real samples alone."""
    q = BinarySphericalQuantizer(8)
    real = torch.where(indices_to_bits(torch.arange(256), 8), 1.0, -1.0) * 10.0
    padding = torch.randn(256, 8) * 0.01 + 0.001
    z = torch.cat([real, padding]).view(2, 256, 8)
    mask = torch.tensor([True, False])[:, None].expand(2, 256)
    masked, alone = q(z, mask), q(real)
    for term in ("loss", "commit_loss", "sample_entropy", "codebook_entropy", "bit_balance"):
        torch.testing.assert_close(getattr(masked, term), getattr(alone, term), msg=term)
    assert q(z).sample_entropy > 1.5 * alone.sample_entropy  # unmasked, the padding counts


def test_window_term_refuses_latents_without_windows():
    with pytest.raises(ValueError, match="windows, patches"):
        BinarySphericalQuantizer(8, gamma_window=1.0)(torch.randn(16, 8))

def test_grouped_codebook_entropy_sees_copied_bits():
    """Two bits that always agree are each balanced, so per-bit entropy calls them perfect; the
    entropy of their joint patterns (2 of 4 used) is half that. Independent balanced bits score
    ln 2 per bit either way. (A high inverse temperature makes the soft bits crisp.)"""
    per_bit = BinarySphericalQuantizer(8, inv_temperature=10.0)
    grouped = BinarySphericalQuantizer(8, inv_temperature=10.0, group_size=2)
    independent = torch.where(indices_to_bits(torch.arange(256), 8), 1.0, -1.0) * 10.0
    copied = independent.clone()
    copied[:, 1::2] = copied[:, 0::2]  # bit 2k+1 repeats bit 2k
    for q in (per_bit, grouped):
        assert q(independent).codebook_entropy > 0.99 * math.log(2)
    assert per_bit(copied).codebook_entropy > 0.99 * math.log(2)
    torch.testing.assert_close(grouped(copied).codebook_entropy, torch.tensor(math.log(2) / 2), atol=1e-3, rtol=0)
    z = torch.randn(4, 8, requires_grad=True)
    grouped(z).loss.backward()
    assert torch.isfinite(z.grad).all()


def test_group_size_must_divide_the_bits():
    with pytest.raises(ValueError, match="divide"):
        BinarySphericalQuantizer(36, group_size=5)


def test_window_term_asks_each_window_to_use_both_values_of_every_bit():
    """Two windows that are each all ones or all zeros balance the batch as well as two windows
    that each hold every pattern, so only the per-window term tells them apart: with it, the
    sorted batch costs about ln 2 more per unit weight. Padding does not count."""
    patterns = torch.where(indices_to_bits(torch.arange(256), 8), 1.0, -1.0) * 10.0  # every pattern once
    mixed = torch.stack([patterns, patterns.flip(0)])
    ones = torch.full((256, 8), 10.0)
    sorted_ = torch.stack([ones, -ones])
    plain = BinarySphericalQuantizer(8, inv_temperature=10.0)
    windowed = BinarySphericalQuantizer(8, inv_temperature=10.0, gamma_window=1.0)
    torch.testing.assert_close(plain(mixed).loss, plain(sorted_).loss)
    extra = windowed(sorted_).loss - windowed(mixed).loss
    assert 0.98 * math.log(2) < extra <= math.log(2) + 1e-4
    # half of each window is padding that repeats the other half's opposite: masked out, each
    # window's real half is all ones or all zeros, which the term sees.
    padded = torch.stack([torch.cat([ones[:128], -ones[:128]]), torch.cat([-ones[:128], ones[:128]])])
    mask = torch.arange(256)[None, :].expand(2, 256) < 128
    assert windowed(padded, mask).loss - windowed(padded).loss > 0.98 * math.log(2)
