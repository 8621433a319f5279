"""Translucent clouds over real L2A land (``cloudmask train --recipe starter-l2a --real-l2a S --translucent``):
clouds fade out towards their edges, and thick/thin follow the cloud's own blue (as over dark land)."""

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L2A
from pipeline.training.datasets.chips import MixedChips, RandomChips
from pipeline.training.datasets.reben import mosaics
from pipeline.training.datasets.translucent import (
    DARK_BLUE,
    FAINT_BLUE,
    IGNORE,
    TranslucentOverlay,
    opacity_map,
    translucent_paste,
)
from pipeline.training.pseudolabels import CLEAR, SHADOW, THICK, THIN

BLUE = SENTINEL2_L2A.bands.index("B02")


@pytest.fixture(scope="module")
def land():
    """A 96 x 96 px piece of real L2A land: reBEN's first training mosaic (green Austrian summer land)."""
    scene, labels = mosaics("train")[0]
    return scene.dn[:, :96, :96].astype(np.float32), np.asarray(labels)[:96, :96].astype(np.int64)


def cloud_chip(shape):
    """A round thick cloud (blue 0.45, as reBEN's real cumulus cores; every band brighter than the land) and its shadow."""
    y, x = np.mgrid[: shape[1], : shape[2]]
    labels = np.zeros(shape[1:], np.int64)
    labels[(y - 40) ** 2 + (x - 40) ** 2 < 30**2] = THICK
    labels[(y > 80) & (x > 80)] = SHADOW
    dn = np.full(shape, 4500.0, np.float32)
    dn[[i for i, b in enumerate(SENTINEL2_L2A.bands) if b in ("B06", "B07", "B08", "B8A", "B09")]] = (
        9000.0  # above any land
    )
    dn[:, labels == SHADOW] = 300.0
    return dn, labels


def test_opacity_rises_from_the_rim_to_a_ceiling():
    cloud = np.zeros((41, 41), bool)
    cloud[5:36, 5:36] = True
    a = opacity_map(cloud, width=8.0, opacity=0.6)
    assert a.dtype == np.float32 and (a[~cloud] == 0).all()
    assert a[5, 20] == pytest.approx(0.6 / 8) and a[20, 20] == pytest.approx(0.6)  # rim; 16 px in
    row = a[20, 5:21]
    assert (np.diff(row) >= 0).all() and np.diff(row).max() > 0


def test_clouds_over_real_land_fade_at_their_edges_and_are_relabelled_by_their_blue(land):
    land_dn, land_labels = land
    cloud_dn, cloud_labels = cloud_chip(land_dn.shape)
    cloud, off = cloud_labels == THICK, cloud_labels == CLEAR
    seen = {THICK: 0, THIN: 0, IGNORE: 0}
    for seed in range(12):
        dn, labels = translucent_paste(cloud_dn, cloud_labels, land_dn, land_labels, np.random.default_rng(seed), BLUE)
        assert dn.dtype == np.float32 and labels.dtype == np.int64
        assert np.array_equal(dn[:, off], land_dn[:, off]) and np.array_equal(labels[off], land_labels[off])
        shadow = cloud_labels == SHADOW
        assert np.array_equal(dn[:, shadow], cloud_dn[:, shadow]) and (labels[shadow] == SHADOW).all()
        # each cloud pixel a mix of land and cloud, the same share in every band
        share = (dn[:, cloud] - land_dn[:, cloud]) / (cloud_dn[:, cloud] - land_dn[:, cloud])
        assert ((share >= 0) & (share <= 1 + 1e-5)).all() and np.ptp(share, axis=0).max() < 1e-4
        assert share[0].min() < 0.2  # the rim lets the land through
        blue, below, got = dn[BLUE][cloud], land_dn[BLUE][cloud], labels[cloud]
        faint = blue - below < FAINT_BLUE * 1e4
        over_dark = share[BLUE] * cloud_dn[BLUE][cloud] + (1 - share[BLUE]) * DARK_BLUE * 1e4
        assert ((got == IGNORE) == faint).all()
        assert ((got == THICK) == (~faint & (over_dark >= 2500 - 1))).all()  # 1 DN: share is recovered in float32
        assert ((got == THIN) == (~faint & (over_dark < 2500 - 1))).all()
        rim = cloud & ~np.roll(cloud, 1, axis=1)
        assert (labels[rim] != THICK).all()  # no chip's rim is opaque
        for k in seen:
            seen[k] += int((got == k).sum())
    assert min(seen.values()) > 0, seen  # cores thick, rims thin, faintest rims left out
    assert seen[THIN] > 0.1 * seen[THICK]


def test_faint_cloud_over_bright_ground_is_thin_not_thick(land):
    """Over bright ground (bare soil's blue 0.15) a cloud pixel that hides a fifth of it is thin, though its mixed
    blue passes the rule's 0.25: the split follows the cloud, not the ground."""
    land_dn, land_labels = land
    bright = np.full_like(land_dn, 1500.0)
    cloud_dn, cloud_labels = cloud_chip(land_dn.shape)
    cloud_dn[:, cloud_labels == THICK] = 8000.0
    above = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        dn, labels = translucent_paste(cloud_dn, cloud_labels, bright, land_labels, rng, BLUE)
        share = (dn[BLUE] - 1500.0) / (8000.0 - 1500.0)
        hazy = (cloud_labels == THICK) & (share > 0.1) & (share < 0.25)  # mixed blue 0.22-0.31, over dark 0.11-0.22
        assert (labels[hazy] == THIN).all() and (labels[(cloud_labels == THICK) & (share > 0.5)] == THICK).all()
        above += int((dn[BLUE][hazy] >= 2500).sum())
    assert above > 0  # some of them past the mixed-blue threshold, which would have made them thick


def test_nodata_land_gets_the_cloud_whole(land):
    land_dn, land_labels = land
    land_dn = land_dn.copy()
    land_dn[:, :, :20] = 0  # a nodata strip through the cloud
    cloud_dn, cloud_labels = cloud_chip(land_dn.shape)
    dn, labels = translucent_paste(cloud_dn, cloud_labels, land_dn, land_labels, np.random.default_rng(0), BLUE)
    strip = np.zeros(cloud_labels.shape, bool)
    strip[:, :20] = True
    strip &= cloud_labels == THICK
    assert strip.any() and np.array_equal(dn[:, strip], cloud_dn[:, strip]) and (labels[strip] == THICK).all()


def test_mixed_chips_with_the_overlay_are_reproducible(land):
    land_dn, land_labels = land
    cloud_dn, cloud_labels = cloud_chip(land_dn.shape)
    main = RandomChips(
        [(cloud_dn.astype(np.uint16), cloud_labels.astype(np.uint8))], samples=16, size=64, seed=1, class_prob=0.0
    )
    extra = RandomChips(
        [(land_dn.astype(np.uint16), land_labels.astype(np.uint8))], samples=16, size=64, seed=2, class_prob=0.0
    )
    mixed = MixedChips(main, extra, 1.0, seed=3, overlay=TranslucentOverlay(SENTINEL2_L2A.bands))
    again = MixedChips(main, extra, 1.0, seed=3, overlay=TranslucentOverlay(SENTINEL2_L2A.bands))
    first = [mixed[i] for i in range(16)]
    for i in range(16):
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first[i], again[i]))
    assert any(np.isin(lab.numpy(), (THIN, IGNORE)).any() for _, lab in first)  # translucent, not pasted whole
    mixed.set_epoch(1)
    assert any(not np.array_equal(a[0].numpy(), mixed[i][0].numpy()) for i, a in enumerate(first))
