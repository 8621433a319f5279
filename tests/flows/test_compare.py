"""Peers through the same pipeline (``--model``), and ``cloudmask compare`` between cubes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))


def test_peer_cube_and_comparison(api, first_run, tmp_path):
    out = tmp_path / "s2cloudless.zarr"
    p = subprocess.run([CLOUDMASK, "run", "--stac-url", api, "--collection", "sentinel-2-l1c", "--bbox=-180,-90,180,90",
                        "--out", str(out), "--model", "s2cloudless", "--chunk", "96", "--overlap", "16",
                        "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    group = next(g.name for g in out.iterdir() if g.name.startswith("epsg32631"))
    ds = xr.open_zarr(out, group=group, consolidated=False)
    assert ds.attrs["model"] == "s2cloudless" and ds.attrs["weights_sha256"].startswith("s2cloudless==")
    mask = ds.mask.values
    assert set(np.unique(mask)) <= {0, 1, 255} and (mask == 1).mean() > 0.1  # the cumulus scene has clouds

    # the same cube against itself: total agreement; against MSCloudCAM's: in s2cloudless's two classes
    same = subprocess.run([CLOUDMASK, "compare", str(out), str(out), "--json", str(tmp_path / "same.json")],
                          capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    r = json.loads((tmp_path / "same.json").read_text())
    assert r["aacc"] == 100.0 and r["classes"] == ["clear", "cloud"] and r["scenes"] == 3
    cross = subprocess.run([CLOUDMASK, "compare", str(first_run[0]), str(out), "--json", str(tmp_path / "x.json")],
                           capture_output=True, text=True, timeout=300)
    assert cross.returncode == 0, cross.stderr
    r = json.loads((tmp_path / "x.json").read_text())
    assert r["models"] == ["mscloudcam_tiny", "s2cloudless"] and r["coarse"] and r["scenes"] == 3
    cm = np.array(r["confusion"])
    assert cm.shape == (2, 2) and cm.sum() == r["pixels"] > 0
    assert "overall agreement" in cross.stdout
    bad = subprocess.run([CLOUDMASK, "run", "--stac-url", api, "--collection", "c", "--out", str(tmp_path / "b.zarr"),
                          "--model", "ukis-csmask", "--weights", "w.safetensors"], capture_output=True, text=True)
    assert bad.returncode == 2 and "drop --weights" in bad.stderr
