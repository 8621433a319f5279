"""MSCloudCAM: Swin-T -> (ASPP on f4, PSP on f3) -> cross-attention fusion -> bottleneck -> ECA + spatial
attention -> transposed-conv decoder with deep supervision.

Reads top-down: the assembled network, then the named variants registered with :mod:`.registry`.
Layer-by-layer reference: ``docs/mscloudcam.md`` (47,446,157 parameters at 13 bands).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.detect.model.attention import CombinedAttention, CrossAttention
from pipeline.detect.model.backbone import SwinBackbone
from pipeline.detect.model.context import ASPP, PSP
from pipeline.detect.model.decoder import Decoder
from pipeline.detect.model.registry import register_model


class MSCloudCAM(nn.Module):
    """The MSCloudCAM segmentation network.

    Input ``(B, in_chans, img_size, img_size)`` float (DN / 3000). Output in eval mode: logits
    ``(B, num_classes, img_size, img_size)``; in training mode ``(out, aux1, aux2)``, all that shape.

    ``cam_bypass=True`` reproduces the authors' published code, whose forward pass computes the
    cross-attention and discards it (``bottleneck(X)``); the CAM parameters exist but are not applied, so they
    get no gradient. The default wires the CAM in as the paper describes (``bottleneck(CAM(X, P))``).
    ``norm="group"`` puts GroupNorm where the paper has BatchNorm (same parameters; see ``model/norm.py``).
    """

    def __init__(
        self,
        in_chans: int = 13,
        num_classes: int = 4,
        cam_bypass: bool = False,
        img_size: int = 512,
        *,
        context_channels: int = 384,
        cam_heads: int = 4,
        cam_depth: int = 1,
        bottleneck_channels: tuple[int, int] = (256, 512),
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32),
        aspp_rates: tuple[int, ...] = (6, 12, 18),
        psp_bins: tuple[int, ...] = (1, 2, 3, 6),
        backbone_arch: str = "swin_tiny_patch4_window7_224",
        backbone_kwargs: dict | None = None,
        backbone_checkpoint: str | Path | None = None,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.img_size = in_chans, num_classes, img_size
        self.cam_bypass = cam_bypass
        self.backbone = SwinBackbone(
            in_chans,
            img_size,
            backbone_arch,
            out_indices=(2, 3),
            checkpoint=backbone_checkpoint,
            **(backbone_kwargs or {}),
        )
        c3, c4 = self.backbone.channels
        r3, r4 = self.backbone.reductions
        if (r3, r4) != (16, 32) or 2 ** len(decoder_channels) != r3:
            raise ValueError(f"backbone reductions {(r3, r4)} do not match a {len(decoder_channels)}-stage decoder")
        ctx = context_channels
        self.aspp = ASPP(c4, ctx, aspp_rates, norm=norm)
        self.psp = PSP(c3, ctx, psp_bins, norm=norm)
        self.cam = CrossAttention(2 * ctx, ctx, heads=cam_heads, depth=cam_depth)
        mid, out = bottleneck_channels
        self.bottleneck = nn.Sequential(
            nn.Conv2d(2 * ctx, mid, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out, 1),
            nn.ReLU(inplace=True),
        )
        self.refine = CombinedAttention(out)
        self.decoder = Decoder(out, decoder_channels, num_classes, norm=norm)

    def forward(self, x: torch.Tensor):
        f3, f4 = self.backbone(x)
        p = self.psp(f3)
        a = F.interpolate(self.aspp(f4), size=f3.shape[-2:], mode="bilinear", align_corners=False)
        fused = torch.cat([a, p], dim=1)  # ASPP first, as coded
        if not self.cam_bypass:
            fused = self.cam(fused, p)
        return self.decoder(self.refine(self.bottleneck(fused)), with_aux=self.training)


@register_model("mscloudcam")
def mscloudcam(in_chans: int = 13, num_classes: int = 4, cam_bypass: bool = False, **kwargs) -> MSCloudCAM:
    """The paper's model: Swin-T backbone, 512x512 tiles (47,446,157 params at 13 bands)."""
    return MSCloudCAM(in_chans=in_chans, num_classes=num_classes, cam_bypass=cam_bypass, **kwargs)


@register_model("mscloudcam_tiny")
def mscloudcam_tiny(in_chans: int = 13, num_classes: int = 4, cam_bypass: bool = False, **kwargs) -> MSCloudCAM:
    """Same graph, a few thousand times cheaper, 64x64 tiles by default: for tests and smoke runs only."""
    defaults = dict(
        img_size=64,
        context_channels=16,
        bottleneck_channels=(16, 32),
        decoder_channels=(16, 16, 8, 8),
        backbone_kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
    )
    defaults.update(kwargs)
    return MSCloudCAM(in_chans=in_chans, num_classes=num_classes, cam_bypass=cam_bypass, **defaults)
