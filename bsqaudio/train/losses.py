"""Training losses: mel reconstruction, SpecAugment, and an optional PatchGAN discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsqaudio.train.metrics import real_frame_mask


def reconstruction_loss(pred_btf: torch.Tensor, target_btf: torch.Tensor, kind: str,
                        frames_b: torch.Tensor | None = None) -> torch.Tensor:
    """MSE (the seed's) or L1 in the normalized dB domain (dB / 40), over the first
    ``frames_b`` frames of each window (the real audio; the padding after it is never kept).
    The mask weights the mean rather than gathering, so a GPU step does not wait on the host."""
    if kind not in ("mse", "l1"):
        raise ValueError(f"unknown reconstruction loss {kind!r}")
    diff = pred_btf.float() - target_btf.float()
    error = diff ** 2 if kind == "mse" else diff.abs()
    if frames_b is None:
        return error.mean()
    real = real_frame_mask(frames_b, error.shape[1]).to(error.dtype)[:, :, None]
    return (error * real).sum() / (real.sum() * error.shape[2]).clamp_min(1.0)


def spec_augment(mel_btf: torch.Tensor, generator: torch.Generator, time_masks: int,
                 time_width: int, freq_masks: int, freq_width: int) -> torch.Tensor:
    """Mask random time and frequency bands of the encoder input with silence (-1).

    Masks are drawn on the CPU generator so a resumed run draws the same ones."""
    out = mel_btf.clone()
    b, t, f = out.shape
    for i in range(b):
        for _ in range(time_masks):
            width = int(torch.randint(0, time_width + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, t - width), (1,), generator=generator))
            out[i, start: start + width, :] = -1.0
        for _ in range(freq_masks):
            width = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, f - width), (1,), generator=generator))
            out[i, :, start: start + width] = -1.0
    return out


class PatchDiscriminator(nn.Module):
    """PatchGAN on the (B, T, F) mel: a real/fake logit per receptive-field patch."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(layers - 1):
            blocks += [nn.Conv2d(width, width * 2, 4, 2, 1), nn.GroupNorm(8, width * 2),
                       nn.LeakyReLU(0.2)]
            width *= 2
        blocks.append(nn.Conv2d(width, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, mel_btf: torch.Tensor) -> torch.Tensor:
        return self.net(mel_btf.unsqueeze(1))


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(recon: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """Scale the adversarial term so its gradient at the last layer matches the reconstruction's
    (as in VQGAN): the GAN then neither vanishes nor swamps the reconstruction."""
    recon_grad = torch.autograd.grad(recon, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (recon_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
