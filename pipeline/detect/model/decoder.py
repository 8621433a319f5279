"""Transposed-convolution decoder with deep-supervision heads (no skip connections, as coded by the authors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.detect.model.norm import norm_layer


def _up(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), norm_layer(norm, cout), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """Stages of ConvTranspose2d(2, stride 2) + BN + ReLU, then 1x1 heads.

    ``(B, cin, h, w) -> out (B, num_classes, h*2^S, w*2^S)`` for S stages. In training it also returns the
    auxiliary logits of stage 1 and stage 2 upsampled to the output size. The auxiliary 1x1 heads run before
    the bilinear upsampling: the two commute, and the low-resolution order is cheaper.
    """

    def __init__(self, cin: int, channels: tuple[int, ...], num_classes: int, norm: str = "batch") -> None:
        super().__init__()
        dims = (cin, *channels)
        self.stages = nn.ModuleList([_up(a, b, norm) for a, b in zip(dims[:-1], dims[1:])])
        self.aux1 = nn.Conv2d(channels[0], num_classes, 1)
        self.aux2 = nn.Conv2d(channels[1], num_classes, 1)
        self.head = nn.Conv2d(channels[-1], num_classes, 1)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        out = self.head(x)
        if not with_aux:
            return out
        size = out.shape[-2:]
        aux = [
            F.interpolate(h(f), size=size, mode="bilinear", align_corners=False)
            for h, f in ((self.aux1, feats[0]), (self.aux2, feats[1]))
        ]
        return out, aux[0], aux[1]
