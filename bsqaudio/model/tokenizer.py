"""The tokenizer: normalized log-mel window -> L-bit code per patch -> reconstructed log-mel.

Input and output are normalized spectrograms ``mel_btf`` of shape (B, T, F) = (B, 1024, 128) with
values in [-1, 1] (dB / 40 + 1, so -80 dB is -1 and the window's peak is +1); see
``bsqaudio.dsp.mel``. Patches are ``patch_time`` x ``patch_freq``, ordered time-major: patch
``t * grid_freq + f`` covers frames ``t*pt .. (t+1)*pt`` and mel bins ``f*pf .. (f+1)*pf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bsqaudio.model.blocks import Block
from bsqaudio.model.config import ModelConfig
from bsqaudio.model.quantizer import BinarySphericalQuantizer, QuantizerOutput, indices_to_codes


def patchify(mel_btf: torch.Tensor, patch_time: int, patch_freq: int) -> torch.Tensor:
    """(B, T, F) -> (B, N, pt*pf), N = (T/pt) * (F/pf), time-major."""
    b, t, f = mel_btf.shape
    x = mel_btf.view(b, t // patch_time, patch_time, f // patch_freq, patch_freq)
    return x.permute(0, 1, 3, 2, 4).reshape(b, (t // patch_time) * (f // patch_freq), -1)


def unpatchify(patches_bnp: torch.Tensor, patch_time: int, patch_freq: int,
               grid_time: int, grid_freq: int) -> torch.Tensor:
    """(B, N, pt*pf) -> (B, T, F); the inverse of ``patchify``."""
    b = patches_bnp.shape[0]
    x = patches_bnp.reshape(b, grid_time, grid_freq, patch_time, patch_freq)
    return x.permute(0, 1, 3, 2, 4).reshape(b, grid_time * patch_time, grid_freq * patch_freq)


class Transformer(nn.Module):
    """``depth`` blocks and a final LayerNorm, (B, N, D) -> (B, N, D); ``token_layout_inference``
    as in ``ConvModule`` (the decoder's, not the encoder's: codes must not change)."""

    def __init__(self, config: ModelConfig, depth: int, token_layout_inference: bool = False) -> None:
        super().__init__()
        kernel = config.conv_kernel if config.conv else None
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, config.layer_scale_init, kernel,
                  config.grid_time, config.grid_freq, token_layout_inference)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.grad_checkpointing = False

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x_bnd = block(x_bnd, grad_checkpointing=self.grad_checkpointing and self.training)
        return self.norm(x_bnd)


class Refiner(nn.Module):
    """A residual 3x3 conv stack over the whole spectrogram that smooths patch borders."""

    # Inference runs the stack on strips of this many frames (plus a halo of context on each
    # side): a strip's 32 activation planes (~4 MB) stay in the CPU's caches, where a whole
    # window's (~17 MB per layer) went to memory and back between layers (docs/benchmarks.md).
    STRIP_FRAMES = 256

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def last_layer_weight(self) -> torch.Tensor:
        return self.net[-1].weight

    def forward(self, mel_btf: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return mel_btf + self.net(mel_btf.unsqueeze(1)).squeeze(1)
        # Inference: strip by strip, since whole-batch activations (channels x 1024 x 128 floats
        # per window and layer) dominate decode memory and spill out of the caches; and
        # channels-last, which runs the 32 -> 32 convolution near the CPU's matmul peak
        # (docs/benchmarks.md). A strip is cut with as many frames of real context on both sides
        # as the convolutions reach together (their paddings: 3 for three 3x3), so its inner
        # frames see exactly what they see in the whole spectrogram; the zero padding at a
        # strip's cut edge only reaches its halo, which is dropped. A 1-channel
        # weight's layout is ambiguous, so the first layer's weight is given channels-last
        # strides explicitly: they decide the layout every later activation keeps.
        weights = {i: layer.weight.to(memory_format=torch.channels_last)
                   for i, layer in enumerate(self.net) if isinstance(layer, nn.Conv2d)}
        halo = sum(layer.padding[0] for layer in self.net if isinstance(layer, nn.Conv2d))
        frames = mel_btf.shape[1]
        out = torch.empty_like(mel_btf)
        for b in range(mel_btf.shape[0]):
            for start in range(0, frames, self.STRIP_FRAMES):
                end = min(start + self.STRIP_FRAMES, frames)
                lo, hi = max(start - halo, 0), min(end + halo, frames)
                x = mel_btf[b: b + 1, None, lo:hi].contiguous(memory_format=torch.channels_last)
                for i, layer in enumerate(self.net):
                    x = (F.conv2d(x, weights[i], layer.bias, layer.stride, layer.padding) if i in weights
                         else layer(x))
                out[b, start:end] = mel_btf[b, start:end] + x[0, 0, start - lo: end - lo]
        return out


@dataclass
class TokenizerOutput:
    reconstruction: torch.Tensor  # (B, T, F) normalized mel
    quantizer: QuantizerOutput


class AudioBSQ(nn.Module):
    """Encoder ViT -> BSQ -> decoder ViT, on normalized log-mel windows."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder_frozen = False
        c = config
        patch_dim = c.patch_time * c.patch_freq
        self.patch_embed = nn.Linear(patch_dim, c.width)
        self.encoder_pos = nn.Parameter(torch.randn(c.num_patches, c.width) * c.width ** -0.5)
        self.encoder = Transformer(c, c.encoder_layers)
        self.quant_embed = nn.Linear(c.width, c.code_bits)
        self.quantizer = BinarySphericalQuantizer(c.code_bits, inv_temperature=c.inv_temperature)
        self.post_quant_embed = nn.Linear(c.code_bits, c.width)
        self.decoder_pos = nn.Parameter(torch.randn(c.num_patches, c.width) * c.width ** -0.5)
        self.decoder = Transformer(c, c.decoder_layers, token_layout_inference=True)
        self.head = nn.Linear(c.width, patch_dim)
        self.refiner = Refiner(c.refine_channels) if c.refine_channels else None
        self.apply(_init_weights)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        self.encoder.grad_checkpointing = enabled
        self.decoder.grad_checkpointing = enabled

    def latents(self, mel_btf: torch.Tensor) -> torch.Tensor:
        """(B, T, F) normalized mel -> (B, N, L) quantizer inputs: the sign of each is a code bit,
        so ``quant_embed``'s bias sets every bit's threshold (see ``train.calibration``)."""
        c = self.config
        x = self.patch_embed(patchify(mel_btf, c.patch_time, c.patch_freq)) + self.encoder_pos
        return self.quant_embed(self.encoder(x))

    def encode(self, mel_btf: torch.Tensor, token_mask: torch.Tensor | None = None) -> QuantizerOutput:
        """(B, T, F) normalized mel -> quantizer output with indices (B, N); ``token_mask``
        (B, N) marks the patches the quantizer's bit-balance term counts (training)."""
        return self.quantizer(self.latents(mel_btf), token_mask)

    def encoder_modules(self) -> list[nn.Module]:
        """Everything that decides the codes; ``freeze_encoder`` fixes them while the decoder
        trains."""
        return [self.patch_embed, self.encoder, self.quant_embed]

    def freeze_encoder(self) -> None:
        """Fix the codes: no gradients into the encoder side, and its BatchNorm statistics stay
        as they are (``train()`` leaves those modules in eval mode)."""
        self.encoder_frozen = True
        self.encoder_pos.requires_grad_(False)
        for module in self.encoder_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> AudioBSQ:
        super().train(mode)
        if self.encoder_frozen:
            for module in self.encoder_modules():
                module.eval()
        return self

    def last_decoder_layer(self) -> torch.Tensor:
        """The weight of the decoder's last layer: where an adversarial term's gradient is
        compared with the reconstruction's (VQGAN's adaptive weight)."""
        return self.refiner.last_layer_weight() if self.refiner is not None else self.head.weight

    def decode_codes(self, codes_bnl: torch.Tensor) -> torch.Tensor:
        """(B, N, L) codes -> (B, T, F) normalized mel in [-1, 1] at inference."""
        c = self.config
        x = self.decoder(self.post_quant_embed(codes_bnl) + self.decoder_pos)
        mel = unpatchify(self.head(x), c.patch_time, c.patch_freq, c.grid_time, c.grid_freq)
        if self.refiner is not None:
            mel = self.refiner(mel)
        return mel if self.training else mel.clamp(-1.0, 1.0)

    def decode_indices(self, indices_bn: torch.Tensor) -> torch.Tensor:
        """(B, N) int64 -> (B, T, F) normalized mel."""
        codes = indices_to_codes(indices_bn, self.config.code_bits)
        return self.decode_codes(codes.to(self.post_quant_embed.weight.dtype))

    def forward(self, mel_btf: torch.Tensor, token_mask: torch.Tensor | None = None) -> TokenizerOutput:
        quantized = self.encode(mel_btf, token_mask)
        return TokenizerOutput(self.decode_codes(quantized.codes), quantized)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
