"""Processing-baseline harmonisation, checked against real N0209 and N0400 Sentinel-2 L1C cut-outs."""

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.errors import InputError
from pipeline.read.radiometry import decide, harmonise, metadata_offset, processing_baseline

FIXTURES = Path(__file__).parent / "data"

OLD = "S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159"
NEW = "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549"


def read(name):
    with rasterio.open(FIXTURES / "ukis-pysat" / f"{name}.tif") as src:
        return src.read()


def test_baseline_from_properties_and_product_ids():
    assert processing_baseline({"s2:processing_baseline": "05.09"}) == "05.09"
    assert processing_baseline({"id": NEW}) == "04.00"
    assert processing_baseline({"s2:product_uri": OLD + ".SAFE"}) == "02.09"
    assert processing_baseline({}) is None
    assert [metadata_offset(b) for b in ("02.09", "03.01", "04.00", "05.11", None)] == [0, 0, 1000, 1000, 0]
    with pytest.raises(InputError, match="'N0400'"):
        metadata_offset("N0400")


def test_real_scenes_metadata_and_data_agree():
    old, new = read(OLD), read(NEW)
    h_old, h_new = decide({"id": OLD}, old[10]), decide({"id": NEW}, new[10])
    assert (h_old.offset, h_new.offset) == (0, 1000)
    assert "agrees" in h_old.reason and "agrees" in h_new.reason


def test_wrong_metadata_is_caught_by_the_data():
    new = read(NEW)
    h = decide({"s2:processing_baseline": "03.01"}, new[10])  # says old, data carries the offset
    assert h.offset == 1000 and "shows the 04.00 offset" in h.reason
    h = decide({"s2:processing_baseline": "04.00"}, read(OLD)[10])  # says new, data has none
    assert h.offset == 0 and "shows no offset" in h.reason


def test_harmonise_matches_the_products_own_toa_conversion():
    """N0400 DN minus 1000 over 10000 is the TOA reflectance shipped with the product (ukis-pysat's _toa.tif)."""
    dn = read(NEW)
    with rasterio.open(FIXTURES / "ukis-pysat" / f"{NEW}_toa.tif") as src:
        toa = src.read().astype(np.float64)
    if toa.max() > 2:  # stored scaled by 10000
        toa = toa / 10000
    np.testing.assert_allclose(harmonise(dn, 1000) / 10000, toa, atol=1e-4)


def test_harmonise_keeps_nodata_and_clips_at_one():
    dn = np.array([0, 500, 1000, 1001, 4000], np.uint16)
    np.testing.assert_array_equal(harmonise(dn, 1000), [0, 1, 1, 1, 3000])
    import dask.array as da

    np.testing.assert_array_equal(harmonise(da.from_array(dn, chunks=2), 1000).compute(), [0, 1, 1, 1, 3000])
    assert harmonise(dn, 0) is dn
