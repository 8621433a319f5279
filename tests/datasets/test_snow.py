"""Synthetic snow over real L2A land (``cloudmask train --recipe starter-l2a --real-l2a S --snow P``): real snow
spectra (reBEN's Finnish training patch) laid patchily over real land, still labelled clear."""

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L2A
from pipeline.training.datasets.chips import RandomChips
from pipeline.training.datasets.reben import mosaics, patches_of
from pipeline.training.datasets.snow import (
    BLUE,
    COVER,
    FULL,
    SnowedChips,
    lay_snow,
    snow_cover,
    snow_library,
    training_library,
)

BANDS = SENTINEL2_L2A.bands
B02, B03, B11 = (BANDS.index(b) for b in ("B02", "B03", "B11"))


def ndsi(dn):
    return (dn[B03] - dn[B11]) / np.maximum(dn[B03] + dn[B11], 1e-6)


@pytest.fixture(scope="module")
def library():
    return training_library(), patches_of("train")


def test_the_library_holds_the_snowy_training_patch_pure_snow_and_nothing_of_green_land(library):
    lib, train = library
    assert lib.dtype == np.float32 and lib.shape[1] == len(BANDS) and len(lib) > 1000
    assert (ndsi(lib.T) >= 0.7).all() and (lib[:, B03] >= 1500).all()
    assert np.median(lib[:, B11] / lib[:, B02]) < 0.15  # snow: dark at 1.6 µm, unlike cloud
    green = [p for p in train if not p.snow]
    assert green and all(len(snow_library(p.dn, BANDS)) == 0 for p in green)


def test_snow_cover_is_patchy_with_soft_edges():
    for seed in range(6):
        rng = np.random.default_rng(seed)
        cover = snow_cover((128, 128), rng)
        assert cover.dtype == np.float32 and cover.min() == 0 and cover.max() <= FULL[1]
        share = (cover > 0).mean()
        assert COVER[0] - 0.02 <= share <= COVER[1] + 0.02
        edge = (cover > 0) & (cover < cover.max())
        assert edge.any() and edge.sum() < (cover > 0).sum()  # a rim, not all of it


def test_lay_snow_mixes_the_spectrum_in_and_keeps_nodata():
    rng = np.random.default_rng(0)
    dn = rng.uniform(200, 3000, (len(BANDS), 8, 8)).astype(np.float32)
    dn[:, :, :2] = 0  # a swath edge
    spectrum = np.linspace(9000, 500, len(BANDS)).astype(np.float32)
    cover = np.zeros((8, 8), np.float32)
    cover[4:] = 1.0
    cover[2:4] = 0.5
    texture = np.ones((8, 8), np.float32)
    out = lay_snow(dn, spectrum, cover, texture)
    assert out.dtype == np.float32 and (out[:, :, :2] == 0).all()
    np.testing.assert_array_equal(out[:, :2], dn[:, :2])
    np.testing.assert_allclose(out[:, 4:, 2:], np.broadcast_to(spectrum[:, None, None], out[:, 4:, 2:].shape))
    np.testing.assert_allclose(out[:, 2:4, 2:], (spectrum[:, None, None] + dn[:, 2:4, 2:]) / 2, rtol=1e-6)


def test_snowed_real_land_chips_stay_clear_and_show_snow(library):
    lib, _ = library
    land = [m for m in mosaics("train") if "T33UUP" in m[0].name]  # green summer land, no snow of its own
    assert land
    chips = RandomChips([(s.dn, lab) for s, lab in land], samples=12, size=256, seed=7, nodata_prob=0.3)
    snowed = SnowedChips(chips, BANDS, lib, 1.0, seed=7)
    never = SnowedChips(chips, BANDS, lib, 0.0, seed=7)
    blues = []
    for i in range(12):
        dn, labels = (t.numpy() for t in chips[i])
        out, out_labels = (t.numpy() for t in snowed[i])
        assert np.array_equal(out_labels, labels)  # snow is clear ground: labels as they were
        assert np.array_equal(snowed[i][0].numpy(), out)  # the same chip for the same (seed, epoch, index)
        assert np.array_equal(never[i][0].numpy(), dn)
        nodata = ~dn.any(axis=0)
        assert (out[:, nodata] == 0).all()
        full = ~nodata & (np.abs(out - dn).sum(axis=0) > 0)
        assert full.any()
        r = out / 1e4
        whitened = full & (ndsi(r) >= 0.4) & (ndsi(dn / 1e4) < 0.4)
        assert whitened.sum() > 0.05 * (~nodata).sum()  # snow where there was none
        core = whitened & (ndsi(r) >= np.percentile(ndsi(r)[whitened], 90))  # the purest snow of the chip
        assert np.median(r[B11][core] / r[B02][core]) < 0.3  # its shortwave infrared stays dark (cloud: 0.5 or more)
        assert np.median(r[B11][~nodata & ~full] / r[B02][~nodata & ~full]) > 1  # green land's is not
        blues.append(np.percentile(r[B02][core], 95))
    assert min(blues) > BLUE[0] * 0.8 and max(blues) < BLUE[1] * 1.4  # a chip's snow: winter sun to fresh snow
    assert max(blues) - min(blues) > 0.15  # brightness varies from chip to chip


def test_an_empty_library_is_refused():
    with pytest.raises(ValueError, match="snow library is empty"):
        SnowedChips([], BANDS, np.zeros((0, len(BANDS)), np.float32), 0.5)


def test_each_chip_s_snow_is_one_library_spectrum_under_one_illumination_gain(library):
    import torch

    lib, _ = library
    pick = lib[np.argsort(lib[:, B02])[[10, len(lib) // 2, -10]]]  # dim, middling and bright real snow
    dark = torch.ones((len(BANDS), 64, 64))  # near-black ground (1 DN): the snow alone shows
    chips = [(dark, torch.zeros((64, 64), dtype=torch.int64))] * 40
    snowed = SnowedChips(chips, BANDS, pick, 1.0, seed=3)
    blues = []
    for i in range(40):
        out = snowed[i][0].numpy()
        snow = out[B02] > 100
        ratios = out[:, snow] / out[B02][snow]
        assert np.ptp(ratios, axis=1).max() < 0.02  # one spectrum's shape in every pixel
        shape = pick / pick[:, B02 : B02 + 1]
        assert np.abs(shape - np.median(ratios, axis=1)).max(axis=1).min() < 0.02  # ... of a library pixel
        blues.append(out[B02][snow].max() / 1e4)
    assert min(blues) < 0.45 and max(blues) > 0.7  # illumination from low winter sun to a high one
    assert max(blues) < BLUE[1] * 1.5


def test_the_library_leaves_the_held_out_snow_out(library):
    lib, _ = library
    held = [p for p in patches_of("test") if p.snow]  # reBEN's test snow patch: for evaluation only
    assert held and all(len(snow_library(p.dn, BANDS)) for p in held)
    rows = {r.tobytes() for r in lib}
    assert not any(r.tobytes() in rows for p in held for r in snow_library(p.dn, BANDS))
