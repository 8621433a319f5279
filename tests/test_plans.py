"""The job as a plan (metadata only) and as Dask work: blocks, band windows, and how few tasks a scene makes.

Planned from the real providers' items of tests/data/stac-items, whose assets (s3:// and https:// of the public
catalogues) are unreachable here: planning that read a pixel, or a store that was touched, would fail.
"""

import numpy as np
import pystac
import pytest
from providers import real_item

from pipeline.catalog.access import Access
from pipeline.config import BLOCK, SearchSpec
from pipeline.detect.detectors import detector_weights
from pipeline.detect.weights import default_weights
from pipeline.job.execute import JobRun, JobSpec, tile_grid
from pipeline.job.plans import Block, plan_job

ES_L1C = "earth-search/sentinel-2-l1c/S2B_24MVV_20250731_0_L1C.json"
ES_L2A = "earth-search/sentinel-2-l2a/S2B_24MVV_20250731_0_L2A.json"
PC_L2A = "planetary-computer/sentinel-2-l2a/S2B_MSIL2A_20250312T014549_R074_T53NKG_20250312T041213.json"
ES_L8 = "earth-search/landsat-c2-l2/LC08_L2SP_033032_20231008_02_T1.json"


def items(*paths):
    return [pystac.Item.from_dict(real_item(p)) for p in paths]


@pytest.fixture(scope="module")
def starters():
    return {"L1C": detector_weights(default_weights("L1C")), "L2A": detector_weights(default_weights("L2A"))}


def job(tmp_path, weights, chunk=2048):
    spec = JobSpec(
        search=SearchSpec("http://127.0.0.1:1", "c"),
        out=str(tmp_path / "never.zarr"),
        weights=weights.source,
        chunk=chunk,
    )
    return spec, tile_grid(spec, weights)


def test_a_full_scene_is_36_blocks_whose_band_windows_are_read_at_their_own_resolution(tmp_path, starters):
    weights = starters["L1C"]
    spec, tiles = job(tmp_path, weights)
    plan = plan_job(items(ES_L1C), weights, chunk=spec.chunk, tiles=tiles)
    (scene,) = plan.scenes
    assert (tiles.tile, tiles.stride, plan.chunk) == (256, 224, 2016)  # the starter: 256 px tiles, overlap 32
    assert tuple(scene.grid.shape) == (10980, 10980) and str(scene.grid.crs) == "EPSG:32724"
    assert len(scene.blocks) == 36
    rows = sorted({b.rows for b in scene.blocks})
    assert rows[0] == (0, 2016) and rows[-1] == (10080, 10980)  # the last block takes the 900 px remainder
    first, inner = scene.blocks[0], next(b for b in scene.blocks if b.index == (1, 1))
    assert first.read_rows == (0, 2016 + 32) and inner.read_rows == (2016 - 224, 4032 + 32)  # the halo
    windows = inner.band_windows(scene.read)
    # 10 m bands: the window itself; 20 m: half of it plus the kernel's neighbours; 60 m: a sixth plus neighbours
    assert windows["B02"] == ((1792, 4064), (1792, 4064))
    assert windows["B05"] == ((895, 2033), (895, 2033))
    assert windows["B01"] == ((298, 678), (298, 678))
    assert scene.harmonisation is None and scene.offset_check.endswith("B10.jp2")  # L1C: checked on a worker
    assert not (tmp_path / "never.zarr").exists()


def test_l2a_and_landsat_radiometry_is_decided_by_the_plan(tmp_path, starters):
    from factories import derived_weights

    weights = starters["L2A"]
    spec, tiles = job(tmp_path, weights)
    plan = plan_job(items(ES_L2A, PC_L2A), weights, chunk=spec.chunk, tiles=tiles)
    by_id = {s.item_id: s for s in plan.scenes}
    assert by_id["S2B_24MVV_20250731_0_L2A"].harmonisation.offset == 0  # Earth Search removed it
    assert by_id[real_item(PC_L2A)["id"]].harmonisation.offset == 1000  # baseline 05.11, as published
    assert all(s.offset_check is None for s in plan.scenes)
    landsat = detector_weights(
        derived_weights(
            default_weights("L1C"),
            tmp_path / "l8.safetensors",
            {"B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B8A", "B6": "B11", "B7": "B12", "B10": "B10"},
            "landsat-oli-tirs",
            "L2",
        )
        and str(tmp_path / "l8.safetensors")
    )
    (scene,) = plan_job(items(ES_L8), landsat, chunk=2048, tiles=tile_grid(spec, landsat)).scenes
    assert scene.harmonisation.scale[0] == pytest.approx((2.75e-05 * 10000, -0.2 * 10000))
    assert all(b.y.factor == 1 for b in scene.read.bands)  # every Landsat band is read on its own 30 m grid


def test_items_that_cannot_run_are_listed_with_their_reason_and_the_rest_planned(tmp_path, starters):
    weights = starters["L1C"]
    spec, tiles = job(tmp_path, weights)
    huge = real_item(ES_L1C)
    huge["id"] = "declares-a-million-pixels"
    for a in huge["assets"].values():
        if a.get("proj:shape"):
            a["proj:shape"] = [1_000_000, 1_000_000]
    plan = plan_job(items(ES_L1C, ES_L2A) + [pystac.Item.from_dict(huge)], weights, chunk=spec.chunk, tiles=tiles)
    assert [s.item_id for s in plan.scenes] == ["S2B_24MVV_20250731_0_L1C"]
    reasons = dict((i, r) for i, _, r in plan.failed)
    assert "trained on Sentinel-2 L1C, not Sentinel-2 L2A" in reasons["S2B_24MVV_20250731_0_L2A"]
    assert "1000000 x 1000000 px, over the limit of 32768 px" in reasons["declares-a-million-pixels"]
    assert "--max-grid" in reasons["declares-a-million-pixels"]


def scene_graph(tmp_path, weights, paths, chunk=2048):
    spec, tiles = job(tmp_path, weights, chunk)
    plan = plan_job(items(*paths), weights, chunk=chunk, tiles=tiles)
    run = JobRun(spec, plan, weights, Access(()))
    return plan, run, [run.graph(s, s.group, 0) for s in plan.scenes]


def test_a_full_scene_is_at_most_100_tasks_and_a_one_block_scene_at_most_5(tmp_path, starters):
    """Counted at the scheduler (a plugin sees every task submitted) for the real items' full 10,980 px grids, and
    for a one-block scene: no worker is there, so nothing runs."""
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Count(SchedulerPlugin):
        def __init__(self):
            self.tasks = []

        def update_graph(self, scheduler, *, keys, tasks=(), **kwargs):
            self.tasks.append(len(tasks))

    small = real_item(ES_L1C)
    small["id"] = "one-block"
    for a in small["assets"].values():  # 900 x 900 px at 10 m: one block
        if a.get("proj:shape"):
            f = int(a["proj:transform"][0]) // 10
            a["proj:shape"] = [900 // f, 900 // f]
    weights = starters["L1C"]
    spec, tiles = job(tmp_path, weights)
    plan = plan_job(items(ES_L1C) + [pystac.Item.from_dict(small)], weights, chunk=spec.chunk, tiles=tiles)
    run = JobRun(spec, plan, weights, Access(()))
    count = Count()
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        cluster.scheduler.add_plugin(count)
        futures = [
            client.get(*run.graph(s, s.group, 0)[:1], [run.graph(s, s.group, 0)[1]], sync=False)[0] for s in plan.scenes
        ]
        client.cancel(futures)
    full, one = count.tasks
    assert full == 36 + 1 and one == 1 + 1, count.tasks  # its blocks, and the sum of their counts
    ((l2a, _),) = scene_graph(tmp_path, starters["L2A"], [ES_L2A])[2]
    assert len(l2a) == 36 + 1
    ((default, _),) = scene_graph(tmp_path, starters["L1C"], [ES_L1C], chunk=BLOCK)[2]
    assert len(default) == 9 + 1  # the default block: 3 x 3 blocks of 4,032 px


def test_scene_tasks_are_named_for_the_dashboard_and_belong_to_their_run(tmp_path, starters):
    from dask.utils import key_split

    plan, run, [(dsk, counts)] = scene_graph(tmp_path, starters["L1C"], [ES_L1C])
    shown = {key_split(k) for k in dsk}
    assert shown == {"mask_S2B_24MVV_20250731_0_L1C", "counts_S2B_24MVV_20250731_0_L1C"}
    again = JobRun(run.spec, plan, run.weights, Access(()))
    assert not set(dsk) & set(again.graph(plan.scenes[0], plan.scenes[0].group, 0)[0])  # a second run: own keys
    assert set(dsk) == set(run.graph(plan.scenes[0], plan.scenes[0].group, 0)[0])  # the same run: the same keys


def test_block_edges_lie_on_the_tile_stride_and_halos_stay_inside_the_scene():
    from pipeline.detect.tiles import TileGrid
    from pipeline.job.plans import plan_blocks

    tiles = TileGrid(64, 16)
    blocks = plan_blocks((200, 301), 96, tiles)
    assert {b.rows for b in blocks} == {(0, 96), (96, 200)}  # 200 = 96 + 104: a remainder under a stride joins
    assert all(b.rows[0] % 48 == 0 and b.cols[0] % 48 == 0 for b in blocks)
    assert all(b.read_rows == (max(0, b.rows[0] - 48), min(200, b.rows[1] + 16)) for b in blocks)
    covered = np.zeros((200, 301), int)
    for b in blocks:
        covered[b.rows[0] : b.rows[1], b.cols[0] : b.cols[1]] += 1
    assert (covered == 1).all()
    assert Block((0, 0), (0, 1), (0, 1), (0, 1), (0, 1)).index == (0, 0)
