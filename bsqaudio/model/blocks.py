"""Transformer blocks of the encoder and decoder: attention, Conformer convolution, feed-forward.

Pre-LayerNorm residual blocks, each residual branch scaled by a learned per-channel factor
(LayerScale) so that deep stacks start close to the identity and train stably.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class LayerScale(nn.Module):
    def __init__(self, width: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((width,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (fused kernels)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        b, n, d = x_bnd.shape
        q, k, v = self.qkv(x_bnd).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class ConvModule(nn.Module):
    """Conformer convolution: pointwise -> GLU -> depthwise -> BatchNorm -> SiLU -> pointwise.

    It runs along time, separately for each frequency row of the patch grid: the seed adds it for
    local temporal structure, which the flattened time-major sequence would interleave with
    frequency neighbours.

    With ``token_layout_inference``, CPU inference runs the same arithmetic on the tokens' own
    layout (``_token_layout``), without transposing copies: 33-42 -> 14-19 ms a block for 8 windows
    (docs/benchmarks.md). Its result differs from the reference formulation in float rounding
    (about 1e-6). The decoder uses it; the encoder does not, because rounding at a bit's
    threshold flips codes (1 bit in 7.4 million, measured), and a file's codes must not change
    between versions.
    """

    def __init__(self, width: int, kernel: int, grid_time: int, grid_freq: int,
                 token_layout_inference: bool = False) -> None:
        super().__init__()
        self.grid_time = grid_time
        self.grid_freq = grid_freq
        self.token_layout_inference = token_layout_inference
        self.pointwise_in = nn.Conv1d(width, 2 * width, 1)
        self.depthwise = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.norm = nn.BatchNorm1d(width)
        self.pointwise_out = nn.Conv1d(width, width, 1)

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        if self.token_layout_inference and not self.training and x_bnd.device.type == "cpu":
            return self._token_layout(x_bnd)
        b, n, d = x_bnd.shape
        # (B, T*F, D) time-major -> (B*F, D, T): one sequence per frequency row.
        x = x_bnd.view(b, self.grid_time, self.grid_freq, d).permute(0, 2, 3, 1)
        x = x.reshape(b * self.grid_freq, d, self.grid_time)
        x = F.glu(self.pointwise_in(x), dim=1)
        x = F.silu(self.norm(self.depthwise(x)))
        x = self.pointwise_out(x)
        return x.view(b, self.grid_freq, d, self.grid_time).permute(0, 3, 1, 2).reshape(b, n, d)

    def _token_layout(self, x_bnd: torch.Tensor) -> torch.Tensor:
        """``forward`` in eval mode, (B, N, D) -> (B, N, D): the pointwise convolutions as matmuls
        over the tokens, and the depthwise one as a (kernel x 1) convolution of the tokens seen
        as (B, D, T, F), which is their (B, T, F, D) memory in channels-last order."""
        b, n, d = x_bnd.shape
        x = F.glu(F.linear(x_bnd, self.pointwise_in.weight[:, :, 0], self.pointwise_in.bias), dim=-1)
        x = x.view(b, self.grid_time, self.grid_freq, d).permute(0, 3, 1, 2)
        x = F.conv2d(x, self.depthwise.weight.unsqueeze(-1), self.depthwise.bias,
                     padding=(self.depthwise.padding[0], 0), groups=d)
        norm = self.norm
        x = F.silu(F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                training=False, eps=norm.eps))
        x = x.permute(0, 2, 3, 1).reshape(b, n, d)
        return F.linear(x, self.pointwise_out.weight[:, :, 0], self.pointwise_out.bias)


class FeedForward(nn.Sequential):
    # At inference, tokens go through in groups of this many, so that the hidden activation
    # (tokens x 4 x width floats: 16 MB for a batch of 8 windows) stays in the CPU's caches
    # between the two matmuls and the GELU; each token's arithmetic is unchanged.
    INFERENCE_TOKENS = 512

    def __init__(self, width: int, ratio: float) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.cat([super(FeedForward, self).forward(part) for part in flat.split(self.INFERENCE_TOKENS)])
        return out.view(*x.shape[:-1], out.shape[-1])


class Block(nn.Module):
    """x + s1*attn(LN x); x + s2*conv(LN x) (optional); x + s3*ffn(LN x). Shapes (B, N, D)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, layer_scale_init: float,
                 conv_kernel: int | None, grid_time: int, grid_freq: int,
                 token_layout_inference: bool = False) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.attn_scale = LayerScale(width, layer_scale_init)
        self.conv = None
        if conv_kernel is not None:
            self.conv_norm = nn.LayerNorm(width)
            self.conv = ConvModule(width, conv_kernel, grid_time, grid_freq, token_layout_inference)
            self.conv_scale = LayerScale(width, layer_scale_init)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = FeedForward(width, mlp_ratio)
        self.ffn_scale = LayerScale(width, layer_scale_init)

    def _attention(self, x_bnd: torch.Tensor) -> torch.Tensor:
        return x_bnd + self.attn_scale(self.attn(self.attn_norm(x_bnd)))

    def _feed_forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        return x_bnd + self.ffn_scale(self.ffn(self.ffn_norm(x_bnd)))

    def forward(self, x_bnd: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
        """With ``grad_checkpointing``, attention and FFN activations are recomputed in backward;
        the convolution module is not, since recomputing would update BatchNorm's running
        statistics a second time."""
        if grad_checkpointing:
            x = checkpoint(self._attention, x_bnd, use_reentrant=False)
        else:
            x = self._attention(x_bnd)
        if self.conv is not None:
            x = x + self.conv_scale(self.conv(self.conv_norm(x)))
        if grad_checkpointing:
            return checkpoint(self._feed_forward, x, use_reentrant=False)
        return self._feed_forward(x)
