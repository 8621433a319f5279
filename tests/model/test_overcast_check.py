"""The overcast check (``pipeline/detect/overcast.py``): a full tile its own view calls partly cloud is looked at
again from afar, and the cloud of an overcast far view fills the own view's clear pixels.

The real shipped L1C starter on eo-learn's fully cloudy scenes mirrored to fill tiles (the case the check exists
for; ``test_overcast_scenes.py`` holds the shares) shows that the check is what calls them cloud, that it only adds
cloud, that the statistics count exactly the pixels it made cloud, and that tiles waiting for their far view do
not mix between blocks queued together. Synthetic tensors pin which tiles are looked at and what is taken.
"""

from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import pytest
import torch

from pipeline.config import InferSpec
from pipeline.detect import overcast
from pipeline.detect.infer import Predictor
from pipeline.detect.weights import STARTERS, load_weights
from pipeline.training.datasets.scenes import SCENES
from pipeline.training.pseudolabels import CLEAR, SHADOW, THICK, THIN


@cache
def starter(check: bool) -> Predictor:
    from pipeline.shipped import shipped_dir

    weights = load_weights(str(shipped_dir("weights") / STARTERS["L1C"]))
    return Predictor(weights, InferSpec(overlap=0, device="cpu", precision="fp32", no_overcast_check=not check))


def mirrored(name: str, size: int = 256) -> np.ndarray:
    """``dn (13, size, size) float32``: an eo-learn scene mirrored (``numpy.pad``, symmetric) to fill ``size`` px."""
    dn = SCENES[name]().dn.astype(np.float32)
    h, w = dn.shape[1:]
    return np.pad(dn, ((0, 0), (0, size - h), (0, size - w)), "symmetric")


def cloud_share(classes: np.ndarray) -> float:
    return 100 * float(np.isin(classes, (THICK, THIN)).mean())


@pytest.mark.parametrize("name", ["eolearn-0", "eolearn-1"])
def test_the_check_calls_a_tile_filling_cloud_cloud_and_only_adds_cloud(name):
    dn = mirrored(name)
    own = starter(False).predict(dn)
    checked = starter(True).predict(dn)
    assert cloud_share(own.classes) < 90 <= cloud_share(checked.classes)
    kept = own.classes != CLEAR  # the own view's cloud and shadow stay as they were
    assert (checked.classes[kept] == own.classes[kept]).all()
    made = (own.classes == CLEAR) & np.isin(checked.classes, (THICK, THIN))
    assert made.sum() > 0 and checked.counts[-1] == made.sum()  # the statistics count exactly what it made
    assert len(own.counts) == 5 and checked.counts[:-1].sum() == own.counts.sum() == dn[0].size  # no check, no count


def test_tiles_waiting_for_their_far_view_do_not_mix_between_blocks_queued_together():
    """A haze tile (looked at again) beside a clear one (not), and the clear one alone, queued from two threads at
    once: each gets what it gets alone; the far views ran."""
    haze, clear = mirrored("eolearn-1"), mirrored("eolearn-3")
    scenes = [np.concatenate([haze, clear], axis=2), clear, haze]
    p = starter(True)
    alone = [p.predict(s).classes for s in scenes]
    p.stats.reset()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(lambda s: p.predict(s).classes, s) for s in scenes]
        together = [f.result(timeout=300) for f in futures]  # a tile blended into another block hangs its own
    assert p.stats.far_views == 2  # the haze tile of each scene that holds one
    for a, b in zip(alone, together):
        assert (a == b).all()
    assert cloud_share(alone[0][:, :256]) >= 90 and cloud_share(alone[0][:, 256:]) == cloud_share(alone[1])


def tile_batch(blue: float, n: int = 1, size: int = 16, ndsi: float = 0.0) -> torch.Tensor:
    """``(n, 13, size, size)`` model input (DN / 3000) whose blue band B02 is ``blue`` reflectance, the rest 0.2
    but B11, set so that the NDSI (B03 - B11) / (B03 + B11) is ``ndsi``."""
    x = torch.full((n, 13, size, size), 2000 / 3000)
    x[:, 1] = blue * 10000 / 3000
    x[:, 11] = x[:, 2] * (1 - ndsi) / (1 + ndsi)
    return x


def probabilities(classes: torch.Tensor, k: int = 4) -> torch.Tensor:
    """``(N, k, T, T)`` probabilities whose most probable class is ``classes (N, T, T)``."""
    return torch.nn.functional.one_hot(classes.long(), k).permute(0, 3, 1, 2).float() * 0.7 + 0.3 / k


CLOUD = [THICK, THIN]  # the starters' class indices are their codes


def test_which_tiles_are_looked_at_again():
    half = torch.zeros(1, 16, 16, dtype=torch.long)
    half[:, :8] = THIN  # the own view calls half the tile cloud
    args = dict(bands=(2, 11), cloud=CLOUD)  # B03, B11 of the 13 L1C bands
    assert overcast.needs_far_view(tile_batch(0.15), probabilities(half), **args).tolist() == [True]
    assert overcast.needs_far_view(tile_batch(0.05), probabilities(half), **args).tolist() == [True]  # haze after
    # atmospheric correction is dark in blue too: no gate on brightness
    assert overcast.needs_far_view(tile_batch(0.15, ndsi=0.35), probabilities(half), **args).tolist() == [True]
    assert overcast.needs_far_view(tile_batch(0.15, ndsi=0.45), probabilities(half), **args).tolist() == [False]  # snow
    all_clear = torch.full_like(half, CLEAR)
    assert overcast.needs_far_view(tile_batch(0.15), probabilities(all_clear), **args).tolist() == [False]
    edge = tile_batch(0.15)
    edge[:, :, 0, 0] = 0  # one nodata pixel: the tile has an edge already
    assert overcast.needs_far_view(edge, probabilities(half), **args).tolist() == [False]


@pytest.mark.parametrize(("far_cloud_rows", "taken"), [(32, True), (30, True), (28, False)])
def test_only_an_overcast_far_view_fills_only_the_own_views_clear_pixels(far_cloud_rows, taken):
    """A 64 px tile's far view is a 32 px window of its canvas; ``far_cloud_rows`` of the window's rows are cloud:
    30 of 32 is 93.75 % of the tile (taken), 28 is 87.5 % (under ``OVERCAST``: nothing taken)."""
    own_classes = torch.full((1, 64, 64), CLEAR, dtype=torch.long)
    own_classes[:, 0, :4] = SHADOW
    own_classes[:, 1, :4] = THICK
    canvas, window = overcast.far_view_input(tile_batch(0.15, size=64))
    assert window == (slice(16, 48), slice(16, 48))
    assert canvas[0, 1, window[0], window[1]].allclose(tile_batch(0.15, size=32)[0, 1])  # averaged 2 x 2
    assert not canvas[0, :, :16].any() and not canvas[0, :, 48:].any()  # nodata around the tile
    far_classes = torch.full((1, 64, 64), CLEAR, dtype=torch.long)
    far_classes[:, 16 : 16 + far_cloud_rows, window[1]] = THIN
    own, far = probabilities(own_classes), probabilities(far_classes)
    probs, took = overcast.overcast_merge(own, far, window, CLEAR, CLOUD)
    after = probs.argmax(dim=1)
    assert (after[:, :2, :4] == own_classes[:, :2, :4]).all()  # shadow and cloud of the own view stay
    if taken:
        assert took.sum() >= (2 * far_cloud_rows - 1) * 64 - 8  # every clear pixel the far view calls cloud
        assert (after[took] == THIN).all() and (own_classes[took] == CLEAR).all()
        assert (after[~took] == own_classes[~took]).all()
    else:
        assert not took.any() and (after == own_classes).all()


@pytest.mark.slow
def test_the_job_reports_per_scene_the_cloud_the_check_added(tmp_path):
    """A job (local STAC API of COGs, Dask's local threads, the shipped L1C starter, the job's tiles) over eo-learn's
    haze and its clear month mirrored to 512 px: the statistics table says how much cloud the check made in each
    scene; without the check the haze scene is under 90 % cloud and the column is 0."""
    import pipeline
    from flows.archive import collection, write_item
    from flows.stacserver import local_stac_api

    names = {"S2A_MSIL1C_20150805_HAZE": "eolearn-1", "S2A_MSIL1C_20150904_CLEAR": "eolearn-3"}
    items = [
        write_item(
            mirrored(scene, 512).astype(np.uint16),
            tmp_path / "archive",
            item_id,
            epsg=32633,
            origin=(500000.0, 5100000.0),
            datetime=f"2015-0{8 + n}-05T10:00:00Z",
            mgrs_tile="33TVM",
        )
        for n, (item_id, scene) in enumerate(names.items())
    ]
    with local_stac_api([collection()], items) as url:
        run = dict(stac_url=url, collection="sentinel-2-l1c", bbox=(-180, -90, 180, 90), precision="fp32")
        checked = pipeline.run(out=str(tmp_path / "checked.zarr"), **run)
        plain = pipeline.run(out=str(tmp_path / "plain.zarr"), no_overcast_check=True, **run)
    haze, clear = "S2A_MSIL1C_20150805_HAZE", "S2A_MSIL1C_20150904_CLEAR"
    assert (checked.status == "ok").all() and (plain.status == "ok").all()
    assert plain.loc[haze, "cloud_cover"] < 90 <= checked.loc[haze, "cloud_cover"]
    added = checked.loc[haze, "cloud_cover"] - plain.loc[haze, "cloud_cover"]
    assert 0 < checked.loc[haze, "pct_overcast_check"] <= added + 0.5
    assert checked.loc[clear, "pct_overcast_check"] == 0 and plain.pct_overcast_check.isna().all()  # not run
    assert checked.loc[clear, "cloud_cover"] == plain.loc[clear, "cloud_cover"]
