"""Tile geometry on the global grid: coverage and the blend window."""

import numpy as np
import pytest

from pipeline.detect.tiles import TileGrid


@pytest.mark.parametrize("tile,overlap", [(512, 64), (64, 16), (32, 0)])
def test_starts_cover_the_range_and_touch_it(tile, overlap):
    grid = TileGrid(tile, overlap)
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo = int(rng.integers(0, 3000))
        hi = lo + int(rng.integers(1, 3000))
        starts = grid.starts(lo, hi)
        assert np.all(starts % grid.stride == 0) and np.all(starts >= 0)
        assert np.all(starts < hi) and np.all(starts + tile > lo)  # each tile touches [lo, hi)
        covered = np.zeros(hi - lo, bool)
        for s in starts:
            covered[max(s, lo) - lo : min(s + tile, hi) - lo] = True
        assert covered.all()
        # no tile of the grid touching the range is missing
        k = np.arange(0, hi // grid.stride + 2) * grid.stride
        assert set(starts) == set(k[(k < hi) & (k + tile > lo)])


def test_window_ramps_sum_to_one_between_tiles():
    grid = TileGrid(64, 16)
    w = grid.window()
    assert w.shape == (64, 64) and w.dtype == np.float32 and (w > 0).all()
    assert w[16:48, 16:48].min() == 1.0
    total = np.zeros((300, 300), np.float32)
    for y, x in grid.origins((0, 300), (0, 300)):
        tile = np.zeros((300 + 64, 300 + 64), np.float32)
        tile[y : y + 64, x : x + 64] = w
        total += tile[:300, :300]
    np.testing.assert_allclose(total[16:, 16:], 1.0, atol=1e-6)
