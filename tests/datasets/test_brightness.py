"""Brightness-jittered starter chips: thick/thin follow the scaled blue band, as the labelling rule splits them."""

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.training.datasets.brightness import BrightenedChips, brighten
from pipeline.training.datasets.chips import RandomChips
from pipeline.training.datasets.scenes import eolearn_scenes
from pipeline.training.pseudolabels import THICK_BLUE, teacher_labels
from pipeline.training.recipe import Recipe

BLUE = SENTINEL2_L1C.bands.index("B02")


@pytest.fixture(scope="module")
def cloudy():
    """eo-learn scene 0 (real, fully cloudy; thick where B02 >= 0.25, thin elsewhere) and its teacher labels."""
    dn = eolearn_scenes()[0]
    return dn, teacher_labels(dn, 10.0)


@pytest.mark.parametrize("gain", [0.75, 1.35])
def test_cloud_is_re_split_by_the_scaled_blue_band(cloudy, gain):
    dn, labels = cloudy
    assert {1, 2} <= set(np.unique(labels).tolist())
    out, lab = brighten(dn, labels, gain, BLUE)
    np.testing.assert_allclose(out, np.clip(dn.astype(np.float32) * gain, 0, 65535), rtol=1e-6)
    cloud = np.isin(labels, (1, 2))
    bright = dn[BLUE].astype(np.float64) * gain >= THICK_BLUE * 1e4
    assert np.array_equal(lab[cloud], np.where(bright[cloud], 1, 2))
    assert np.array_equal(lab[~cloud], labels[~cloud])  # clear, shadow and ignore untouched
    changed = (lab != labels).mean()
    assert changed > 0.05, changed  # the gain moves real cloud pixels across the threshold


def test_brightened_chips_are_reproducible_and_keep_nodata(cloudy):
    dn, labels = cloudy
    chips = BrightenedChips(
        RandomChips([(dn, labels)], samples=6, size=128, seed=1, nodata_prob=1.0),
        SENTINEL2_L1C.bands,
        (0.75, 1.35),
        seed=1,
    )
    x0, y0 = chips[0]
    x1, y1 = chips[0]
    assert np.array_equal(x0.numpy(), x1.numpy()) and np.array_equal(y0.numpy(), y1.numpy())
    nodata = (x0.numpy() == 0).all(axis=0)
    assert nodata.any() and (y0.numpy()[nodata] == 255).all()  # strips and canvas stay nodata, ignored
    gains = []
    for i in range(6):
        x, _ = chips[i]
        raw, _ = chips.chips[i]
        valid = raw.numpy() > 0
        gains.append(float(np.median(x.numpy()[valid] / raw.numpy()[valid])))
    assert all(0.75 - 1e-3 <= g <= 1.35 + 1e-3 for g in gains) and np.ptp(gains) > 0.1, gains
    chips.set_epoch(1)
    assert not np.array_equal(chips[0][0].numpy(), x0.numpy())  # another epoch, other chips


def test_a_bad_brightness_range_is_refused():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"brightness=\(1.2, 0.8\); expected \(low, high\)"):
        Recipe(brightness=(1.2, 0.8))
