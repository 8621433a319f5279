"""Real L2A land for the L2A starter: reBEN's patches in configilm's mock data, their mosaics, and chips that mix
them into the simulated-L2A stream."""

import argparse

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L2A
from pipeline.errors import ConfigError
from pipeline.training.datasets.chips import MixedChips, RandomChips
from pipeline.training.datasets.reben import PATCH, held_out, mosaics, patches


@pytest.fixture(scope="module")
def all_patches():
    return patches()


def band(dn, name):
    return dn[SENTINEL2_L2A.bands.index(name)].astype(np.float64) / 10000


def test_patches_are_real_l2a_surface_reflectance_with_reben_flags(all_patches):
    """24 patches, 12 bands at 10 m; green summer land in Austria (NIR several times red, blue dark: surface
    reflectance without the baseline-04.00 offset), three flagged cloudy or shadowed, three snowy from Finland."""
    assert len(all_patches) == 24
    assert all(p.dn.shape == (12, PATCH, PATCH) and p.dn.dtype == np.uint16 and "MSIL2A" in p.name for p in all_patches)
    assert sum(p.cloud_or_shadow for p in all_patches) == 3 and sum(p.snow for p in all_patches) == 3
    assert {p.split for p in all_patches} == {"train", "val", "test"}
    green = [p for p in all_patches if "T33UUP" in p.name and not p.cloud_or_shadow]
    assert len(green) == 18
    for p in green:
        assert np.median(band(p.dn, "B08")) > 3 * np.median(band(p.dn, "B04")), p.name
        assert np.median(band(p.dn, "B02")) < 0.06, p.name  # an offset of 1000 would put it above 0.1
    for p in (p for p in all_patches if p.snow):  # snow: bright in the visible, dark in the SWIR (clouds are not)
        assert np.median(band(p.dn, "B02")) > 2 * np.median(band(p.dn, "B11")), p.name
    # the 20 m and 60 m bands are brought to the 10 m grid smoothly, not as blocks
    b11 = band(green[0].dn, "B11")
    assert np.abs(np.diff(b11, axis=1)).mean() < np.abs(b11[:, ::2] - b11[:, 1::2].mean()).mean()


def test_mosaics_join_real_neighbours_and_keep_held_out_patches_out(all_patches):
    """Training mosaics place each patch at its tile cell: across a seam between two neighbouring patches the land
    continues (the step is about a step within a patch, far below the step to a patch of another place); no
    held-out patch (reBEN test split, or flagged cloudy) gives any pixel to a training or validation mosaic."""
    train = mosaics("train")
    scene, labels = next((s, lab) for s, lab in train if s.dn.shape[1:] == (3 * PATCH, 2 * PATCH))
    assert (labels == 0).all()  # six clear patches fill the 3 x 2 cells
    nir = band(scene.dn, "B08")
    seams = [abs(nir[r * PATCH - 1] - nir[r * PATCH]).mean() for r in (1, 2)]  # rows
    seams += [abs(nir[:, PATCH - 1] - nir[:, PATCH]).mean()]  # the column
    inside = np.mean([abs(nir[:, c - 1] - nir[:, c]).mean() for c in range(10, PATCH - 10, 7)])
    other = np.mean(
        [
            abs(nir[:PATCH, PATCH - 1] - band(p.dn, "B08")[:, 0]).mean()
            for p in all_patches
            if p.split == "test" and not p.cloud_or_shadow and not p.snow
        ]
    )
    assert max(seams) < 2 * inside and max(seams) < 0.6 * other, (seams, inside, other)
    used = [s.dn for part in ("train", "val") for s, _ in mosaics(part)]
    for p in all_patches:
        found = any(
            np.array_equal(dn[:, y : y + PATCH, x : x + PATCH], p.dn)
            for dn in used
            for y in range(0, dn.shape[1], PATCH)
            for x in range(0, dn.shape[2], PATCH)
        )
        assert found == (not held_out(p)), p.name
    with pytest.raises(ConfigError, match="expected train or val"):
        mosaics("test")


def test_mixed_chips_take_the_given_share_from_the_second_stream_reproducibly():
    rng = np.random.default_rng(0)
    a = [(rng.integers(1, 4000, (12, 300, 300), dtype=np.uint16), np.zeros((300, 300), np.uint8))]
    b = [(rng.integers(1, 4000, (12, 300, 300), dtype=np.uint16), np.full((300, 300), 3, np.uint8))]
    main, extra = RandomChips(a, samples=400, size=32, seed=1), RandomChips(b, samples=400, size=32, seed=2)
    mixed = MixedChips(main, extra, 0.25, seed=7)
    picks = [mixed.from_extra(i) for i in range(400)]
    assert 0.18 < np.mean(picks) < 0.32
    for i in range(12):  # the very chip of the chosen stream, same index
        want = (extra if picks[i] else main)[i]
        assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(mixed[i], want))
    assert picks == [MixedChips(main, extra, 0.25, seed=7).from_extra(i) for i in range(400)]
    mixed.set_epoch(1)
    assert extra.epoch == main.epoch == 1 and [mixed.from_extra(i) for i in range(400)] != picks
    assert not any(MixedChips(main, extra, 0.0).from_extra(i) for i in range(100))
    with pytest.raises(ValueError, match="equal lengths"):
        MixedChips(main, RandomChips(b, samples=3, size=32), 0.5)


def test_starter_l2a_data_with_real_l2a_chips(tmp_path):
    """``cloudmask train --recipe starter-l2a --real-l2a 0.5``'s data: about half the chips are real reBEN land
    (clear or ignored, NIR of green land) with the clouds and shadows of the simulated chip they replace pasted
    over it, the rest simulated L2A from the teachers' scenes; the validation items gain reBEN's val patches; the
    split names the real training scenes."""
    from dataclasses import replace

    from factories import planted_label_cache

    from flows.train import RECIPES, load_data

    planted_label_cache(tmp_path)  # planted labels of every class: the teachers' labels are not what this tests
    args = argparse.Namespace(
        dataset=None, data=None, out=str(tmp_path), label_cache=str(tmp_path), samples_per_epoch=24
    )
    plain = load_data(args, RECIPES["starter-l2a"])
    data = load_data(args, replace(RECIPES["starter-l2a"], real_l2a=0.5))
    assert data.bands == SENTINEL2_L2A.bands and len(data.train) == 24
    assert len(data.val) == len(plain.val) + len(mosaics("val"))
    assert "real_l2a_train" in data.split and "reben-T33UUP" in data.split
    real = [i for i in range(24) if data.train.from_extra(i)]
    assert 6 <= len(real) <= 18
    pasted = 0
    for i in range(24):
        dn, labels = (t.numpy() for t in data.train[i])
        sim_dn, sim_labels = (t.numpy() for t in plain.train[i])
        if i in real:
            cloud = np.isin(sim_labels, (1, 2, 3))
            assert np.array_equal(labels[cloud], sim_labels[cloud]) and np.array_equal(dn[:, cloud], sim_dn[:, cloud])
            assert set(np.unique(labels[~cloud])) <= {0, 255}
            land = labels == 0
            assert np.median(dn[SENTINEL2_L2A.bands.index("B08")][land]) > 2000  # green land's NIR, jittered
            pasted += cloud.any()
        else:
            assert np.array_equal(dn, sim_dn) and np.array_equal(labels, sim_labels)  # the simulated chip, unchanged
    assert pasted >= 2  # planted labels: every chip holds clouds; real chips carry them too
    seen = load_data(args, replace(RECIPES["starter-l2a"], real_l2a=0.5, translucent=True))  # --translucent
    assert "translucent clouds" in seen.dataset and [seen.train.from_extra(i) for i in range(24)] == [
        i in real for i in range(24)
    ]
    mixed = 0
    for i in real:
        dn, labels = (t.numpy() for t in seen.train[i])
        sim_dn, sim_labels = (t.numpy() for t in plain.train[i])
        shadow, cloud = sim_labels == 3, np.isin(sim_labels, (1, 2))
        assert np.array_equal(dn[:, shadow], sim_dn[:, shadow]) and (labels[shadow] == 3).all()
        assert set(np.unique(labels[cloud])) <= {1, 2, 255}
        mixed += int((dn[:, cloud] != sim_dn[:, cloud]).any())  # seen through, not pasted whole
    assert mixed >= 2
    bright = load_data(args, replace(RECIPES["starter-l2a"], real_l2a=0.5, land_gain=(1.5, 1.5)))  # --land-gain 1.5,1.5
    assert bright.dataset.endswith("the real land scaled by gains 1.5 to 1.5")
    for i in range(24):
        dn, labels = (t.numpy() for t in bright.train[i])
        base_dn, base_labels = (t.numpy() for t in data.train[i])
        assert np.array_equal(labels, base_labels)  # the land stays clear, pasted clouds keep their labels
        ground = ~np.isin(base_labels, (1, 2, 3)) if i in real else np.zeros(labels.shape, bool)
        np.testing.assert_allclose(dn[:, ground], np.minimum(base_dn[:, ground] * 1.5, 65535), rtol=1e-5)
        assert np.array_equal(dn[:, ~ground], base_dn[:, ~ground])  # clouds, shadows and simulated chips untouched
    snowy = load_data(args, replace(RECIPES["starter-l2a"], real_l2a=0.5, snow=1.0))  # --snow 1
    assert snowy.dataset.endswith("1 of the real land chips under synthetic snow (clear)")
    blue, whiter = SENTINEL2_L2A.bands.index("B02"), 0
    for i in range(24):
        dn, labels = (t.numpy() for t in snowy.train[i])
        base_dn, base_labels = (t.numpy() for t in data.train[i])
        assert np.array_equal(labels, base_labels)  # snow is clear ground; pasted clouds keep their labels
        ground = ~np.isin(base_labels, (1, 2, 3)) & base_dn.any(axis=0) if i in real else np.zeros(labels.shape, bool)
        assert np.array_equal(dn[:, ~ground], base_dn[:, ~ground])  # clouds, shadows, nodata, simulated chips
        whiter += int(ground.any() and (dn[blue][ground] > base_dn[blue][ground] + 1000).mean() > 0.05)
    assert whiter >= 3
