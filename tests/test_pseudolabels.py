"""The documented 4-class labelling rule and the teachers it combines, on real scenes."""

import numpy as np
import pytest

from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.training.datasets.scenes import eolearn_scenes, sen12mscr_patch
from pipeline.training.pseudolabels import combine, teacher_labels

B = {b: i for i, b in enumerate(SENTINEL2_L1C.bands)}


def pixel(blue=0.1, nir=0.3, cirrus=0.001):
    dn = np.full((13, 1, 1), 1000, np.uint16)
    dn[B["B02"]], dn[B["B08"]], dn[B["B10"]] = blue * 1e4, nir * 1e4, cirrus * 1e4
    return dn


@pytest.mark.parametrize(
    "p,u,refl,expected,why",
    [
        (0.9, (0.5, 0.5, 0.0), dict(blue=0.4), 1, "s2cloudless confident, ukis not against, bright -> thick"),
        (0.4, (0.1, 0.9, 0.0), dict(blue=0.15), 2, "ukis confident, s2cloudless not against, dim -> thin"),
        (0.9, (0.95, 0.05, 0.0), dict(blue=0.4), 255, "s2cloudless alone (bright salt flat) -> ignore"),
        (0.1, (0.4, 0.6, 0.0), dict(), 255, "ukis doubtful cloud, s2cloudless clear -> ignore"),
        (0.05, (0.9, 0.1, 0.0), dict(cirrus=0.02), 2, "cirrus band high, dim -> thin"),
        (0.05, (0.9, 0.1, 0.0), dict(cirrus=0.02, blue=0.4), 1, "cirrus band high, bright -> thick (not thin)"),
        (0.05, (0.2, 0.1, 0.7), dict(cirrus=0.02, nir=0.1), 2, "cirrus band high beats ukis' shadow -> thin"),
        (0.05, (0.2, 0.1, 0.7), dict(nir=0.1), 3, "ukis shadow, dark NIR -> shadow"),
        (0.05, (0.2, 0.1, 0.7), dict(nir=0.4), 0, "ukis shadow vetoed by a bright NIR (sunlit) -> clear"),
        (0.05, (0.95, 0.03, 0.02), dict(), 0, "both clear -> clear"),
    ],
)
def test_rule_table(p, u, refl, expected, why):
    labels = combine(pixel(**refl), np.array([[p]], np.float32), np.array(u, np.float32).reshape(3, 1, 1))
    assert labels[0, 0] == expected, why


def test_nodata_is_ignored():
    dn = np.zeros((13, 1, 1), np.uint16)
    assert combine(dn, np.zeros((1, 1)), np.array([1.0, 0, 0]).reshape(3, 1, 1))[0, 0] == 255


@pytest.mark.slow
def test_teacher_labels_on_real_scenes():
    cloudy = teacher_labels(eolearn_scenes()[0], 10.0)  # fully cloudy scene
    clear = teacher_labels(eolearn_scenes()[3], 10.0)  # clear scene
    assert np.isin(cloudy, [1, 2]).mean() > 0.9
    assert (clear == 0).mean() > 0.9
    mixed = teacher_labels(sen12mscr_patch(), 10.0)  # cumulus with shadows
    fractions = np.bincount(mixed.ravel(), minlength=256)[[0, 1, 2, 3]] / mixed.size
    assert (fractions > 0.02).all(), fractions
    assert np.array_equal(mixed, teacher_labels(sen12mscr_patch(), 10.0))  # reproducible
