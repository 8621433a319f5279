"""Synthetic cloud shadows on real starter scenes: darkened as by a blocked sun, labelled by the rule's shadow test."""

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.training.datasets.chips import RandomChips
from pipeline.training.datasets.scenes import eolearn_scenes
from pipeline.training.datasets.shadows import ShadowedChips, cast_footprint, shade
from pipeline.training.pseudolabels import CLEAR, SHADOW, SHADOW_NIR, teacher_labels
from pipeline.training.recipe import Recipe

BANDS = SENTINEL2_L1C.bands
B = {b: i for i, b in enumerate(BANDS)}


@pytest.fixture(scope="module")
def scenes():
    """eo-learn scenes 2 (real, clear farmland and forest) and 0 (fully cloudy) with their teacher labels."""
    dn = eolearn_scenes()
    return {k: (dn[k], teacher_labels(dn[k], 10.0)) for k in (0, 2)}


def test_a_shadow_darkens_the_ground_more_in_the_nir_than_in_the_blue_and_labels_it(scenes):
    dn, labels = scenes[2]
    assert (labels == CLEAR).all()
    share = np.zeros(labels.shape, np.float32)
    share[:, :50] = 1.0  # core on the left half, sunlit right half
    out, lab = shade(dn, labels, share, BANDS, k_nir=0.3, alpha=1.0)
    left, right = np.s_[:, :, :50], np.s_[:, :, 50:]
    assert np.array_equal(out[right], dn[right].astype(np.float32))  # the sunlit half is untouched
    assert np.array_equal(out[B["B10"]], dn[B["B10"]].astype(np.float32))  # cirrus sees no ground
    assert (out[left] <= dn[left]).all()
    ratio = {b: np.median(out[B[b]][:, :50] / dn[B[b]][:, :50]) for b in ("B02", "B04", "B08", "B12")}
    assert ratio["B02"] > ratio["B04"] > ratio["B08"] > ratio["B12"], ratio  # the sky's light is blue
    assert ratio["B08"] < 0.5, ratio
    nir, nir0 = out[B["B08"]] / 1e4, dn[B["B08"]] / 1e4
    want = np.where((share == 1) & (nir < SHADOW_NIR) & (nir <= 0.8 * nir0), SHADOW, CLEAR)
    want[(share == 1) & (nir < SHADOW_NIR) & (nir > 0.8 * nir0)] = 255  # the shadow does not show: no evidence
    assert np.array_equal(lab, want)
    assert (lab[:, :50] == SHADOW).mean() > 0.9  # real farmland in a real shadow's light reads as shadow

    out, lab = shade(dn, labels, share, BANDS, k_nir=0.95, alpha=1.0)  # a faint shadow: the NIR keeps > 80 %
    assert (out[B["B08"]][:, :50] > 0.8 * dn[B["B08"]][:, :50]).all()
    assert not (lab == SHADOW).any() and (lab[:, :50] == 255).mean() > 0.5  # no evidence either way: ignored


def test_clouds_and_nodata_are_not_shaded_and_the_penumbra_is_ignored(scenes):
    dn, labels = scenes[0]
    assert np.isin(labels, (1, 2)).all()
    share = np.ones(labels.shape, np.float32)
    out, lab = shade(dn, labels, share, BANDS, k_nir=0.2, alpha=1.0)
    assert np.array_equal(out, dn.astype(np.float32)) and np.array_equal(lab, labels)  # no shadow on cloud tops

    dn, labels = (a.copy() for a in scenes[2])
    dn[:, :10], labels[:10] = 0, 255  # a swath edge, as the labelling rule marks it
    share = np.full(labels.shape, 0.5, np.float32)
    out, lab = shade(dn, labels, share, BANDS, k_nir=0.2, alpha=1.0)
    assert (out[:, :10] == 0).all()
    assert (lab == 255).all()  # half-shaded: neither clear nor shadow


@pytest.fixture(scope="module")
def cloud_bank(scenes):
    """Real cloud edges: eo-learn scene 0's cloud (thick and thin) over columns 35-64 of clear scene 2."""
    (cloud_dn, cloud_lab), (dn, labels) = scenes[0], scenes[2]
    dn, labels = dn.copy(), labels.copy()
    dn[:, :, 35:65], labels[:, 35:65] = cloud_dn[:, :, 35:65], cloud_lab[:, 35:65]
    return dn, labels


def test_the_shadow_is_the_chips_own_cloud_moved(scenes, cloud_bank):
    assert cast_footprint(scenes[2][1], np.random.default_rng(0)) is None  # no cloud, no shadow
    _, labels = cloud_bank
    shifts = set()
    for seed in range(8):
        core = cast_footprint(labels, np.random.default_rng(seed)) >= 0.9
        assert core.sum() <= 101 * 30
        if core.any():  # else moved off the chip
            cols = np.flatnonzero(core.any(axis=0))
            assert cols.max() - cols.min() < 30  # a 30 px wide bank moved, cut by the chip's edges
            shifts.add((int(np.flatnonzero(core.any(axis=1))[0]), int(cols[0])))
    assert len(shifts) > 3  # in random directions and distances


def test_shadowed_chips_are_reproducible_and_shade_only_chips_with_cloud(scenes, cloud_bank):
    dn, labels = scenes[2]
    base = RandomChips([(dn, labels)], samples=6, size=64, seed=3)
    chips = ShadowedChips(base, BANDS, 1.0, seed=3)
    assert all(np.array_equal(chips[i][0].numpy(), base[i][0].numpy()) for i in range(6))  # cloudless: untouched

    base = RandomChips([cloud_bank], samples=12, size=64, seed=3)
    chips = ShadowedChips(base, BANDS, 0.5, seed=3)
    x0, y0 = chips[0]
    assert np.array_equal(x0.numpy(), chips[0][0].numpy()) and np.array_equal(y0.numpy(), chips[0][1].numpy())
    shaded = [i for i in range(12) if not np.array_equal(chips[i][0].numpy(), base[i][0].numpy())]
    assert 2 <= len(shaded) <= 10, shaded
    for i in range(12):
        x, y = (t.numpy() for t in chips[i])
        raw, lab = (t.numpy() for t in base[i])
        cloud = np.isin(lab, (1, 2))
        assert np.array_equal(x[:, cloud], raw[:, cloud]) and np.array_equal(y[cloud], lab[cloud])  # cloud tops lit
        assert ((y == SHADOW) & (lab != SHADOW)).any() == (i in shaded)


def test_a_share_outside_0_to_1_is_refused():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"shadows=1.5; expected the share"):
        Recipe(shadows=1.5)
