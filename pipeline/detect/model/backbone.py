"""Swin Transformer backbone from timm, as a feature extractor returning NCHW maps."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from pipeline.errors import WeightsError


class SwinBackbone(nn.Module):
    """timm Swin built with ``features_only=True``.

    Input ``(B, in_chans, img_size, img_size)`` float; output the maps selected by ``out_indices`` as
    NCHW float tensors. For Swin-T at 512 with ``out_indices=(2, 3)``: f3 ``(B, 384, 32, 32)`` (stride 16)
    and f4 ``(B, 768, 16, 16)`` (stride 32).

    ``checkpoint`` is a local timm checkpoint of the same architecture (3-band ImageNet weights included):
    timm's own pretrained loader reads it, filters it for the architecture and adapts the RGB patch embedding
    to ``in_chans`` bands (kernels tiled R,G,B,R,... and scaled by 3/in_chans).
    """

    def __init__(
        self,
        in_chans: int,
        img_size: int,
        arch: str = "swin_tiny_patch4_window7_224",
        out_indices: tuple[int, ...] = (2, 3),
        checkpoint: str | Path | None = None,
        **arch_kwargs,
    ) -> None:
        super().__init__()
        kwargs = dict(features_only=True, out_indices=out_indices, img_size=img_size, in_chans=in_chans)
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise WeightsError(
                    f"backbone checkpoint {str(path)!r} does not exist; pass a local timm checkpoint file"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        else:
            kwargs.update(pretrained=False)
        self.body = timm.create_model(arch, **kwargs, **arch_kwargs)
        self.channels: tuple[int, ...] = tuple(self.body.feature_info.channels())
        self.reductions: tuple[int, ...] = tuple(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # timm's Swin emits NHWC; this is the one place the model converts to NCHW.
        return [f.permute(0, 3, 1, 2).contiguous() for f in self.body(x)]
