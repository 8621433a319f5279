"""Peers through the same pipeline (``--model``), and ``cloudmask compare`` between cubes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))


def test_peer_cube_and_comparison(api, first_run, tmp_path):
    out = tmp_path / "s2cloudless.zarr"
    p = subprocess.run(
        [
            CLOUDMASK,
            "run",
            "--stac-url",
            api,
            "--collection",
            "sentinel-2-l1c",
            "--bbox=-180,-90,180,90",
            "--out",
            str(out),
            "--model",
            "s2cloudless",
            "--chunk",
            "96",
            "--overlap",
            "16",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    group = next(g.name for g in out.iterdir() if g.name.startswith("epsg32631"))
    ds = xr.open_zarr(out, group=group, consolidated=False)
    assert ds.attrs["model"] == "s2cloudless" and ds.attrs["weights_sha256"].startswith("s2cloudless==")
    mask = ds.mask.values
    assert set(np.unique(mask)) <= {0, 1, 255} and (mask == 1).mean() > 0.1  # the cumulus scene has clouds

    # against MSCloudCAM's cube (the test model's four classes): in s2cloudless's two classes, the confusion
    # matrix is the one counted here from the two stores' pixels (thick and thin are cloud, shadow is clear)
    cross = subprocess.run(
        [CLOUDMASK, "compare", str(first_run[0]), str(out), "--json", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cross.returncode == 0, cross.stderr
    r = json.loads((tmp_path / "x.json").read_text())
    assert r["models"] == ["mscloudcam_tiny", "s2cloudless"] and r["coarse"] and r["scenes"] == 3
    assert r["classes"] == ["clear", "cloud"]
    expected = np.zeros((2, 2), np.int64)
    for g in (p.name for p in out.iterdir() if p.name.startswith("epsg")):
        a = xr.open_zarr(first_run[0], group=g, consolidated=False)
        b = xr.open_zarr(out, group=g, consolidated=False)
        for t in range(a.sizes["time"]):
            assert str(a.item_id[t].values) == str(b.item_id[t].values)
            if int(a.status[t]) != 1:
                continue
            ma, mb = a.mask[t].values, b.mask[t].values
            both = (ma != 255) & (mb != 255)
            cloud_a = np.isin(ma[both], (1, 2)).astype(int)
            np.add.at(expected, (cloud_a, mb[both].astype(int)), 1)
    np.testing.assert_array_equal(np.array(r["confusion"]), expected)
    assert (expected.sum(axis=1) > 0).all() and (expected.sum(axis=0) > 0).all()  # both classes on both sides
    assert 0 < r["aacc"] < 100 and r["pixels"] == expected.sum()
    assert "overall agreement" in cross.stdout
    bad = subprocess.run(
        [
            CLOUDMASK,
            "run",
            "--stac-url",
            api,
            "--collection",
            "c",
            "--out",
            str(tmp_path / "b.zarr"),
            "--model",
            "ukis-csmask",
            "--weights",
            "w.safetensors",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "drop --weights" in bad.stderr
