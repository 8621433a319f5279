"""The lazy pixels of one scene for users who want them: ``load_scene(plan) -> (time=1, band, y, x)`` uint16.

Read the way the job reads them (``pipeline.read.bands``: each band's window at its native resolution, brought onto the
scene's finest grid with the exact kernel of ``pipeline.read.upsample``, harmonised, 0 where any band is nodata), one
Dask chunk per block of the plan, so a cube's values are the ones the masks were computed from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from pipeline.catalog.access import Access
from pipeline.config import BLOCK
from pipeline.detect.tiles import TileGrid
from pipeline.job.plans import ScenePlan, plan_blocks
from pipeline.read.bands import SceneRead, block_image, read_block
from pipeline.read.radiometry import Harmonisation


@dataclass
class SceneCube:
    """A scene's harmonised cube ``data (time=1, band, y, x)`` uint16 (lazy) and what was applied
    (``harmonisation``: a ``Harmonisation``, or a ``dask.delayed`` one where a worker checks it against the data)."""

    item_id: str
    data: xr.DataArray
    harmonisation: object


def _chunk(
    read: SceneRead, rows: tuple[int, int], cols: tuple[int, int], harmonisation: Harmonisation, access: Access
) -> np.ndarray:
    block = read_block(read, rows, cols, (rows, cols), harmonisation, access)
    return block_image(block)[None]


def load_scene(plan: ScenePlan, chunk: int = BLOCK, access: Access | None = None) -> SceneCube:
    """The scene of ``plan`` (``pipeline.job.plans.plan_scene``) as a lazy cube in ``chunk`` px blocks."""
    import dask
    import dask.array as da
    from dask.base import tokenize

    from pipeline.job.tasks import radiometry

    access = access or Access(())
    harm = plan.harmonisation
    graph: dict = {}
    h_ref = harm
    if harm is None:  # Sentinel-2 L1C: a worker checks the offset against B10
        harm = dask.delayed(radiometry, pure=True)(plan.properties, plan.offset_check, access)
        graph.update(harm.__dask_graph__())
        h_ref = harm.key
    blocks = plan_blocks(tuple(plan.grid.shape), chunk, TileGrid(1, 0))
    name = f"cube-{tokenize(plan.item_id, plan.read, chunk, access)}"
    for b in blocks:
        graph[(name, 0, 0, *b.index)] = (_chunk, plan.read, b.rows, b.cols, h_ref, access)
    rows = tuple(b.rows[1] - b.rows[0] for b in blocks if b.index[1] == 0)
    cols = tuple(b.cols[1] - b.cols[0] for b in blocks if b.index[0] == 0)
    data = da.Array(
        graph,
        name,
        chunks=((1,), (len(plan.bands),), rows, cols),
        dtype=np.uint16,
        meta=np.empty((0, 0, 0, 0), np.uint16),
    )
    coords = {k: c.values for k, c in plan.grid.coords.items()}
    cube = xr.DataArray(
        data, dims=("time", "band", "y", "x"), coords={"time": [plan.time], "band": list(plan.bands), **coords}
    )
    return SceneCube(plan.item_id, cube, harm)
