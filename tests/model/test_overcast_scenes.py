"""Overcast scenes are cloud: each shipped starter must call at least 90 % of every fully cloudy real scene we hold
cloud (thick or thin), as the scene lies in ``data/`` and mirrored to fill a whole tile.

The fully cloudy real scenes are eo-learn's scenes 0 (one thick cloud) and 1 (a uniform haze), 101 x 100 px of
Sentinel-2 L1C (``tests/data``'s copy of eo-learn's ``REFERENCE_SCENES.npy``; SOURCES.md: "Scenes 0 and 1 are fully
cloudy"). A tile that uniform cloud fills has no edge, so it is the hard case; mirroring the patch (``numpy.pad``,
``symmetric``) to the model's 256 px tile makes one. The L2A starter reads L1C too (without B10), as the job gives it
L1C scenes, and its own level, simulated L2A (the map the card's figures use; with no clear pixel to calibrate on,
as Sen2Cor retrieves aerosol and water vapour over clear land only, ``boa.py``). Neither scene's spectra were used
to make the training chips of tile-filling cloud (``pipeline/training/datasets/overcast.py``).

The files run as a job runs them, with the overcast check (``pipeline/detect/overcast.py``): a full tile is looked at
again from afar, which is what calls the mirrored scenes cloud (``test_overcast_check.py`` shows it; without the
check the L1C starter called them 67.4 and 80.9 % cloud). The L2A starter learnt the haze of scene 1 once
simulated L2A kept it (``docs/training-log.md``, "Haze kept in simulated L2A").
``pytest tests/model/test_overcast_scenes.py -s`` prints every share.
"""

from functools import cache

import numpy as np
import pytest

from pipeline.config import InferSpec
from pipeline.detect.infer import Predictor
from pipeline.detect.weights import STARTERS, load_weights
from pipeline.training.datasets.scenes import BANDS, SCENES
from pipeline.training.pseudolabels import THICK, THIN

FULLY_CLOUDY = ("eolearn-0", "eolearn-1")
PLACEMENTS = ("as it lies", "mirrored")
READS = (("L1C", "L1C"), ("L2A", "L1C-no-B10"), ("L2A", "L2A"))  # (starter, the bands it is given)


def scene(name: str, bands: str, placement: str) -> np.ndarray:
    """``dn (C, y, x) float32`` of a fully cloudy scene in ``bands`` (L1C: all 13; L1C-no-B10: the L2A starter on
    L1C; L2A: simulated L2A), as it lies or mirrored to fill a 256 px tile."""
    from pipeline.training.datasets.boa import l2a_bands, simulate_boa

    dn = SCENES[name]().dn.astype(np.float32)
    if bands == "L1C-no-B10":
        dn = np.delete(dn, BANDS.index("B10"), axis=0)
    elif bands == "L2A":  # fully cloudy: no clear pixel calibrates the map
        dn = simulate_boa(l2a_bands(dn, BANDS), clear=np.zeros(dn.shape[1:], bool)).astype(np.float32)
    h, w = dn.shape[1:]
    return dn if placement == "as it lies" else np.pad(dn, ((0, 0), (0, 256 - h), (0, 256 - w)), "symmetric")


@cache
def predictor(level: str) -> Predictor:
    from pipeline.shipped import shipped_dir

    weights = load_weights(str(shipped_dir("weights") / STARTERS[level]))  # the shipped file, whatever the environment
    return Predictor(weights, InferSpec(overlap=0, device="cpu", precision="fp32"))


CASES = [
    pytest.param(starter, bands, name, placement, id=f"{starter} starter-{bands}-{name}-{placement.replace(' ', '-')}")
    for starter, bands in READS
    for name in FULLY_CLOUDY
    for placement in PLACEMENTS
]


@pytest.mark.parametrize(("starter", "bands", "name", "placement"), CASES)
def test_a_fully_cloudy_real_scene_is_called_cloud(starter, bands, name, placement):
    dn = scene(name, bands, placement)
    assert dn.any(axis=0).all()  # every pixel valid: the share is of the whole scene
    classes = predictor(starter).predict(dn, mask_nodata=False).classes
    share = round(100 * float(np.isin(classes, (THICK, THIN)).mean()), 1)
    print(f"\n{starter} starter on {bands}, {name} {placement}: {share} % cloud")  # docs/training-log.md
    assert share >= 90, f"{starter} starter on {bands}: {name} {placement} is {share} % cloud, expected at least 90 %"
