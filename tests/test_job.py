"""The masking job end to end: real pgstac API -> COG archive of real scenes -> Dask workers -> Zarr store."""

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.job.execute import run_job
from pipeline.store.maskstore import MaskStore, StoreLockedError

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset


def test_job_writes_the_store_and_survives_a_bad_scene(api, first_run, test_weights_file, spec):
    out, result, lines = first_run
    by_id = {s.item_id: s for s in result.stats}
    assert len(by_id) == 4 and result.skipped == 0
    bad = by_id["S2A_MSIL1C_20170308_T33UUU"]
    assert bad.status == "failed" and "B04" in bad.reason
    ok = [s for s in result.stats if s.status == "ok"]
    assert len(ok) == 3
    for s in ok:
        assert s.pct_clear + s.pct_thick_cloud + s.pct_thin_cloud + s.pct_cloud_shadow == pytest.approx(100.0)
    assert any("[4/4]" in line for line in lines) and any("failed" in line for line in lines)
    groups = sorted(p.name for p in out.iterdir() if p.name.startswith("epsg"))
    assert [g.split("_")[0] for g in groups] == ["epsg32631", "epsg32633"]
    code = textwrap.dedent(f"""
        import json, xarray as xr, rioxarray, numpy as np
        ds = xr.open_zarr({str(out)!r}, group={[g for g in groups if g.startswith("epsg32633")][0]!r})
        print(json.dumps(dict(crs=str(ds.rio.crs), shape=list(ds.mask.shape), dtype=str(ds.mask.dtype),
            ids=[str(i) for i in ds.item_id.values], status=ds.status.values.tolist(),
            classes=np.unique(ds.mask.isel(time=0).values).tolist(), failed_max=int(ds.mask.isel(time=2).max()),
            x0=float(ds.x[0]), y0=float(ds.y[0]))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["crs"] == "EPSG:32633" and got["dtype"] == "uint8" and got["shape"] == [3, 200, 300]
    assert got["ids"] == ["S2A_MSIL1C_20170216_T33UUU", "S2A_MSIL1C_20170226_T33UUU", "S2A_MSIL1C_20170308_T33UUU"]
    assert got["status"] == [1, 1, 2] and got["failed_max"] == 255
    assert set(got["classes"]) <= {0, 1, 2, 3} and (got["x0"], got["y0"]) == (330005.0, 5822035.0)

    # the same job again: done scenes are skipped and not recomputed, the failed one is retried
    manifest = {p.name: p.stat().st_mtime_ns for p in (out / "_cloudmask" / "manifest").iterdir()}
    lines.clear()
    again = run_job(spec(api, out, test_weights_file), None, log=lines.append)
    assert again.skipped == 3 and any("skipping 3 scenes" in line for line in lines)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "_cloudmask" / "manifest").iterdir()} == manifest
    assert [s.status for s in again.stats].count("ok") == 3 and len(again.stats) == 4


def test_second_job_on_the_same_store_is_refused(api, tmp_path, test_weights_file, spec):
    out = tmp_path / "locked.zarr"
    with MaskStore(out).lock():
        with pytest.raises(StoreLockedError, match="being written by another job"):
            run_job(spec(api, out, test_weights_file), None, log=lambda _: None)


def test_cli_run_with_a_job_file_then_stats(api, tmp_path, test_weights_file):
    from pathlib import Path

    import pandas as pd

    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(f"""
        stac_url: {api}
        collection: sentinel-2-l1c
        bbox: [-180, -90, 180, 90]
        out: {tmp_path / "cli.zarr"}
        weights: {test_weights_file}
        overlap: 16
        chunk: 96
        workers: 2
    """)
    )
    proc = subprocess.run(
        [cloudmask, "run", "--config", str(job), "--strict"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1, proc.stderr  # --strict and one broken scene
    out = proc.stdout
    assert "Dask dashboard: http://127.0.0.1:" in out and "[4/4]" in out
    assert "S2A_MSIL1C_20170308_T33UUU" in out and "failed" in out and "1 failed, 0 skipped" in out
    reason = next(line for line in out.splitlines() if line.startswith("failed S2A_MSIL1C_20170308_T33UUU: "))
    assert "B04.tif" in reason and len(reason) > 100  # whole, where the table cuts it at 60 characters
    again = subprocess.run([cloudmask, "run", "--config", str(job)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "skipping 3 scenes" in again.stdout  # one failed scene of four: not fatal
    stats = subprocess.run(
        [cloudmask, "stats", str(tmp_path / "cli.zarr"), "--parquet", str(tmp_path / "s.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    table = pd.read_parquet(tmp_path / "s.parquet")
    assert len(table) == 4 and (table["status"] == "ok").sum() == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("stac_url: x\nbogus: 1\n")
    p = subprocess.run([cloudmask, "run", "--config", str(bad)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "unknown keys ['bogus']" in p.stderr


def test_masks_do_not_depend_on_the_chunking_and_probabilities_agree(api, first_run, tmp_path, test_weights_file):
    """`cloudmask run` with another block size (and the probabilities option): every chunk of the first store
    holds the same bytes in the second, with a model whose classes vary."""
    import xarray as xr

    out, _, _ = first_run
    other = tmp_path / "other.zarr"
    cmd = [
        str(Path(sys.executable).with_name("cloudmask")),
        "run",
        "--stac-url",
        api,
        "--collection",
        "sentinel-2-l1c",
        "--bbox=-180,-90,180,90",
        "--out",
        str(other),
        "--weights",
        str(test_weights_file),
        "--overlap",
        "16",
        "--chunk",
        "149",
        "--probabilities",
        "--workers",
        "1",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    for group in sorted(p.name for p in out.iterdir() if p.name.startswith("epsg")):
        a = xr.open_zarr(out, group=group, consolidated=False)
        b = xr.open_zarr(other, group=group, consolidated=False)
        assert a.mask.encoding["chunks"] != b.mask.encoding["chunks"]
        assert len(np.unique(a.mask.values[a.status.values == 1])) >= 3  # classes vary
        _, cy, cx = a.mask.encoding["chunks"]
        for y in range(0, a.sizes["y"], cy):  # chunk for chunk of the first store
            for x in range(0, a.sizes["x"], cx):
                window = dict(y=slice(y, y + cy), x=slice(x, x + cx))
                np.testing.assert_array_equal(
                    a.mask.isel(window).values, b.mask.isel(window).values, err_msg=f"{group} chunk at y={y}, x={x}"
                )
        assert "probability" not in a and b.probability.dtype == np.uint8
        p = b.probability.values.astype(np.int64)  # (time, class, y, x), p x 250, 255 = nodata
        valid = b.mask.values != 255
        np.testing.assert_array_equal(p[:, 0][~valid], 255)
        assert np.abs(p.sum(axis=1)[valid] - 250).max() <= 2  # rounding of four classes
        # the stored class has the highest probability (rounding to p x 250 keeps the order, may make ties)
        at_mask = np.take_along_axis(p, np.where(valid, b.mask.values, 0)[:, None].astype(np.int64), axis=1)[:, 0]
        np.testing.assert_array_equal(at_mask[valid], p.max(axis=1)[valid])
        assert list(b["class"].values) == ["clear", "thick_cloud", "thin_cloud", "cloud_shadow"]


def test_readme_analysis(first_run, archive, tmp_path):
    """The README's analysis block, run as written on a job's store: clear-sky frequency and median composite."""
    import re
    from pathlib import Path

    import rasterio

    out, _, _ = first_run
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"<!-- analysis -->\n```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": archive}))
    group = next(p.name for p in out.iterdir() if p.name.startswith("epsg32633"))
    code = code.replace('"demo-out/masks.zarr"', repr(str(out))).replace(
        '"demo-out/archive/items.json"', repr(str(tmp_path / "items.json"))
    )
    code = re.sub(r'group = "[^"]+"', f"group = {group!r}", code)
    code += "\nimport numpy as np\nnp.save('freq.npy', clear_sky_frequency.values)\nnp.save('comp.npy', composite.B04.values)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    freq, comp = np.load(tmp_path / "freq.npy"), np.load(tmp_path / "comp.npy")

    # the same figures from the files themselves: the two good scenes of the 32633 grid
    import xarray as xr

    masks = xr.open_zarr(out, group=group, consolidated=False).mask.values[:2]
    ids = ["S2A_MSIL1C_20170216_T33UUU", "S2A_MSIL1C_20170226_T33UUU"]
    red = []
    for item_id in ids:
        href = next(i for i in archive if i["id"] == item_id)["assets"]["B04"]["href"]
        with rasterio.open(href) as src:
            red.append(src.read(1).astype(np.float32))
    assert freq.shape == comp.shape == (200, 300)
    expected = (masks == 0).sum(0) / (masks != 255).sum(0)
    np.testing.assert_allclose(freq, expected, equal_nan=True)
    clear = np.where(masks == 0, np.stack(red), np.nan)
    with np.errstate(all="ignore"):
        import warnings

        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(comp, np.nanmedian(clear, axis=0), equal_nan=True)
    # the test model's classes vary, so the figures do too: some pixels clear in both scenes, some in one, some
    # in none, and a composite with real values where any scene was clear
    assert {0.0, 0.5, 1.0} <= set(np.unique(freq[np.isfinite(freq)]).tolist())
    assert 0.01 < np.isfinite(comp).mean() < 1.0 and np.nanmin(comp) > 0


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_every_python_block_of_readme_and_docs_runs(first_run, archive, tmp_path):
    """Every Python block of README.md and docs/ runs as written, on a job's store in place of the demo's output
    (the test archive's readable scenes in place of demo-out/archive). docs/training-log.md is left out: it is the
    record of past training runs, whose blocks read those runs' folders, which are not shipped."""
    root = Path(__file__).parents[1]
    out, _, _ = first_run
    readable = [
        i
        for i in archive
        if all(
            Path(a["href"].removeprefix("file://")).exists()
            for a in i["assets"].values()
            if "data" in a.get("roles", ["data"])
        )
    ]
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": readable}))
    group = next(p.name for p in out.iterdir() if p.name.startswith("epsg32633"))
    docs = [root / "README.md"] + sorted(p for p in (root / "docs").glob("*.md") if p.name != "training-log.md")
    blocks = [(path.name, code) for path in docs for code in python_blocks(path)]
    assert len(blocks) >= 2, blocks
    for name, code in blocks:
        code = code.replace('"demo-out/masks.zarr"', repr(str(out))).replace(
            '"demo-out/archive/items.json"', repr(str(tmp_path / "items.json"))
        )
        code = re.sub(r'group = "[^"]+"', f"group = {group!r}", code)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, f"{name}:\n{code}\n{proc.stderr[-3000:]}"


def test_scenes_in_flight_are_bounded_and_earlier_scenes_go_first(api, tmp_path, test_weights_file, spec):
    """With --in-flight 1 (then 2), never more than one (two) scenes have work waiting or running on the
    scheduler, and of two scenes submitted together the first starts its model first and finishes first."""
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Watch(SchedulerPlugin):
        def __init__(self):
            self.busiest, self.first_mask, self.submitted = 0, [], []

        def update_graph(self, scheduler, *args, tasks=(), **kwargs):
            for scene in SCENES:
                if scene not in self.submitted and any(scene in str(k) for k in tasks):
                    self.submitted.append(scene)

        def transition(self, key, start, finish, *args, **kwargs):
            active = {
                scene
                for k, ts in self.scheduler.tasks.items()
                if ts.state in ("waiting", "queued", "processing", "no-worker")
                for scene in SCENES
                if scene in str(k)
            }
            self.busiest = max(self.busiest, len(active))
            scene = next((s for s in SCENES if f"mask_{s}" in str(key)), None)
            if finish == "processing" and scene and scene not in self.first_mask:
                self.first_mask.append(scene)

    SCENES = ["S2A_MSIL1C_20170216_T33UUU", "S2A_MSIL1C_20170226_T33UUU", "S2B_MSIL1C_20180701_T31PCR"]
    for in_flight in (1, 2):
        watch = Watch()
        lines = []
        with (
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            watch.scheduler = cluster.scheduler
            cluster.scheduler.add_plugin(watch)
            run_job(
                spec(api, tmp_path / f"f{in_flight}.zarr", test_weights_file, in_flight=in_flight),
                client,
                log=lines.append,
            )
        assert watch.busiest == in_flight  # the bound was reached and held
        assert sorted(watch.submitted) == sorted(SCENES)
    first, second = watch.submitted[:2]  # submitted together; the first has the higher priority
    assert watch.first_mask[0] == first
    finished = [line.split()[1].rstrip(":") for line in lines if line.startswith("[")]
    assert finished.index(first) < finished.index(second)


def test_a_store_refuses_another_models_masks_before_any_work(api, first_run, random_weights_file, tmp_path):
    """Resuming a store with other weights, another model or without its probabilities setting is refused in one
    line before any cluster starts, and the store is left byte for byte as it was."""
    import shutil

    store = tmp_path / "copy.zarr"
    shutil.copytree(first_run[0], store)

    def snapshot():
        return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}

    before = snapshot()
    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    base = [
        cloudmask,
        "run",
        "--stac-url",
        api,
        "--collection",
        "sentinel-2-l1c",
        "--bbox=-180,-90,180,90",
        "--out",
        str(store),
        "--overlap",
        "16",
        "--chunk",
        "96",
    ]
    for extra, named in (
        (["--weights", str(random_weights_file)], "weights_sha256: the store has"),
        (["--model", "ukis-csmask"], "model: the store has 'mscloudcam_tiny', this run 'ukis-csmask'"),
    ):
        p = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and named in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "starting the" not in p.stdout
    assert snapshot() == before


def test_analysts_open_the_store_plainly_without_warnings(first_run):
    """Plain xr.open_zarr(store, group=g), xr.open_datatree(store, engine="zarr") and zarr.open_group in a fresh
    process, warnings as errors: consolidated metadata is current and the bookkeeping folder is not a node."""
    store = first_run[0]
    code = textwrap.dedent(f"""
        import warnings, xarray as xr, zarr
        warnings.simplefilter("error")
        root = zarr.open_group({str(store)!r}, mode="r")
        groups = sorted(n for n, _ in root.members())
        assert all(not n.startswith("_") for n in groups), groups
        assert root.attrs["cloudmask"]["model"] == "mscloudcam_tiny", dict(root.attrs)
        ds = xr.open_zarr({str(store)!r}, group=groups[0])
        tree = xr.open_datatree({str(store)!r}, engine="zarr")
        assert sorted(tree.children) == groups
        assert int(tree[groups[0]]["status"].max()) >= 1 and tree[groups[0]]["mask"].dtype == "uint8"
        print(len(groups))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "2", p.stderr[-2000:]


def test_verify_finds_lost_and_damaged_scenes_and_a_run_redoes_them(api, first_run, tmp_path, test_weights_file):
    """A finished scene whose mask chunk is deleted, another whose chunk is truncated: the store still says done.
    `cloudmask verify` names both (exit 1); `cloudmask run --verify` redoes them to the original bytes."""
    import shutil

    import xarray as xr

    store = tmp_path / "v.zarr"
    shutil.copytree(first_run[0], store)
    groups = sorted(p.parent.parent for p in store.glob("*/mask/zarr.json"))
    original = {g.name: xr.open_zarr(store, group=g.name, consolidated=False).mask.values for g in groups}
    chunks = sorted(p for g in groups for p in (g / "mask" / "c").rglob("*") if p.is_file())
    chunks[0].unlink()
    chunks[-1].write_bytes(chunks[-1].read_bytes()[:10])
    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    p = subprocess.run([cloudmask, "verify", str(store)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "2 damaged" in p.stdout, p.stdout + p.stderr
    assert "valid pixels" in p.stdout and "cannot be read back" in p.stdout
    run = subprocess.run(
        [
            cloudmask,
            "run",
            "--stac-url",
            api,
            "--collection",
            "sentinel-2-l1c",
            "--bbox=-180,-90,180,90",
            "--out",
            str(store),
            "--weights",
            str(test_weights_file),
            "--overlap",
            "16",
            "--chunk",
            "96",
            "--verify",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and "2 damaged, redone below" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    for g in groups:
        np.testing.assert_array_equal(
            xr.open_zarr(store, group=g.name, consolidated=False).mask.values, original[g.name]
        )
    again = subprocess.run([cloudmask, "verify", str(store)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 damaged" in again.stdout


def test_a_store_grows_a_then_a_union_b_equals_one_run(api, first_run, tmp_path, test_weights_file, spec):
    """Run A (February), then A and B (all scenes), then A again: scene by scene the masks and statistics of one
    run over everything (first_run), done scenes not recomputed, the table whole after the narrower re-run."""
    import dataclasses

    import pandas as pd
    import xarray as xr

    out = tmp_path / "grow.zarr"
    everything = spec(api, out, test_weights_file)
    february = dataclasses.replace(
        everything, search=dataclasses.replace(everything.search, datetime="2017-02-01/2017-02-28")
    )
    a = run_job(february, None, log=lambda line: None)
    assert sorted(s.item_id for s in a.stats) == ["S2A_MSIL1C_20170216_T33UUU", "S2A_MSIL1C_20170226_T33UUU"]
    both = run_job(everything, None, log=lambda line: None)
    assert both.skipped == 2  # A's scenes are not recomputed
    reference = MaskStore(first_run[0])

    def by_item(store):
        found = {}
        for group in (p.parent.name for p in Path(store).glob("*/mask")):
            ds = xr.open_zarr(store, group=group, consolidated=False)
            for t, item_id in enumerate(ds.item_id.values):
                found[str(item_id)] = (ds.mask[t].values, int(ds.valid_pixels[t]), float(ds.cloud_cover[t]))
        return found

    got, want = by_item(out), by_item(reference.path)
    assert sorted(got) == sorted(want)
    for item_id, (mask, valid, cloud) in want.items():
        np.testing.assert_array_equal(got[item_id][0], mask)
        assert got[item_id][1] == valid and np.allclose(got[item_id][2], cloud, equal_nan=True), item_id
    run_job(february, None, log=lambda line: None)  # narrower again: the table keeps every scene
    table = pd.read_csv(out / "_cloudmask" / "scenes.csv", index_col="item_id")
    assert sorted(table.index) == sorted(want) and (table.status == "ok").sum() == 3


def test_scenes_in_flight_are_sized_to_the_cluster_as_it_scales():
    """Without --in-flight: two scenes per model slot (GPU resources, else workers), re-read as workers join and
    leave; --in-flight overrides it."""
    from distributed import Client, LocalCluster

    from pipeline.job.execute import scenes_in_flight

    assert scenes_in_flight(None) == 2 and scenes_in_flight(None, 5) == 5
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        assert scenes_in_flight(client) == 2
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        assert scenes_in_flight(client) == 6 and scenes_in_flight(client, 1) == 1
        cluster.scale(1)
        deadline = time.monotonic() + 60
        while len(client.scheduler_info(n_workers=-1)["workers"]) > 1:  # until the two workers have left
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert scenes_in_flight(client) == 2
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0", resources={"GPU": 2}
        ) as cluster,
        Client(cluster) as client,
    ):
        assert scenes_in_flight(client) == 8  # 2 workers x 2 GPUs x 2


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_a_sigterm_swallowed_where_it_landed_still_stops_the_job(
    api, tmp_path, test_weights_file, spec, monkeypatch, scheduler
):
    """A signal handler's exception can land in a destructor or a C library's callback and be lost there (seen in
    CI: a SIGTERM inside a rasterio read let the job run to the end, exit 0). The CLI's handler also records the
    stop; the job raises it again at its next check, releases the lock, and a re-run finishes the store."""
    import os
    import signal

    from pipeline import errors

    monkeypatch.setattr(errors, "_stop_requested", [])
    old = signal.signal(signal.SIGTERM, lambda signum, frame: errors.request_stop(signum))
    swallowed = []

    def log(line):
        if line.startswith("[1/"):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between these bytecodes
                    pass
            except BaseException as exc:  # noqa: BLE001 - what a destructor or a C callback does with it
                swallowed.append(type(exc).__name__)

    out = tmp_path / "stopped.zarr"
    try:
        with pytest.raises(errors.Terminated):
            if scheduler == "threads":
                run_job(spec(api, out, test_weights_file, in_flight=1), None, log=log)
            else:
                from distributed import Client, LocalCluster

                with (
                    LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
                    Client(cluster) as client,
                ):
                    run_job(spec(api, out, test_weights_file, in_flight=1), client, log=log)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert swallowed == ["Terminated"]
    assert len(list((out / "_cloudmask" / "manifest").iterdir())) == 1  # stopped after the first scene
    assert not (out / "_cloudmask" / "lock.json").exists()
    monkeypatch.setattr(errors, "_stop_requested", [])
    again = run_job(spec(api, out, test_weights_file), None, log=lambda _: None)
    assert again.skipped == 1 and [s.status for s in again.stats].count("ok") == 3


def test_stats_show_every_class_in_one_unit_and_the_store_says_how_to_open_it_and_exports_a_cog(first_run, tmp_path):
    """``cloudmask stats``: every class's share and the cloud cover in %, an empty reason for good scenes; plain
    ``xr.open_zarr(store)`` (no group) shows the groups and how to open them; ``cloudmask export`` writes a scene's
    mask as a COG that GDAL reads with the store's CRS, transform, nodata and values."""
    import rasterio
    import rioxarray  # noqa: F401
    import xarray as xr

    out, result, _ = first_run
    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    p = subprocess.run([cloudmask, "stats", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert all(h in p.stdout for h in ("clear %", "thick %", "thin %", "shadow %", "cloud %", "provider cloud %"))
    assert all("nan" not in r.lower() for r in p.stdout.splitlines() if " ok " in r)  # an empty reason
    ok = next(s for s in result.stats if s.status == "ok")
    line = next(r for r in p.stdout.splitlines() if r.startswith(ok.item_id))
    assert f"{ok.pct_thick_cloud:.2f}" in line and f"{ok.cloud_cover:.2f}" in line
    root = xr.open_zarr(out)
    assert sorted(root.attrs["groups"]) == sorted(p.name for p in out.iterdir() if p.name.startswith("epsg"))
    assert "open_datatree" in root.attrs["how_to_open"] and "group=" in root.attrs["how_to_open"]
    tif = tmp_path / "mask.tif"
    e = subprocess.run(
        [cloudmask, "export", str(out), "--item", ok.item_id, "--out", str(tif)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert e.returncode == 0, e.stderr
    entry = json.loads((out / "_cloudmask" / "manifest" / f"{ok.item_id}.json").read_text())
    ds = xr.open_zarr(out, group=entry["group"])
    with rasterio.open(tif) as src:
        assert src.crs == ds.rio.crs and src.nodata == 255 and src.dtypes == ("uint8",)
        assert src.tags()["flag_meanings"] == "clear thick_cloud thin_cloud cloud_shadow"
        assert tuple(src.transform)[:6] == tuple(ds.rio.transform())[:6]
        np.testing.assert_array_equal(src.read(1), ds.mask.values[entry["time_index"]])
    bad = subprocess.run(
        [cloudmask, "export", str(out), "--item", "nope", "--out", str(tif)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "holds no finished scene 'nope'" in bad.stderr
