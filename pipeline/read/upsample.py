"""Bands read at their native resolution brought onto the scene's grid: a fixed bilinear kernel in exact integers.

A band whose pixels are ``f`` times the scene's (Sentinel-2's 20 m and 60 m bands on the 10 m grid: f = 2, 6) is
upsampled with the pixel-centre bilinear kernel: scene pixel ``i`` samples the band at ``(i + 0.5) / f - 0.5``
(band pixels, from the band's origin), edges clamped. In units of ``1 / (2 f)`` that position is the integer
``2 i + 1 - f``, so both weights are integers summing to ``2 f`` and a value is ``sum(w v) / (2 f)**2`` rounded half
up -- exact integer arithmetic, the same on any device and for any window, so masks never depend on how a scene is
cut into blocks. Source pixels that are nodata (0) carry no weight (the others are renormalised, as GDAL's bilinear
warp does); a scene pixel is nodata where the band pixel containing it is nodata or lies outside the band's file.

Everything runs in torch on the device the model uses (``int32``), so on a GPU worker the CPU only decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where a block is upsampled: planning uses the spans and axes alone
    import torch


@dataclass(frozen=True)
class Axis:
    """How one axis of a band's file lies on the scene grid: scene pixel ``i`` is in file pixel
    ``(i + shift) // factor``; the file has ``size`` pixels along it. ``factor`` 1: the scene's own resolution."""

    factor: int
    shift: int
    size: int

    def contains(self, i: np.ndarray) -> np.ndarray:
        """The file pixel containing each scene pixel ``i`` (may lie outside ``0..size-1``)."""
        return (np.asarray(i) + self.shift) // self.factor

    def source(self, start: int, stop: int) -> tuple[int, int]:
        """The file pixels ``[a, b)`` that scene pixels ``[start, stop)`` need (their kernel and their own pixel),
        clipped to the file; ``(0, 0)`` when none of them lies over the file."""
        f = self.factor
        first = (2 * (start + self.shift) + 1 - f) // (2 * f)  # the kernel's lower pixel of the first scene pixel
        end = 2 * (stop - 1 + self.shift) + 1 - f
        last = end // (2 * f) + (1 if end % (2 * f) else 0)  # and the upper one of the last, where it weighs
        a, b = max(0, first), min(self.size, last + 1)
        return (a, b) if b > a else (0, 0)


@dataclass(frozen=True)
class Span:
    """Scene pixels ``[start, stop)`` along one axis, read from file pixels ``[src_start, src_stop)`` of ``axis``."""

    axis: Axis
    start: int
    stop: int
    src_start: int
    src_stop: int

    @classmethod
    def of(cls, axis: Axis, start: int, stop: int) -> Span:
        return cls(axis, start, stop, *axis.source(start, stop))

    def kernel(self, device) -> tuple:
        """``(lo, hi, w_lo, w_hi, own, inside)`` tensors over the span's scene pixels: the two window indices the
        kernel reads (int64), their integer weights (int32, summing to ``2 f``), the index of each pixel's own file
        pixel in the window and whether that pixel lies in the file (bool)."""
        f, n = self.axis.factor, self.src_stop - self.src_start
        i = np.arange(self.start, self.stop, dtype=np.int64) + self.axis.shift
        num = 2 * i + 1 - f
        lo = num // (2 * f)
        w_hi = num - 2 * f * lo
        own = i // f
        inside = (own >= 0) & (own < self.axis.size) & (n > 0)
        last = max(n - 1, 0)
        lo_w = np.clip(lo - self.src_start, 0, last)
        hi_w = np.clip(lo + 1 - self.src_start, 0, last)
        own_w = np.clip(own - self.src_start, 0, last)
        import torch

        to = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a, dtype=dt)).to(device)  # noqa: E731
        return (
            to(lo_w, np.int64),
            to(hi_w, np.int64),
            to(2 * f - w_hi, np.int32),
            to(w_hi, np.int32),
            to(own_w, np.int64),
            to(inside, np.bool_),
        )


def _separable(src: torch.Tensor, ky: tuple, kx: tuple) -> torch.Tensor:
    """``sum(w_y w_x v)`` over each scene pixel's four file pixels: (ny, nx) int32 (columns first, on the smaller
    array)."""
    lo, hi, wlo, whi = kx[:4]
    cols = src.index_select(1, lo) * wlo
    cols += src.index_select(1, hi) * whi
    lo, hi, wlo, whi = ky[:4]
    out = cols.index_select(0, lo) * wlo[:, None]
    out += cols.index_select(0, hi) * whi[:, None]
    return out


def upsample(src: torch.Tensor, y: Span, x: Span, nodata: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A band window ``src (file rows of y, file columns of x)`` (int32, nodata 0) on the scene pixels of ``y`` and
    ``x``: ``(values (ny, nx) int32, valid (ny, nx) bool)``; values are 0 where not valid. ``nodata``: whether
    ``src`` may hold nodata (False when the caller knows it holds none: skips the renormalisation)."""
    import torch

    device = src.device
    ny, nx = y.stop - y.start, x.stop - x.start
    if src.numel() == 0:  # the window lies wholly off the file
        return torch.zeros((ny, nx), dtype=torch.int32, device=device), torch.zeros(
            (ny, nx), dtype=torch.bool, device=device
        )
    ky, kx = y.kernel(device), x.kernel(device)
    own = src.index_select(0, ky[4]).index_select(1, kx[4])
    valid = (own != 0) & ky[5][:, None] & kx[5][None, :]
    if y.axis.factor == 1 and x.axis.factor == 1:
        values = own
    else:
        num = _separable(src, ky, kx)
        if nodata:  # renormalise over the valid source pixels
            weight = _separable((src != 0).to(torch.int32), ky, kx)
            values = torch.div(2 * num + weight, 2 * weight.clamp(min=1), rounding_mode="floor")
        else:
            d = 4 * y.axis.factor * x.axis.factor
            values = torch.div(num + d // 2, d, rounding_mode="floor")
    return torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=device)), valid
