"""Training losses: mel reconstruction and SpecAugment (the GAN's are in ``train.gan``)."""

from __future__ import annotations

import torch

from bsqaudio.train.validation import real_frame_mask


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
