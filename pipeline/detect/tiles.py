"""Tile geometry on a scene's global pixel grid (numpy only).

Tiles of side ``tile`` start at multiples of ``stride = tile - overlap`` counted from the scene's pixel
origin, wherever the array being predicted starts. Their probabilities are blended with a fixed trapezoid
window whose ramps over the overlap sum to one, so the result in a pixel depends only on the tiles covering
it, never on where an array or Dask block begins. A block whose edges sit on multiples of the stride needs
the halo ``TileGrid.halo`` (a stride before, ``overlap`` after) for every tile that touches its interior to
lie inside block + halo: the tile starting one stride before the block reaches ``overlap`` pixels into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """A global tile grid: ``tile`` pixels square, neighbours sharing ``overlap`` pixels."""

    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def halo(self) -> tuple[int, int]:
        """``(before, after)``: pixels a block whose edges lie on multiples of the stride must be read with, on
        its leading and trailing sides, so that every tile touching its interior lies inside block + halo:
        the tile starting one stride before the block's start needs that stride; the last tile starting
        inside the block ends ``overlap`` pixels past its end."""
        return (self.stride if self.overlap else 0), self.overlap

    def starts(self, lo: int, hi: int) -> np.ndarray:
        """Global starts (int64, ascending) of the tiles that intersect the 1-D global range ``[lo, hi)``."""
        if hi <= lo:
            return np.zeros(0, dtype=np.int64)
        k0 = max(0, (lo - self.tile) // self.stride + 1)
        k1 = (hi - 1) // self.stride
        return np.arange(k0, k1 + 1, dtype=np.int64) * self.stride

    def origins(self, y: tuple[int, int], x: tuple[int, int]) -> list[tuple[int, int]]:
        """Global ``(y0, x0)`` of every tile intersecting the window ``y=[y0, y1), x=[x0, x1)``, row-major."""
        return [(int(a), int(b)) for a in self.starts(*y) for b in self.starts(*x)]

    def window(self) -> np.ndarray:
        """Blend weights ``(tile, tile)`` float32: 1 inside, linear ramps of ``overlap`` pixels at the edges.

        Ramps of neighbouring tiles add up to exactly one; every weight is > 0.
        """
        i = np.arange(self.tile, dtype=np.float64) + 0.5
        ramp = np.minimum(1.0, np.minimum(i, self.tile - i) / self.overlap) if self.overlap else np.ones(self.tile)
        return np.outer(ramp, ramp).astype(np.float32)
