"""The public providers' real STAC items (tests/data/stac-items, byte for byte as published): bands, sensor and
level, grid, radiometry, deduplication, access and the pre-flight refusals, all read from the items themselves."""

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pystac
import pytest
from providers import real_item

import pipeline.read.cube  # noqa: F401 (the module imports cleanly without a cluster)
from pipeline.catalog.access import access_for, needs_signing, redact, sign
from pipeline.catalog.assets import band_assets, sensor_of
from pipeline.catalog.sensors import LANDSAT_C2_L1, LANDSAT_C2_L2, SENTINEL2_L1C, SENTINEL2_L2A
from pipeline.catalog.stac import dedupe
from pipeline.detect.detectors import detector_weights
from pipeline.errors import InputError
from pipeline.job.plans import PreflightError, check_items, plan_scene, scene_grid
from pipeline.read.radiometry import band_scale, decide, decide_landsat

ES_L1C = "earth-search/sentinel-2-l1c/S2B_24MVV_20250731_0_L1C.json"
ES_L2A = "earth-search/sentinel-2-l2a/S2B_24MVV_20250731_0_L2A.json"
ES_L8 = "earth-search/landsat-c2-l2/LC08_L2SP_033032_20231008_02_T1.json"
PC_L2A_NEW = "planetary-computer/sentinel-2-l2a/S2B_MSIL2A_20250312T014549_R074_T53NKG_20250312T041213.json"
PC_L2A_OLD = "planetary-computer/sentinel-2-l2a/S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json"
PC_L9 = "planetary-computer/landsat-c2-l2/LC09_L2SP_090091_20250310_02_T1.json"
ALL = (ES_L1C, ES_L2A, ES_L8, PC_L2A_NEW, PC_L2A_OLD, PC_L9)

S2_COMMON = dict(
    B01="coastal",
    B02="blue",
    B03="green",
    B04="red",
    B05="rededge1",
    B06="rededge2",
    B07="rededge3",
    B08="nir",
    B8A="nir08",
    B09="nir09",
    B10="cirrus",
    B11="swir16",
    B12="swir22",
)
L_COMMON = dict(B1="coastal", B2="blue", B3="green", B4="red", B5="nir08", B6="swir16", B7="swir22", B10="lwir11")


def item(relpath, edit=None):
    d = real_item(relpath)
    if edit:
        edit(d)
    return pystac.Item.from_dict(d)


@pytest.mark.parametrize(
    "relpath, sensor, expected",
    [
        (ES_L1C, SENTINEL2_L1C, S2_COMMON),
        # the COG, not its `-jp2` twin; no B10 in L2A
        (ES_L2A, SENTINEL2_L2A, {b: k for b, k in S2_COMMON.items() if b != "B10"}),
        (ES_L8, LANDSAT_C2_L2, L_COMMON),
        # B8A is labelled `rededge` by Planetary Computer: its name decides
        (PC_L2A_NEW, SENTINEL2_L2A, {b: b for b in SENTINEL2_L2A.bands}),
        (PC_L2A_OLD, SENTINEL2_L2A, {b: b for b in SENTINEL2_L2A.bands}),
        (PC_L9, LANDSAT_C2_L2, L_COMMON),
    ],
)
def test_sensor_level_and_every_band_come_from_the_items_own_metadata(relpath, sensor, expected):
    it = item(relpath)
    assert sensor_of(it) == sensor
    assert band_assets(it, sensor, sensor.bands) == expected


def test_names_that_are_not_band_ids_fall_back_to_the_centre_wavelength():
    """Some Earth Search items name bands `blue`…; a wavelength nowhere near a band is not guessed."""

    def common_names(d):
        for a in d["assets"].values():
            for b in a.get("eo:bands", []):
                b["name"] = b.get("common_name")

    it = item(ES_L1C, common_names)
    assert band_assets(it, SENTINEL2_L1C, SENTINEL2_L1C.bands) == S2_COMMON

    def off(d):
        common_names(d)
        d["assets"]["nir08"]["eo:bands"][0]["center_wavelength"] = 0.90  # between B8A (0.865) and B09 (0.945)

    with pytest.raises(InputError, match=r"no asset holds bands \['B8A'\] of Sentinel-2 L1C"):
        band_assets(item(ES_L1C, off), SENTINEL2_L1C, SENTINEL2_L1C.bands)


def test_several_assets_per_band_give_the_native_resolution_and_cogs_before_jpeg2000():
    """CDSE publishes B02_10m, B02_20m, B02_60m (several resolutions of one band): the native one is read."""

    def cdse(d):
        assets = {}
        for key, a in d["assets"].items():
            if key not in SENTINEL2_L2A.bands:
                continue
            native = a["gsd"]
            for res in (10.0, 20.0, 60.0):
                if res < native:
                    continue
                b = copy.deepcopy(a)
                t = b["proj:transform"]
                b.update(
                    gsd=res,
                    href=a["href"].replace(".tif", f"_{int(res)}m.jp2"),
                    type="image/jp2",
                    **{"proj:transform": [res, 0, t[2], 0, -res, t[5]], "proj:shape": [int(109800 // res)] * 2},
                )
                assets[f"{key}_{int(res)}m"] = b
        d["assets"] = dict(reversed(list(assets.items())))  # coarsest first: order must not matter

    it = item(PC_L2A_NEW, cdse)
    chosen = band_assets(it, SENTINEL2_L2A, SENTINEL2_L2A.bands)
    assert chosen["B02"] == "B02_10m" and chosen["B05"] == "B05_20m" and chosen["B09"] == "B09_60m"
    assert tuple(scene_grid(it, chosen)[1].shape) == (10980, 10980)

    # whatever the keys: a plain `B02` that is the 60 m copy loses to `B02_10m`
    def plain(d):
        cdse(d)
        d["assets"]["B02"] = d["assets"].pop("B02_60m")

    assert band_assets(item(PC_L2A_NEW, plain), SENTINEL2_L2A, ("B02",)) == {"B02": "B02_10m"}
    # Earth Search L2A: `blue` (COG) and `blue-jp2` at the same 10 m: the COG, also when its key sorts last
    assert band_assets(item(ES_L2A), SENTINEL2_L2A, ("B02",)) == {"B02": "blue"}

    def renamed(d):
        d["assets"]["zz-blue"] = d["assets"].pop("blue")

    assert band_assets(item(ES_L2A, renamed), SENTINEL2_L2A, ("B02",)) == {"B02": "zz-blue"}


def test_grids_come_from_the_finest_band_and_landsat_from_its_own():
    es = item(ES_L1C)
    key, g = scene_grid(es, band_assets(es, SENTINEL2_L1C, SENTINEL2_L1C.bands))
    assert (key, str(g.crs), tuple(g.shape), g.affine.a) == ("blue", "EPSG:32724", (10980, 10980), 10.0)
    ls = item(ES_L8)  # Landsat assets carry no proj fields: the item's 30 m grid
    _, g = scene_grid(ls, band_assets(ls, LANDSAT_C2_L2, LANDSAT_C2_L2.bands))
    assert (str(g.crs), tuple(g.shape), tuple(g.affine)[:6]) == (
        "EPSG:32613",
        (7831, 7711),
        (30, 0, 449085, 0, -30, 4581915),
    )


def test_a_null_proj_code_fails_that_item_with_its_reason(test_weights_file):
    def null(d):
        d["properties"]["proj:epsg"] = None
        d["properties"]["proj:code"] = None

    weights = detector_weights(test_weights_file)
    with pytest.raises(InputError, match=r"S2B_24MVV_20250731_0_L1C: asset 'blue' has no usable CRS \(proj:code=None"):
        plan_scene(item(ES_L1C, null), weights)
    assert str(plan_scene(item(ES_L1C), weights).grid.crs) == "EPSG:32724"


def test_landsat_mss_and_unknown_sensors_fail_alone_naming_why():
    def mss(d):
        d["properties"].update(platform="landsat-5", instruments=["mss"])

    with pytest.raises(InputError, match="landsat-5 with instruments \\['mss'\\]"):
        sensor_of(item(ES_L8, mss))

    def unknown(d):
        d["properties"].update(platform="sentinel-1a", instruments=["c-sar"])

    with pytest.raises(InputError, match="platform sentinel-1a"):
        sensor_of(item(ES_L8, unknown))


def test_weights_declare_their_sensor_and_level_and_other_items_are_refused_up_front(test_weights_file):
    l1c = detector_weights(test_weights_file)
    assert (l1c.meta.sensor, l1c.meta.level) == ("sentinel-2", "L1C")
    for relpath in (ES_L2A, PC_L2A_NEW):
        with pytest.raises(
            PreflightError,
            match=r"trained on Sentinel-2 L1C, not Sentinel-2 L2A; "
            r"use the shipped L2A starter \(no --weights\), or "
            r"weights trained on sentinel-2-l2a \(--weights\), or "
            r"--model ukis-csmask, or a sentinel-2-l1c collection",
        ):
            check_items([item(relpath)], l1c, "test")
    with pytest.raises(PreflightError, match="trained on Sentinel-2 L1C.*not Landsat"):
        check_items([item(ES_L8)], l1c, "test")
    check_items([item(ES_L1C)], l1c, "test")
    ukis = detector_weights("ukis-csmask")
    for relpath in ALL:
        check_items([item(relpath)], ukis, "test")
    with pytest.raises(PreflightError, match="s2cloudless does not run on Sentinel-2 L2A"):
        check_items([item(PC_L2A_OLD)], detector_weights("s2cloudless"), "test")
    # one good item among the first is enough: the others fail alone later
    check_items([item(ES_L2A), item(ES_L1C)], l1c, "test")


def test_ukis_runs_each_sensor_on_its_six_bands():
    for relpath, bands in (
        (ES_L2A, ("B02", "B03", "B04", "B08", "B11", "B12")),
        (PC_L9, ("B2", "B3", "B4", "B5", "B6", "B7")),
    ):
        plan = plan_scene(item(relpath), detector_weights("ukis-csmask"))
        assert plan.bands == bands
        assert detector_weights(plan.model).meta.bands == bands


@pytest.mark.parametrize(
    "relpath, offset, why",
    [
        (ES_L1C, 1000, "baseline 05.11"),
        (ES_L2A, 0, "already removed by the provider (earthsearch:boa_offset_applied)"),
        (PC_L2A_NEW, 1000, "baseline 05.11"),
        (PC_L2A_OLD, 0, "baseline 02.12"),
    ],
)
def test_sentinel2_offset_is_what_each_product_carries(relpath, offset, why):
    it = item(relpath)
    h = decide(dict(it.properties, id=it.id))
    assert h.offset == offset and why in h.reason


def test_landsat_gets_its_own_scale_never_the_sentinel2_rule():
    for relpath in (ES_L8, PC_L9):
        it = item(relpath)
        keys = band_assets(it, LANDSAT_C2_L2, LANDSAT_C2_L2.bands)
        declared = {b: band_scale(it.assets[k].extra_fields) for b, k in keys.items()}
        h = decide_landsat(
            "L2", LANDSAT_C2_L2.bands, dict(zip(LANDSAT_C2_L2.bands, LANDSAT_C2_L2.wavelengths)), declared
        )
        assert h.offset == 0 and "Collection 2 values" not in h.reason
        assert h.scale[1] == pytest.approx((0.275, -2000.0))  # B2: DN x 2.75e-05 - 0.2, x 10000
        assert h.scale[-1] == (1.0, 0.0)  # B10, thermal: kept as it is


def test_raster_v2_scale_and_offset_are_read():
    assert band_scale({"bands": [{"name": "B2", "raster:scale": 2e-05, "raster:offset": -0.1}]}) == (2e-05, -0.1)
    assert band_scale({"raster:scale": 3.0, "raster:offset": 1.0}) == (3.0, 1.0)
    assert band_scale({}) == (None, None)


def test_dedupe_keeps_datastrips_and_collapses_only_reprocessings():
    base = real_item(PC_L2A_NEW)
    other_strip = copy.deepcopy(base)  # the same tile and datatake, another datastrip: other data
    other_strip["id"] = base["id"].replace("041213", "041214")
    other_strip["properties"]["s2:datastrip_id"] = base["properties"]["s2:datastrip_id"].replace(
        "_S20250312T014547_", "_S20250312T014901_"
    )
    other_strip["geometry"]["coordinates"][0][0][0] += 0.3
    reprocessed = copy.deepcopy(base)  # the same datastrip, processed again with a newer baseline
    reprocessed["id"] = base["id"].replace("041213", "101010")
    reprocessed["properties"]["s2:processing_baseline"] = "05.12"
    reprocessed["properties"]["s2:datastrip_id"] = (
        base["properties"]["s2:datastrip_id"].replace("20250312T041213", "20250401T101010").replace("N05.11", "N05.12")
    )
    items = [pystac.Item.from_dict(d) for d in (base, other_strip, reprocessed)]
    kept = sorted(i.id for i in dedupe(items))
    assert kept == sorted([other_strip["id"], reprocessed["id"]])
    # without datastrip ids the footprint tells them apart
    for d in (base, other_strip):
        d["properties"].pop("s2:datastrip_id")
    assert len(dedupe([pystac.Item.from_dict(d) for d in (base, other_strip)])) == 2


def test_access_follows_the_items_and_the_environment():
    es, ls, pc = item(ES_L1C), item(ES_L8), item(PC_L2A_NEW)
    a = access_for([es], environ={})
    assert not a.requester_pays and "AWS_REQUEST_PAYER" not in dict(a.gdal)
    assert access_for([ls], environ={}).requester_pays  # storage:requester_pays on its assets
    a = access_for(
        [es], environ={"AWS_REQUEST_PAYER": "requester", "AWS_S3_ENDPOINT": "127.0.0.1:9", "AWS_SECRET_ACCESS_KEY": "s"}
    )
    assert a.requester_pays and a.aws()["endpoint_url"] == "127.0.0.1:9"
    assert "s" not in dict(a.gdal).values() and "AWS_SECRET_ACCESS_KEY" not in dict(a.gdal)  # no secrets
    assert needs_signing(pc, ["B02"]) and not needs_signing(es, ["blue"])
    # the reads' environment: an AWS session (requester pays, the endpoint) for S3 files only, one per thread
    import rasterio
    from rasterio.session import AWSSession

    made = []

    class Env(rasterio.Env):  # records the session each read's environment is given
        def __init__(self, session=None, **options):
            made.append(session)
            super().__init__(session=session, **options)

    def session(href):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rasterio, "Env", Env)
            with a.env(href):
                return made[-1]

    s3 = session("s3://bucket/B02.tif")
    assert isinstance(s3, AWSSession) and s3.requester_pays and s3 is session("s3://bucket/B03.tif")
    assert session("/data/B02.tif") is None and session("https://x.blob.core.windows.net/c/B02.tif") is None
    other = []
    thread = threading.Thread(target=lambda: other.append(session("s3://bucket/B02.tif")))
    thread.start()
    thread.join()
    assert isinstance(other[0], AWSSession) and other[0] is not s3
    assert (
        redact("failed https://x.blob.core.windows.net/c/B02.tif?st=2025&sig=SECRET: 403")
        == "failed https://x.blob.core.windows.net/c/B02.tif?…: 403"
    )


class _Tokens(BaseHTTPRequestHandler):
    issued = []

    def do_GET(self):  # noqa: N802 - the SAS endpoint: /<account>/<container>
        token = f"sv=test&sig=token{len(self.issued)}"
        self.issued.append(self.path)
        body = json.dumps({"msft:expiry": "2099-01-01T00:00:00Z", "token": token}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_planetary_computer_items_are_signed_by_the_sdk_against_its_token_endpoint(monkeypatch):
    """planetary-computer's own signing, with its token endpoint (PC_SDK_SAS_URL) served here."""
    import planetary_computer
    from planetary_computer.sas import TOKEN_CACHE

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{server.server_port}")
        planetary_computer.settings.Settings.get.cache_clear()
        TOKEN_CACHE.clear()
        pc = item(PC_L2A_NEW)
        signed = sign(pc)
        assert signed.assets["B02"].href.startswith(pc.assets["B02"].href + "?sv=test&sig=token0")
        assert "?" not in pc.assets["B02"].href  # the original is untouched
        assert _Tokens.issued == ["/sentinel2l2a01/sentinel2-l2"]  # one token per container, cached
    finally:
        server.shutdown()
        planetary_computer.settings.Settings.get.cache_clear()
        TOKEN_CACHE.clear()


def test_level_comes_from_the_product_type_else_the_collection_and_missing_bands_are_named():
    def l1(d):
        d["properties"]["landsat:correction"] = "L1TP"

    it = item(ES_L8, l1)
    assert sensor_of(it) == LANDSAT_C2_L1
    with pytest.raises(InputError, match=r"no asset holds bands \['B8', 'B9', 'B11'\] of Landsat 8/9 C2 L1"):
        band_assets(it, LANDSAT_C2_L1, LANDSAT_C2_L1.bands)  # a Level-2 product has no pan, cirrus or B11

    def anonymous(d):
        d["properties"].pop("s2:product_type")
        d["collection"] = "my-sentinel-2"

    with pytest.raises(
        InputError,
        match=r"Sentinel-2, but neither s2:product_type/product:type \(absent\) nor the "
        r"collection \(my-sentinel-2\) gives the level \(L2A or L1C\)",
    ):
        sensor_of(item(ES_L2A, anonymous))

    def by_collection(d):
        d["properties"].pop("s2:product_type")

    assert sensor_of(item(ES_L2A, by_collection)) == SENTINEL2_L2A


def test_a_job_without_weights_gets_the_starter_of_its_items_level(monkeypatch, tmp_path):
    """No --weights: Earth Search's and Planetary Computer's L2A items get the shipped L2A starter (12 bands, no
    B10), which can run them; L1C items the L1C starter. Before the search the collection or profile decides;
    --weights and $CLOUDMASK_WEIGHTS always win."""
    from pipeline.config import SearchSpec
    from pipeline.detect.weights import STARTERS
    from pipeline.job.execute import JobSpec, job_weights

    monkeypatch.delenv("CLOUDMASK_WEIGHTS", raising=False)

    def spec(collection, **kw):
        return JobSpec(search=SearchSpec("http://127.0.0.1:9", collection), out=str(tmp_path / "x.zarr"), **kw)

    for rel, level in [(ES_L1C, "L1C"), (ES_L2A, "L2A"), (PC_L2A_NEW, "L2A"), (PC_L2A_OLD, "L2A")]:
        chosen = job_weights(spec("any-collection"), [item(rel)])
        weights = detector_weights(chosen)
        assert chosen.endswith(STARTERS[level]) and weights.meta.level == level, rel
        assert ("B10" in weights.meta.bands) == (level == "L1C")
        assert plan_scene(item(rel), weights).bands == weights.meta.bands  # it runs them
    assert job_weights(spec("sentinel-2-l2a")).endswith(STARTERS["L2A"])
    assert job_weights(spec("sentinel-2-l1c")).endswith(STARTERS["L1C"])
    assert job_weights(spec("s2", profile="planetary-computer-l2a")).endswith(STARTERS["L2A"])
    assert job_weights(spec("sentinel-2-l2a", weights="mine.safetensors"), [item(ES_L2A)]) == "mine.safetensors"
    monkeypatch.setenv("CLOUDMASK_WEIGHTS", "/models/site.safetensors")
    assert job_weights(spec("sentinel-2-l2a"), [item(ES_L2A)]) == "/models/site.safetensors"


def test_weights_declared_for_another_level_run_its_items(tmp_path, test_weights_file):
    """L2A weights (12 bands) that declare ``also_levels=("L1C",)`` (as the L2A starter does) run Earth Search's
    L1C item on its 12 bands, B10 left out; the same weights without the declaration are refused."""
    from dataclasses import replace

    from factories import derived_weights

    from pipeline.detect.weights import load_weights, save_weights

    l2a = tmp_path / "l2a.safetensors"
    derived_weights(test_weights_file, l2a, {b: b for b in SENTINEL2_L2A.bands}, "sentinel-2", "L2A")
    w = load_weights(str(l2a))
    both = tmp_path / "both.safetensors"
    save_weights(both, w.state, replace(w.meta, also_levels=("L1C",)))
    plan = plan_scene(item(ES_L1C), detector_weights(str(both)))
    assert plan.bands == SENTINEL2_L2A.bands and "B10" not in plan.assets and plan.sensor == SENTINEL2_L1C
    with pytest.raises(InputError, match="trained on Sentinel-2 L2A, not Sentinel-2 L1C"):
        plan_scene(item(ES_L1C), detector_weights(str(l2a)))
