"""Quicklook PNGs: a scene's true-colour image beside the same image with its cloud mask drawn over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputError

# RGBA overlay per class code; clear is left transparent
COLOURS = {1: (255, 255, 0, 150), 2: (0, 255, 255, 120), 3: (255, 0, 255, 150)}  # thick, thin, shadow
LEGEND = "left: true colour (B04, B03, B02); right: thick cloud yellow, thin cloud cyan, shadow magenta, nodata grey"


def true_colour(rgb_dn: np.ndarray, top: float = 3000.0) -> np.ndarray:
    """``rgb_dn (3, y, x)`` L1C DN (B04, B03, B02) -> ``(y, x, 3)`` uint8 with a square-root stretch to ``top``."""
    x = np.clip(np.asarray(rgb_dn, np.float32) / top, 0, 1)
    return (np.sqrt(x) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def write_quicklook(path: str | Path, rgb_dn: np.ndarray, mask: np.ndarray, max_side: int = 1024) -> Path:
    """Write the PNG for ``rgb_dn (3, y, x)`` and ``mask (y, x)`` uint8 (0..3, 255 nodata), downsampled by
    nearest neighbour so its longer side is at most ``max_side`` per panel."""
    from PIL import Image

    if rgb_dn.shape[1:] != mask.shape:
        raise InputError(f"image {rgb_dn.shape[1:]} and mask {mask.shape} differ in shape")
    step = max(1, int(np.ceil(max(mask.shape) / max_side)))
    base = Image.fromarray(true_colour(rgb_dn[:, ::step, ::step]))
    m = mask[::step, ::step]
    overlay = np.zeros((*m.shape, 4), np.uint8)
    for code, colour in COLOURS.items():
        overlay[m == code] = colour
    overlay[m == 255] = (128, 128, 128, 255)
    masked = Image.alpha_composite(base.convert("RGBA"), Image.fromarray(overlay, "RGBA")).convert("RGB")
    out = Image.new("RGB", (base.width * 2 + 8, base.height), (255, 255, 255))
    out.paste(base, (0, 0))
    out.paste(masked, (base.width + 8, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, optimize=True)
    return path
