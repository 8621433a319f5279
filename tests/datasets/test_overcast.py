"""Tile-filling cloud and haze (``cloudmask train ... --overcast SHARE``): real land under one layer of (nearly)
uniform opacity over the whole chip, with real thick-cloud spectra of the training scenes, labelled thick or thin
by the blue the layer shows over dark ground."""

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.training.datasets import overcast
from pipeline.training.datasets.chips import RandomChips
from pipeline.training.datasets.overcast import (
    ADDED,
    BLUE,
    OPACITY_JITTER,
    PATCH,
    TEXTURE,
    WINDOW,
    OvercastChips,
    cloud_library,
    draw_layer,
    lay_overcast,
)
from pipeline.training.datasets.scenes import SCENES
from pipeline.training.datasets.translucent import DARK_BLUE, FAINT_BLUE, IGNORE
from pipeline.training.pseudolabels import CLEAR, SHADOW, THICK, THIN, teacher_labels

BANDS = SENTINEL2_L1C.bands
B02 = BANDS.index("B02")


@pytest.fixture(scope="module")
def clouds():
    """The rio-tiler preview (a training scene: broken cumulus over Quebec) with its teacher labels, and the
    library of its thick cloud."""
    scene = SCENES["riotiler-T19UDP-20170729"]()
    labels = teacher_labels(scene.dn, scene.resolution_m)
    return scene, labels, cloud_library([(scene, labels)], BANDS, BANDS)


@pytest.fixture(scope="module")
def land():
    """256 x 256 px of real clear land (DSen2 T33UUB, farmland, a training scene) with a swath edge (nodata) on its
    left and a planted thick and thin cloud label and a shadow label: ``(dn float32, labels int64)``."""
    dn = SCENES["dsen2-S2A_MSIL1C_20170527_T33UUB"]().dn[:, :256, :256].astype(np.float32)
    dn[:, :, :40] = 0
    labels = np.zeros((256, 256), np.int64)
    labels[:, :40] = IGNORE
    labels[100:110, 100:110], labels[120:130, 120:130], labels[140:150, 140:150] = THICK, THIN, SHADOW
    return dn, labels


def test_the_library_is_real_thick_cloud_of_the_scene_given(clouds):
    scene, labels, lib = clouds
    assert lib.dtype == np.float32 and lib.shape == (min(int((labels == THICK).sum()), overcast.LIBRARY_PER_SCENE), 13)
    assert (lib[:, B02] >= 2500).all() and (lib > 0).all()  # thick by the rule: B02 >= 0.25; no nodata band
    # each library row is a pixel of the scene labelled thick
    thick = {tuple(p) for p in scene.dn[:, labels == THICK].T.astype(np.float32)}
    assert all(tuple(p) in thick for p in lib[::97])
    # in another band order (L2A, no B10)
    l2a = tuple(b for b in BANDS if b != "B10")
    lib12 = cloud_library([(scene, labels)], l2a, BANDS)
    np.testing.assert_array_equal(lib12, np.delete(lib, BANDS.index("B10"), axis=1))


def test_eolearn_scenes_never_give_spectra(clouds):
    """eo-learn's scenes (0 is in the train split) are the fully cloudy test cases: refused by the library, and
    left out of the training scenes' clouds."""
    scene, labels, lib = clouds
    eo0 = SCENES["eolearn-0"]()
    with pytest.raises(ValueError, match="eolearn-0"):
        cloud_library([(eo0, teacher_labels(eo0.dn, 10.0))], BANDS, BANDS)
    thick_eo0 = np.full(eo0.dn.shape[1:], THICK, np.uint8)
    np.testing.assert_array_equal(overcast.training_clouds([(scene, labels), (eo0, thick_eo0)], BANDS), lib)


def test_a_layer_fills_the_chip_keeps_nodata_and_is_labelled_by_its_blue_over_dark_ground(clouds, land):
    # the ground's weight: all of it under no layer, none under an opaque one, 1 - s a under a faint one, a plain
    # mix (1 - a) where the layer takes all its opacity from the ground (s = 1)
    for s in (0.3, 0.6, 1.0):
        assert overcast.transmittance(0.0, s) == 1 and overcast.transmittance(1.0, s) == 0
        assert overcast.transmittance(1e-4, s) == pytest.approx(1 - s * 1e-4, abs=1e-7)
    assert overcast.transmittance(0.4, 1.0) == pytest.approx(0.6)
    lib = clouds[2]
    dn, labels = land
    valid = dn.any(axis=0)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        spectrum, opacity, texture, s = draw_layer(lib, B02, dn.shape[1:], rng)
        assert BLUE[0] * 1e4 - 1 <= spectrum[B02] <= BLUE[1] * 1e4 + 1
        assert np.ptp(opacity) <= 2 * OPACITY_JITTER * opacity.max() + 1e-6  # nearly uniform opacity
        assert abs(texture - 1).max() <= TEXTURE + 1e-6
        out, lab = lay_overcast(dn, labels, spectrum, opacity, texture, s, B02)
        assert out.dtype == np.float32 and lab.dtype == np.int64
        assert (out[:, ~valid] == 0).all() and (lab[~valid] == IGNORE).all()  # nodata kept
        t = overcast.transmittance(opacity, s)
        assert (t <= 1 - s * opacity + 1e-6).all() and (t >= 0).all()
        expected = opacity * spectrum[:, None, None] * texture + t * dn
        np.testing.assert_allclose(out[:, valid], np.clip(expected, 0, 65535)[:, valid], rtol=1e-5, atol=0.5)
        # tile-filling: every valid pixel lies under the layer, and no clear or shadow label is left
        assert not np.isin(lab[valid], (CLEAR, SHADOW)).any()
        over_dark = opacity * spectrum[B02] * texture + t * DARK_BLUE * 1e4
        added = out[B02] - dn[B02]
        land_px = valid & (labels == CLEAR)
        want = np.where(added < FAINT_BLUE * 1e4, IGNORE, np.where(over_dark >= 2500, THICK, THIN))
        np.testing.assert_array_equal(lab[land_px], want[land_px])
        assert (lab[100:110, 100:110] == THICK).all()  # cloud stays cloud; thick stays thick
        assert np.isin(lab[120:130, 120:130], (THICK, THIN)).all()


def test_chips_are_tile_filling_low_texture_cloud_or_haze(clouds):
    """OvercastChips over real training chips (rio-tiler's cumulus and DSen2's farmland; swath edges, small windows):
    the chosen share is overcast; every labelled pixel of those is cloud; opaque ones are nearly uniform; both thick
    overcast and thin haze are drawn; the rest are the chips as they were."""
    scene, labels, lib = clouds
    farm = SCENES["dsen2-S2A_MSIL1C_20170527_T33UUB"]()
    base = RandomChips(
        [(scene.dn, labels), (farm.dn, np.zeros(farm.dn.shape[1:], np.uint8))],
        samples=48,
        size=256,
        seed=3,
        nodata_prob=0.3,
        class_prob=0.3,
    )
    chips = OvercastChips(base, BANDS, lib, prob=0.5, seed=3)
    chips.set_epoch(1)
    base.set_epoch(1)
    n, kinds, windows = 0, set(), 0
    for i in range(len(chips)):
        dn, lab = (t.numpy() for t in chips[i])
        dn0, lab0 = (t.numpy() for t in base[i])
        assert np.array_equal(dn, chips[i][0].numpy())  # reproducible
        if np.array_equal(dn, dn0):
            assert np.array_equal(lab, lab0)
            continue
        n += 1
        valid = dn.any(axis=0)
        assert not (valid & ~dn0.any(axis=0)).any() and (lab[~valid] == IGNORE).all()  # nodata stays nodata
        windows += valid.sum() < dn0.any(axis=0).sum()
        labelled = lab[valid] != IGNORE
        assert labelled.mean() > 0.5 and np.isin(lab[valid][labelled], (THICK, THIN)).all()
        kinds |= set(np.unique(lab[valid][labelled]).tolist())
        over_land = valid & (lab0 == CLEAR) & (labels.size > 0)
        if (dn[B02][valid] > 5000).all() and over_land.any():  # opaque overcast: low texture
            cv = dn[:, valid].std(axis=1) / dn[:, valid].mean(axis=1)
            assert cv.max() < 0.15
    assert 0.3 < n / len(chips) < 0.7 and kinds == {THICK, THIN} and 0 < windows < n
    assert PATCH < 1 and WINDOW[1] <= 256 and ADDED[0] >= FAINT_BLUE


@pytest.mark.parametrize("recipe", ["starter", "starter-l2a"])
def test_train_lays_the_layer_last_in_top_of_atmosphere_over_every_kind_of_chip(recipe, tmp_path):
    """``cloudmask train --recipe RECIPE --overcast 1``'s data: every training chip lies under a layer laid after
    every other top-of-atmosphere transform; for the L2A starter in TOA too, before the simulated map, which then
    finds no clear pixel to calibrate on and leaves the layer a cloud (``test_l2a.py``); real L2A land gets the layer
    as it gets any simulated chip's clouds; the validation items are not touched; the dataset's description says
    so; without ``--overcast`` nothing changes."""
    import argparse
    from dataclasses import replace

    from factories import planted_label_cache

    from flows.train import RECIPES, load_data
    from pipeline.training.datasets.boa import SimulatedBOAChips

    planted_label_cache(tmp_path)
    args = argparse.Namespace(
        dataset=None, data=None, out=str(tmp_path), label_cache=str(tmp_path), samples_per_epoch=12
    )
    extra = {"real_l2a": 0.5} if recipe == "starter-l2a" else {}
    plain = load_data(args, replace(RECIPES[recipe], **extra))
    data = load_data(args, replace(RECIPES[recipe], overcast=1.0, **extra))
    assert data.dataset == plain.dataset + ", 1 of the chips under a tile-filling cloud or haze layer"
    assert data.bands == plain.bands and len(data.bands) == (13 if recipe == "starter" else 12)
    assert len(data.val) == len(plain.val) and all(np.array_equal(a[0], b[0]) for a, b in zip(data.val, plain.val))
    if extra:  # real land | simulated L2A of (the layer over the TOA chips)
        assert isinstance(data.train.main, SimulatedBOAChips) and isinstance(data.train.main.chips, OvercastChips)
    else:
        assert isinstance(data.train, OvercastChips) and type(data.train.chips) is type(plain.train)  # laid last
    for i in range(len(data.train)):
        dn, labels = (t.numpy() for t in data.train[i])
        dn0, labels0 = (t.numpy() for t in plain.train[i])
        valid = dn.any(axis=0)
        if extra and data.train.from_extra(i):  # real land under the simulated chip's layer, where that chip has it
            assert np.isin(labels[valid], (THICK, THIN)).any()
            continue
        assert valid.any() and not (valid & ~dn0.any(axis=0)).any()  # nodata stays nodata (a window may add some)
        assert (dn[:, valid] != dn0[:, valid]).any(axis=0).mean() > 0.9  # the layer lies over the whole chip
        assert np.isin(labels[valid], (THICK, THIN, IGNORE)).all()  # overcast: no clear or shadow left
        if not extra:  # the layer over the very chip the other transforms made (the L2A one redraws its jitter)
            cloud = np.isin(labels0, (THICK,)) & valid
            assert (labels[cloud] == THICK).all()
