"""Multi-scale context extractors: ASPP (on f4) and PSP (on f3), as coded by the MSCloudCAM authors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.detect.model.norm import norm_layer


def _conv_bn_relu(cin: int, cout: int, kernel: int, bias: bool, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias), norm_layer(norm, cout), nn.ReLU(inplace=True)
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling.

    ``(B, cin, H, W) -> (B, cout, H, W)``. Five parallel branches with bias and no BN/ReLU (1x1; 3x3 at each
    rate; image pooling + 1x1 upsampled back), concatenated and fused by 1x1 conv + BN + ReLU.
    """

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18), norm: str = "batch") -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Conv2d(cin, cout, 1)] + [nn.Conv2d(cin, cout, 3, padding=r, dilation=r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1))
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout, 1, bias=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = F.interpolate(self.pool(x), size=size, mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class PSP(nn.Module):
    """Pyramid scene parsing module.

    ``(B, cin, H, W) -> (B, cout, H, W)``. Each bin: adaptive average pool -> 1x1 conv (no bias) -> BN -> ReLU
    -> bilinear upsample; ``[x, *stages]`` concatenated and fused by a 3x3 conv (bias) + BN + ReLU.
    """

    def __init__(self, cin: int, cout: int, bins: tuple[int, ...] = (1, 2, 3, 6), norm: str = "batch") -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(b), _conv_bn_relu(cin, cout, 1, bias=False, norm=norm)) for b in bins]
        )
        self.fuse = _conv_bn_relu(cin + cout * len(bins), cout, 3, bias=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.fuse(torch.cat([x, *pyramid], dim=1))
