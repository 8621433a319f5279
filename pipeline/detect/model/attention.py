"""Attention blocks: the convolutional cross-attention module (CAM) and ECA + spatial attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttentionBlock(nn.Module):
    """One convolutional cross-attention block.

    ``x (B, dim, H, W)`` attends globally over ``context (B, context_dim, H, W)``: 1x1-conv projections with
    bias, ``heads`` contiguous channel groups of ``dim // heads``, softmax over all H*W keys scaled by
    ``1/sqrt(dim // heads)``, 1x1 output projection and a residual to ``x``. No norm, FFN or dropout.
    Returns ``(B, dim, H, W)``.
    """

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"CAM dim {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.q = nn.Conv2d(dim, dim, 1)
        self.k = nn.Conv2d(context_dim, dim, 1)
        self.v = nn.Conv2d(context_dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)

    def _tokens(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        return t.reshape(b, self.heads, c // self.heads, h * w).transpose(-1, -2)  # (B, heads, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self._tokens(self.q(x)), self._tokens(self.k(context)), self._tokens(self.v(context))
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.out(o.transpose(-1, -2).reshape(b, c, h, w)) + x


class CrossAttention(nn.Module):
    """``depth`` cross-attention blocks in sequence, each attending to the same context."""

    def __init__(self, dim: int, context_dim: int, heads: int = 4, depth: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([CrossAttentionBlock(dim, context_dim, heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context)
        return x


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """The ECA adaptive kernel rule: odd ``|log2(C)/gamma + b|``, at least 3 (C=512 gives 5)."""
    t = int(abs(math.log2(channels) / gamma + b))
    return max(3, t if t % 2 else t + 1)


class ECA(nn.Module):
    """Efficient channel attention: GAP -> Conv1d over channels (no bias) -> sigmoid -> scale. Shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean(dim=(2, 3)).unsqueeze(1)).squeeze(1).sigmoid()
        return x * y[:, :, None, None]


class SpatialAttention(nn.Module):
    """``x * sigmoid(conv7x7([mean_c(x); max_c(x)]))`` with a bias-free 2->1 conv. Shape-preserving."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.conv(m).sigmoid()


class CombinedAttention(nn.Module):
    """Channel then spatial attention with a residual: ``SA(ECA(x)) + x``. Shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.eca = ECA(channels)
        self.sa = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(self.eca(x)) + x
