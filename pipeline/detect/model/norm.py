"""The normalisation layer after each convolution: BatchNorm as in the paper, or GroupNorm.

GroupNorm normalises each sample by itself, so training and inference behave alike at any batch size; the
starter weights use it because BatchNorm trained from scratch at batch 8 gave eval-mode predictions far from
train-mode ones (docs/training-log.md, "History"). Both have the same learnable parameters (a scale and a shift per
channel), so parameter counts are unchanged.
"""

from __future__ import annotations

import math

from torch import nn

NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``BatchNorm2d(channels)`` or ``GroupNorm(gcd(32, channels), channels)``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm={kind!r}; expected one of {NORMS}")
