"""Adversarial training of the decoder: a PatchGAN on the log-mel, hinge losses, feature matching.

Why: trained on reconstruction alone, the decoder predicts the mean of all spectrograms that share
a code, which is smooth, with smeared harmonics (the measured limit of the embedded model). A
discriminator that judges local time-frequency patches pushes the decoder towards spectrograms
that look like real ones. It runs equally on frozen codes (``--freeze-encoder``), where the
tokens keep their meaning and only their rendering improves.

Two rules keep the two players apart, and each has a test:
- the generator's adversarial and feature-matching terms go through the discriminator with its
  parameters frozen, so they reach the decoder and never the discriminator's own gradients;
- under DDP the discriminator is wrapped too, so every rank trains the same one.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN on a (B, T, F) normalized mel: a real/fake logit per receptive-field patch
    (38 frames x 38 mels for 3 layers), and the activations of each layer for feature
    matching."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2))])
        width = channels
        for _ in range(layers - 1):
            self.layers.append(nn.Sequential(nn.Conv2d(width, width * 2, 4, 2, 1), nn.GroupNorm(8, width * 2),
                                             nn.LeakyReLU(0.2)))
            width *= 2
        self.out = nn.Conv2d(width, 1, 3, 1, 1)

    def forward(self, mel_btf: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, T, F) -> logits (B, 1, T/2^layers, F/2^layers) and the per-layer features."""
        x = mel_btf.unsqueeze(1)
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return self.out(x), features


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def feature_matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the L1 distance between the discriminator's features of the decoded
    and the true spectrogram (MelGAN): a dense, stable signal beside the adversarial one."""
    return torch.stack([(f.float() - r.float()).abs().mean() for f, r in zip(fake, real, strict=True)]).mean()


def adaptive_weight(recon: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """Scale the adversarial term so its gradient at the last layer matches the reconstruction's
    (as in VQGAN): the GAN then neither vanishes nor swamps the reconstruction."""
    recon_grad = torch.autograd.grad(recon, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (recon_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def judged(pred_btf: torch.Tensor, target_btf: torch.Tensor, real_frames_bt: torch.Tensor) -> torch.Tensor:
    """What the discriminator sees of a prediction: clamped to [-1, 1] as decoding does, with the
    padding past the audio taken from the target, so only frames that hold audio can differ."""
    return torch.where(real_frames_bt[:, :, None], pred_btf.clamp(-1.0, 1.0), target_btf)


class Adversary:
    """The discriminator of a run, its optimizer, and the two halves of a GAN step."""

    def __init__(self, discriminator: PatchDiscriminator, lr: float, device: torch.device,
                 distributed: bool) -> None:
        self.core = discriminator.to(device)
        self.optimizer = torch.optim.AdamW(self.core.parameters(), lr=lr, betas=(0.5, 0.9))
        self.net: nn.Module = self.core
        if distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.core, device_ids=[device.index] if device.type == "cuda" else None)

    def generator_losses(self, fake_btf: torch.Tensor, real_btf: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hinge generator loss, feature matching) of ``fake_btf`` against ``real_btf``, through
        the unwrapped discriminator with its parameters frozen: their gradient flows into
        ``fake_btf`` only (and DDP sees no half-finished backward)."""
        self.core.requires_grad_(False)
        try:
            fake_logits, fake_features = self.core(fake_btf)
            with torch.no_grad():
                _, real_features = self.core(real_btf)
        finally:
            self.core.requires_grad_(True)
        return hinge_generator_loss(fake_logits.float()), feature_matching_loss(fake_features, real_features)

    def discriminator_backward(self, real_btf: torch.Tensor, fake_btf: torch.Tensor, scale: float,
                               sync: bool = True) -> float:
        """Accumulate the hinge loss's gradient (times ``scale``) in the discriminator; real and
        fake go through in one batch, so DDP sees one forward per backward. ``sync=False`` skips
        the all-reduce on all but the last micro-batch of an accumulation. Returns the loss."""
        no_sync = getattr(self.net, "no_sync", None)
        with contextlib.nullcontext() if sync or no_sync is None else no_sync():
            logits, _ = self.net(torch.cat([real_btf, fake_btf.detach()]))
            real_logits, fake_logits = logits.float().chunk(2)
            loss = hinge_discriminator_loss(real_logits, fake_logits)
            (loss * scale).backward()
        return float(loss.detach())

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"disc": self.core.state_dict(), "disc_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.core.load_state_dict(state["disc"])
        self.optimizer.load_state_dict(state["disc_optimizer"])
