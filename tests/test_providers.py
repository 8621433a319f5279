"""Every real item of tests/data/stac-items end to end through a replica of its provider, with default options.

A replica serves the item as published (only the grid shrunk and https hrefs pointed at the local file server;
``s3://`` hrefs kept, their objects in a local S3 server that refuses requester-pays reads without the header)
through the project's local pgstac API, one API per provider. See tests/providers.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
from dask.base import compute
from factories import derived_weights
from providers import collection_of, cut_band, landsat_toa, real_item, replica, s2_pixels
from s3server import CREDENTIALS, s3_server

from flows.clusters import scheduler_address
from flows.stacserver import local_file_server, local_stac_api
from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.config import InferSpec, SearchSpec
from pipeline.detect.detectors import detector_weights
from pipeline.job.execute import JobSpec, run_job
from pipeline.job.plans import plan_scene
from pipeline.read.cube import load_scene

pytestmark = pytest.mark.slow  # S3, HTTP and STAC servers, CLI subprocesses

ES_L1C = "earth-search/sentinel-2-l1c/S2B_24MVV_20250731_0_L1C.json"
ES_L2A = "earth-search/sentinel-2-l2a/S2B_24MVV_20250731_0_L2A.json"
ES_L8 = "earth-search/landsat-c2-l2/LC08_L2SP_033032_20231008_02_T1.json"
PC_NEW = "planetary-computer/sentinel-2-l2a/S2B_MSIL2A_20250312T014549_R074_T53NKG_20250312T041213.json"
PC_OLD = "planetary-computer/sentinel-2-l2a/S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json"
PC_L9 = "planetary-computer/landsat-c2-l2/LC09_L2SP_090091_20250310_02_T1.json"
BUCKETS = ("sentinel-s2-l1c", "sentinel-s2-l2a", "usgs-landsat")  # all requester pays on AWS
L2A = tuple(b for b in SENTINEL2_L1C.bands if b != "B10")
LANDSAT = {"B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B8A", "B6": "B11", "B7": "B12"}


def _no_offset(d):
    """The same product as if processed before baseline 04.00 (the twin the masks are compared with)."""
    p = d["properties"]
    p["s2:processing_baseline"] = "02.14"
    p["s2:product_uri"] = p["s2:product_uri"].replace("_N0511_", "_N0214_")
    p.pop("earthsearch:boa_offset_applied", None)


def _null_crs(d):
    d["properties"]["proj:epsg"] = None
    d["properties"]["datetime"] = "2025-07-31T13:00:00Z"  # another acquisition, not a duplicate


def _as_level1(d):
    """Earth Search's Landsat item recast as the Collection 2 Level-1 product of the same scene (no real L1 item
    in the test data): L1TP, the C2 L1 reflectance scale (2e-05, -0.1); its thermal band left as it is."""
    d["properties"]["landsat:correction"] = "L1TP"
    d["collection"] = "landsat-c2-l1"
    for a in d["assets"].values():
        for rb in a.get("raster:bands", []):
            if rb.get("scale") == 2.75e-05:
                rb.update(scale=2e-05, offset=-0.1)
    return d


def _other_datastrip(d):
    p = d["properties"]
    p["s2:datastrip_id"] = p["s2:datastrip_id"].replace("_S20250312T014547_", "_S20250312T014901_")


@pytest.fixture(scope="module")
def weights(tmp_path_factory, test_weights_file):
    """The test model for each sensor and level (cut from the 13-band L1C test weights: classes still vary)."""
    root = tmp_path_factory.mktemp("weights")
    out = {"sentinel-2-l1c": str(test_weights_file)}
    derived_weights(test_weights_file, root / "l2a.safetensors", {b: b for b in L2A}, "sentinel-2", "L2A")
    derived_weights(test_weights_file, root / "l2.safetensors", LANDSAT, "landsat-oli-tirs", "L2")
    out["sentinel-2-l2a"], out["landsat-oli-tirs-l2"] = str(root / "l2a.safetensors"), str(root / "l2.safetensors")
    return out


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """``{"es": url, "pc": url, "env": {...}, "items": {name: item dict}}``: both providers' replicas, served."""
    root = tmp_path_factory.mktemp("replicas")
    with s3_server(BUCKETS) as (endpoint, s3), local_file_server(root) as http:
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
        jp2_l2a = [k for k, a in real_item(ES_L2A)["assets"].items() if k.endswith("-jp2")]
        items = {
            # L1C JP2s carry the offset (baseline 05.11); Earth Search's L2A COGs had it removed, its JP2s not
            "es-l1c": replica(real_item(ES_L1C), root, http, s3, offset=1000),
            "es-l1c-nullcrs": replica(
                real_item(ES_L1C), root, http, s3, offset=1000, item_id="S2B_24MVV_nullcrs", edit=_null_crs
            ),
            "es-l1c-twin": replica(
                real_item(ES_L1C),
                root,
                http,
                s3,
                item_id="S2B_24MVV_twin",
                collection="sentinel-2-l1c-twin",
                edit=_no_offset,
            ),
            "es-l2a": replica(real_item(ES_L2A), root, http, s3, offset={k: 1000 for k in jp2_l2a}),
            # the same product whose 60 m coastal band ends 2 rows and 1 column (of its 32 x 32) short
            "es-l2a-short": cut_band(
                replica(
                    real_item(ES_L2A),
                    root,
                    http,
                    s3,
                    offset={k: 1000 for k in jp2_l2a},
                    item_id="S2B_24MVV_short",
                    collection="sentinel-2-l2a-short",
                ),
                root,
                http,
                "coastal",
                2,
                1,
            ),
            "es-l8": replica(real_item(ES_L8), root, http, s3),
            "es-l8-l1": replica(_as_level1(real_item(ES_L8)), root, http, s3, item_id="LC08_L1TP_033032_20231008"),
            "pc-new": replica(real_item(PC_NEW), root, http, offset=1000),
            "pc-strip": replica(
                real_item(PC_NEW),
                root,
                http,
                offset=1000,
                window=192,
                item_id=real_item(PC_NEW)["id"].replace("041213", "041214"),
                edit=_other_datastrip,
            ),
            "pc-old": replica(real_item(PC_OLD), root, http),
            "pc-new-twin": replica(
                real_item(PC_NEW),
                root,
                http,
                item_id="S2B_53NKG_twin",
                collection="sentinel-2-l2a-twin",
                edit=_no_offset,
            ),
            "pc-l9": replica(real_item(PC_L9), root, http),
        }
        es = [v for k, v in items.items() if k.startswith("es")]
        pc = [v for k, v in items.items() if k.startswith("pc")]
        cols = lambda its: list({i["collection"]: collection_of(i) for i in its}.values())  # noqa: E731
        env = dict(CREDENTIALS, AWS_S3_ENDPOINT=endpoint, AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE")
        with local_stac_api(cols(es), es) as es_url, local_stac_api(cols(pc), pc) as pc_url:
            yield {"es": es_url, "pc": pc_url, "env": env, "items": items, "s3": s3}


@pytest.fixture()
def aws(replicas, monkeypatch):
    for k, v in replicas["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_REQUEST_PAYER", raising=False)
    return replicas["env"]


def cli(url, collection, out, *args, env=None):
    cmd = [
        str(Path(sys.executable).with_name("cloudmask")),
        "run",
        "--stac-url",
        url,
        "--collection",
        collection,
        "--bbox=-180,-90,180,90",
        "--out",
        str(out),
        "--chunk",
        "96",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, **(env or {})))


def cli_ok(url, collection, out, *args, env=None) -> dict:
    """``cli(...)``, which must succeed; the rows of the statistics table it wrote, by item id."""
    p = cli(url, collection, out, *args, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    return table(out)


def table(out) -> dict:
    import pandas as pd

    frame = pd.read_csv(Path(out) / "_cloudmask" / "scenes.csv", index_col="item_id", keep_default_na=False)
    return frame.to_dict("index")


def masks(out) -> dict:
    """``{item id: mask (y, x) uint8}`` of a store."""
    import zarr

    found = {}
    for name, group in zarr.open_group(str(out), mode="r").groups():
        if name.startswith("_"):
            continue
        ds = xr.open_zarr(str(out), group=name, consolidated=False)
        for t, item_id in enumerate(ds["item_id"].values):
            found[str(item_id)] = ds["mask"][t].values
    return found


def run_here(url, collection, out, weights_path, **kw):
    spec = JobSpec(
        search=SearchSpec(url, collection, bbox=(-180, -90, 180, 90)),
        out=str(out),
        weights=weights_path,
        infer=InferSpec(),
        chunk=96,
        **kw,
    )
    return run_job(spec, None, log=lambda line: None)


def assert_same_masks(with_offset, without, items, weights_path):
    """The masks of a product read with its offset removed and of the same pixels stored without it: identical,
    as are the two harmonised cubes (the offset is taken off each band at its own resolution, before the exact
    upsampling; GDAL's warp used to round x + 1000 and x to DN 1 apart)."""
    from pipeline.catalog.access import access_for

    assert_varied(with_offset)
    assert with_offset.shape == without.shape
    cubes = []
    for d in items:
        item = pystac.Item.from_dict(d)
        cubes.append(load_scene(plan_scene(item, detector_weights(weights_path)), 2048, access_for([item])).data)
    a, b = (c.values[0] for c in compute(*cubes))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(with_offset, without)


def assert_varied(mask):
    classes = np.unique(mask[mask != 255])
    assert len(classes) >= 2, classes  # a comparison of masks means nothing with a constant model


def test_earth_search_l1c_requester_pays_jp2_on_s3(replicas, aws, weights, tmp_path, monkeypatch):
    url, items = replicas["es"], replicas["items"]
    # the item does not say its bucket is requester pays: without AWS_REQUEST_PAYER every read is refused
    p = cli(url, "sentinel-2-l1c", tmp_path / "refused.zarr", "--weights", weights["sentinel-2-l1c"])
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "every scene failed" in p.stderr and "AWS_REQUEST_PAYER=requester" in p.stdout
    # as a user sets it: the default run
    out = tmp_path / "l1c.zarr"
    rows = cli_ok(
        url, "sentinel-2-l1c", out, "--weights", weights["sentinel-2-l1c"], env={"AWS_REQUEST_PAYER": "requester"}
    )
    good, bad = rows[items["es-l1c"]["id"]], rows["S2B_24MVV_nullcrs"]
    assert good["status"] == "ok" and good["offset_applied"] == 1000 and "B10 median" in good["radiometry"]
    assert bad["status"] == "failed" and "no usable CRS (proj:code=None" in bad["reason"]  # fails alone
    # the same pixels without the offset give the same masks
    monkeypatch.setenv("AWS_REQUEST_PAYER", "requester")
    twin = run_here(url, "sentinel-2-l1c-twin", tmp_path / "twin.zarr", weights["sentinel-2-l1c"])
    assert (twin.stats[0].status, twin.stats[0].offset_applied) == ("ok", 0)
    assert_same_masks(
        masks(out)[items["es-l1c"]["id"]],
        masks(tmp_path / "twin.zarr")["S2B_24MVV_twin"],
        (items["es-l1c"], items["es-l1c-twin"]),
        weights["sentinel-2-l1c"],
    )


def test_earth_search_l2a_reads_the_cogs_whose_offset_the_provider_removed(replicas, aws, weights, tmp_path):
    url, item = replicas["es"], replicas["items"]["es-l2a"]
    out = tmp_path / "ukis.zarr"
    row = cli_ok(url, "sentinel-2-l2a", out, "--model", "ukis-csmask")[item["id"]]
    assert (
        row["status"] == "ok" and row["offset_applied"] == 0 and "earthsearch:boa_offset_applied" in row["radiometry"]
    )
    assert_varied(masks(out)[item["id"]])
    result = run_here(url, "sentinel-2-l2a", tmp_path / "l2a.zarr", weights["sentinel-2-l2a"])
    assert [s.status for s in result.stats] == ["ok"]
    assert_varied(masks(tmp_path / "l2a.zarr")[item["id"]])


def test_a_plain_run_on_l2a_items_runs_mscloudcam_with_the_l2a_starter(replicas, aws, tmp_path):
    """No --weights, no --model: Earth Search's L2A product is masked by MSCloudCAM with the shipped L2A starter
    (12 bands, no B10), recorded in the store's provenance; the mask is the starter's own prediction of the served
    real pixels. (The served window holds no cloud, by the teachers' labels: a mask with cloud there would be wrong.
    With the JP2s' offset left in, the starter calls 99 % of it cloud; with the bands in reverse order, 52 %: either
    would fail here.)"""
    import hashlib

    import zarr

    from pipeline.detect.infer import Predictor
    from pipeline.detect.weights import STARTERS, default_weights, load_weights

    url, item = replicas["es"], replicas["items"]["es-l2a"]
    out = tmp_path / "plain.zarr"
    row = cli_ok(url, "sentinel-2-l2a", out, env={"CLOUDMASK_WEIGHTS": ""})[item["id"]]
    assert row["status"] == "ok"
    starter = default_weights("L2A")
    assert starter.endswith(STARTERS["L2A"])
    recorded = zarr.open_group(str(out), mode="r").attrs["cloudmask"]
    assert recorded["model"] == "mscloudcam" and "B10" not in recorded["bands"] and len(recorded["bands"]) == 12
    assert recorded["weights_sha256"] == hashlib.sha256(Path(starter).read_bytes()).hexdigest()
    served = s2_pixels()[[SENTINEL2_L1C.bands.index(b) for b in recorded["bands"]]]
    own = (
        Predictor(load_weights(starter), InferSpec(overlap=0, device="cpu")).predict(served, mask_nodata=False).classes
    )
    got = np.asarray(masks(out)[item["id"]])
    assert got.shape == own.shape and (got == own).mean() >= 0.99, np.bincount(got.ravel())


def test_a_band_whose_footprint_ends_short_makes_exactly_those_pixels_nodata(replicas, aws, weights, tmp_path):
    """Earth Search's L2A product with its 60 m coastal band ending 2 rows and 1 column short: the 10 m pixels it does
    not reach (12 rows, 6 columns) are nodata, never a class, and left out of the statistics; away from them (beyond a
    tile, the model's context) the mask is the full product's."""
    url = replicas["es"]
    full = run_here(url, "sentinel-2-l2a", tmp_path / "full.zarr", weights["sentinel-2-l2a"])
    short = run_here(url, "sentinel-2-l2a-short", tmp_path / "short.zarr", weights["sentinel-2-l2a"])
    a = masks(tmp_path / "full.zarr")[replicas["items"]["es-l2a"]["id"]]
    b = masks(tmp_path / "short.zarr")["S2B_24MVV_short"]
    assert_varied(a)
    beyond = np.zeros(a.shape, bool)
    beyond[-12:], beyond[:, -6:] = True, True
    np.testing.assert_array_equal(b == 255, beyond)
    assert (a != 255).all()
    away = np.ones(a.shape, bool)
    away[-12 - 64 :], away[:, -6 - 64 :] = False, False  # within a tile of the cut: the model saw it
    np.testing.assert_array_equal(a[away], b[away])
    (s,) = [x for x in short.stats if x.item_id == "S2B_24MVV_short"]
    assert s.status == "ok" and s.valid_pixels == a.size - beyond.sum()
    assert [x.status for x in full.stats if x.item_id == replicas["items"]["es-l2a"]["id"]] == ["ok"]


def test_l1c_weights_on_l2a_items_are_refused_before_any_cluster_starts(replicas, aws, weights, tmp_path):
    out = tmp_path / "never.zarr"
    p = cli(replicas["es"], "sentinel-2-l2a", out, "--weights", weights["sentinel-2-l1c"])
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Sentinel-2 L1C, not Sentinel-2 L2A" in lines[0] and "--model ukis-csmask" in lines[0]
    assert "starting the" not in p.stdout and not out.exists()


def test_earth_search_landsat_requester_pays_said_by_the_item(replicas, aws, weights, tmp_path):
    """Landsat's assets say storage:requester_pays: no AWS_REQUEST_PAYER needed."""
    url, item = replicas["es"], replicas["items"]["es-l8"]
    out = tmp_path / "l8.zarr"
    row = cli_ok(url, "landsat-c2-l2", out, "--model", "ukis-csmask")[item["id"]]
    assert row["status"] == "ok" and row["offset_applied"] == 0 and "Landsat C2 L2" in row["radiometry"]
    mask = masks(out)[item["id"]]
    assert mask.shape == (192, 192)  # the item's own 30 m grid
    assert_varied(mask)
    result = run_here(url, "landsat-c2-l2", tmp_path / "msc.zarr", weights["landsat-oli-tirs-l2"])
    assert [s.status for s in result.stats] == ["ok"]


def test_planetary_computer_l2a_keeps_both_datastrips_and_removes_the_offset(replicas, aws, weights, tmp_path):
    url, items = replicas["pc"], replicas["items"]
    out = tmp_path / "pc.zarr"
    rows = cli_ok(url, "sentinel-2-l2a", out, "--weights", weights["sentinel-2-l2a"])
    new, strip, old = (rows[items[k]["id"]] for k in ("pc-new", "pc-strip", "pc-old"))
    assert (new["status"], strip["status"], old["status"]) == ("ok", "ok", "ok")  # both datastrips masked
    assert (new["offset_applied"], strip["offset_applied"], old["offset_applied"]) == (1000, 1000, 0)
    found = masks(out)
    assert not np.array_equal(found[items["pc-new"]["id"]], found[items["pc-strip"]["id"]])  # different data
    twin = run_here(url, "sentinel-2-l2a-twin", tmp_path / "twin.zarr", weights["sentinel-2-l2a"])
    assert (twin.stats[0].status, twin.stats[0].offset_applied) == ("ok", 0)
    assert_same_masks(
        found[items["pc-new"]["id"]],
        masks(tmp_path / "twin.zarr")["S2B_53NKG_twin"],
        (items["pc-new"], items["pc-new-twin"]),
        weights["sentinel-2-l2a"],
    )


def test_landsat_level1_runs_with_its_own_scale(replicas, aws, tmp_path):
    result = run_here(replicas["es"], "landsat-c2-l1", tmp_path / "l1.zarr", None, model="ukis-csmask")
    (stats,) = result.stats
    assert stats.status == "ok" and "Landsat C2 L1" in stats.radiometry and stats.offset_applied == 0
    assert_varied(masks(tmp_path / "l1.zarr")["LC08_L1TP_033032_20231008"])


def test_planetary_computer_landsat(replicas, aws, tmp_path):
    url, item = replicas["pc"], replicas["items"]["pc-l9"]
    out = tmp_path / "l9.zarr"
    assert cli_ok(url, "landsat-c2-l2", out, "--model", "ukis-csmask")[item["id"]]["status"] == "ok"
    assert_varied(masks(out)[item["id"]])


@pytest.mark.parametrize(
    "name, model",
    [
        ("es-l1c", "sentinel-2-l1c"),
        ("es-l2a", "sentinel-2-l2a"),
        ("pc-new", "sentinel-2-l2a"),
        ("pc-old", "sentinel-2-l2a"),
        ("es-l8", "landsat-oli-tirs-l2"),
        ("pc-l9", "landsat-oli-tirs-l2"),
    ],
)
def test_every_band_comes_from_its_asset_harmonised(replicas, aws, weights, name, model, monkeypatch):
    """The cube of each replica against the pixels written: 10 m (Landsat: 30 m) bands exactly, the resampled
    bands closest to their own source band; offsets removed, Landsat scaled to reflectance x 10000."""
    from pipeline.catalog.access import access_for

    monkeypatch.setenv("AWS_REQUEST_PAYER", "requester")
    item = pystac.Item.from_dict(replicas["items"][name])
    plan = plan_scene(item, detector_weights(weights[model]))
    cube = load_scene(plan, 2048, access_for([item]))
    got, harm = compute(cube.data, cube.harmonisation)
    got = got.values[0].astype(np.float64)
    if plan.sensor.name == "sentinel-2":
        src = s2_pixels().astype(np.float64)
        truth = {b: src[SENTINEL2_L1C.bands.index(b)] for b in plan.bands}
        exact = ("B02", "B03", "B04", "B08")
    else:
        toa = landsat_toa().astype(np.float64)
        order = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B10")
        truth = {b: toa[order.index(b)] * 10000 for b in plan.bands if b != "B10"}
        exact = ()
    for i, band in enumerate(plan.bands):
        if band not in truth:
            continue
        if band in exact:
            np.testing.assert_array_equal(got[i], truth[band])
        error = {b: np.abs(got[i] - t).mean() for b, t in truth.items()}
        assert min(error, key=error.get) == band, (band, error)
        assert error[band] < 0.05 * truth[band].mean(), (band, error[band])


def test_s3_settings_reach_workers_whose_environment_lacks_them(replicas, weights, tmp_path, monkeypatch):
    """A `dask worker` started without the endpoint, https or requester-pays settings (only credentials, as a
    worker machine has them) reads the requester-pays JP2s: the settings travel with the tasks from the client."""
    import signal

    from distributed import Client

    dask_cli = str(Path(sys.executable).with_name("dask"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GDAL_"))}
    worker_env = dict(base, **CREDENTIALS)
    sched_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                dask_cli,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(sched_file),
            ],
            start_new_session=True,
            env=base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        address = scheduler_address(sched_file)
        procs.append(
            subprocess.Popen(
                [
                    dask_cli,
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--local-directory",
                    str(tmp_path / "w"),
                ],
                start_new_session=True,
                env=worker_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for k, v in dict(replicas["env"], AWS_REQUEST_PAYER="requester").items():
            monkeypatch.setenv(k, v)
        with Client(address) as client:
            client.wait_for_workers(1, timeout=60)
            assert "AWS_S3_ENDPOINT" not in client.run(lambda: dict(os.environ)).popitem()[1]
            spec = JobSpec(
                search=SearchSpec(replicas["es"], "sentinel-2-l1c", bbox=(-180, -90, 180, 90)),
                out=str(tmp_path / "w.zarr"),
                weights=weights["sentinel-2-l1c"],
                chunk=96,
            )
            result = run_job(spec, client, log=lambda line: None)
        by_id = {s.item_id: s for s in result.stats}
        good = by_id[replicas["items"]["es-l1c"]["id"]]
        assert (good.status, good.offset_applied) == ("ok", 1000), good.reason
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(20)
