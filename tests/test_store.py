"""The Zarr v3 mask store: layout readable by plain xarray in a fresh process, region writes, manifest, lock."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.stats import SceneStats, class_counts, to_frame, write_table
from pipeline.store import Grid, MaskStore, StoreLockedError

GRID = Grid("EPSG:32633", (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0), (300, 250))
TIMES = ["2017-02-16T10:21:01", "2017-03-01T10:21:01"]


def mask(seed=0):
    m = np.random.default_rng(seed).integers(0, 4, (300, 250)).astype(np.uint8)
    m[:10] = 255
    return m


def test_stats_fractions_and_table(tmp_path):
    m = mask()
    counts = class_counts(m)
    assert counts.tolist()[-1] == 10 * 250 and counts.sum() == m.size
    s = SceneStats("A", status="ok", provider_cloud_cover=12.5).set_counts(counts)
    assert s.valid_pixels == 290 * 250
    assert s.frac_clear + s.frac_thick_cloud + s.frac_thin_cloud + s.frac_cloud_shadow == pytest.approx(1.0)
    assert s.cloud_cover == pytest.approx(100 * (s.frac_thick_cloud + s.frac_thin_cloud))
    frame = to_frame([s, SceneStats("B", status="failed", reason="asset B04 missing (HTTP 404)")])
    write_table(frame, tmp_path / "t.csv")
    write_table(frame, tmp_path / "t.parquet")
    import pandas as pd

    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back.index) == ["A", "B"] and back.loc["B", "reason"].startswith("asset B04")
    assert "item_id" in (tmp_path / "t.csv").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        write_table(frame, tmp_path / "t.xlsx")


def test_store_round_trip_in_a_fresh_process(tmp_path):
    store = MaskStore(tmp_path / "out.zarr")
    with store.lock():
        group = store.ensure_group(GRID, TIMES, ["S2A_A", "S2B_B"], (96, 96), attrs={"model": "mscloudcam"})
        m = mask()
        store.write_scene(group, 0, m, SceneStats("S2A_A", status="ok").set_counts(class_counts(m)))
        store.mark_done("S2A_A", {"status": "ok", "group": group, "time_index": 0})
    assert group == "epsg32633_x330000_y5822040_res10_300x250"
    code = textwrap.dedent(f"""
        import json, numpy as np, xarray as xr, rioxarray
        ds = xr.open_zarr({str(tmp_path / 'out.zarr')!r}, group={group!r})
        m = ds.mask
        print(json.dumps(dict(crs=str(ds.rio.crs), mcrs=str(m.rio.crs), dtype=str(m.dtype), nodata=int(m.rio.nodata),
            flags=m.attrs["flag_meanings"], values=[int(v) for v in m.attrs["flag_values"]], ids=[str(i) for i in ds.item_id.values], x0=float(ds.x[0]), y0=float(ds.y[0]),
            status=ds.status.values.tolist(), cc=float(ds.cloud_cover[0]), unwritten=int(m.isel(time=1).max()),
            model=ds.attrs["model"], transform=list(m.rio.transform())[:6], first=m.isel(time=0).values[10:12, :4].tolist())))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["crs"] == out["mcrs"] == "EPSG:32633"
    assert out["dtype"] == "uint8" and out["nodata"] == 255
    assert out["flags"] == "clear thick_cloud thin_cloud cloud_shadow" and out["values"] == [0, 1, 2, 3]
    assert out["ids"] == ["S2A_A", "S2B_B"] and out["model"] == "mscloudcam"
    assert (out["x0"], out["y0"]) == (330005.0, 5822035.0)  # pixel centres of the source grid
    assert out["transform"] == [10.0, 0.0, 330000.0, 0.0, -10.0, 5822040.0]
    assert out["status"] == [1, 0] and out["unwritten"] == 255
    assert out["first"] == mask()[10:12, :4].tolist()
    assert store.done() == {"S2A_A": {"status": "ok", "group": group, "time_index": 0}}


def test_rewriting_a_scene_gives_identical_bytes(tmp_path):
    store = MaskStore(tmp_path / "s.zarr")
    group = store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96))
    stats = SceneStats("B", status="ok").set_counts(class_counts(mask(1)))
    store.write_scene(group, 1, mask(1), stats)
    chunk_files = sorted((tmp_path / "s.zarr" / group / "mask").rglob("c/*/*/*"))
    before = {p: p.read_bytes() for p in chunk_files}
    store.write_scene(group, 1, mask(1), stats)  # a retried task
    assert before and all(p.read_bytes() == b for p, b in before.items())


def test_existing_group_for_other_scenes_is_refused(tmp_path):
    store = MaskStore(tmp_path / "s.zarr")
    store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96))
    assert store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96)) == GRID.name  # same job again: reused
    with pytest.raises(ConfigError, match="created for other scenes"):
        store.ensure_group(GRID, TIMES, ["A", "C"], (96, 96))


def test_second_writer_is_refused_and_stale_locks_are_taken_over(tmp_path):
    store = MaskStore(tmp_path / "s.zarr")
    with store.lock():
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}.*wait for it"):
            with MaskStore(tmp_path / "s.zarr").lock():
                pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "s.zarr" / "_cloudmask" / "lock.json").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with store.lock():  # the holder is gone
        pass
    assert not (tmp_path / "s.zarr" / "_cloudmask" / "lock.json").exists()


def test_probabilities_are_refused_on_a_store_written_without_them(tmp_path):
    """A later job asking for probabilities on a group written without them is refused (naming what to do), and
    the group is left as it was."""
    store = MaskStore(tmp_path / "p.zarr")
    group = store.ensure_group(GRID, TIMES, ["S2A_A", "S2B_B"], (96, 96))
    before = sorted(p.relative_to(store.path) for p in store.path.rglob("*"))
    with pytest.raises(ConfigError, match="written without probabilities; drop --probabilities or write this job "
                                          "to another --out"):
        store.ensure_group(GRID, TIMES, ["S2A_A", "S2B_B"], (96, 96), probabilities=True)
    assert sorted(p.relative_to(store.path) for p in store.path.rglob("*")) == before
