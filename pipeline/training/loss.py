"""The deep-supervision training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def deep_supervision_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    target: torch.Tensor,
    aux_weight: float = 0.4,
    ignore_index: int | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``CE(out) + aux_weight * CE(aux1) + aux_weight * CE(aux2)``, mean over the non-ignored pixels.

    ``outputs``: three logit tensors ``(B, K, H, W)``; ``target``: ``(B, H, W)`` int64 class codes, with
    ``ignore_index`` (e.g. 255) marking pixels that count nowhere; ``class_weights``: ``(K,)`` float weights
    of the classes in the cross-entropy (None: all 1, as in the paper), the mean then weighted the same way.
    """
    out, aux1, aux2 = outputs
    ii = -100 if ignore_index is None else ignore_index
    ce = [F.cross_entropy(o.float(), target, weight=class_weights, ignore_index=ii) for o in (out, aux1, aux2)]
    return ce[0] + aux_weight * (ce[1] + ce[2])
