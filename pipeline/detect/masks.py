"""Cloud masks of a lazy cube on Dask: ``predict_masks(cube) -> (time, y, x) uint8``, via overlapping blocks.

Blocks are rechunked so their edges lie on multiples of the tile stride and are read with a one-sided halo
(``TileGrid.halo``: one stride before, ``overlap`` after), which holds every tile touching the block's
interior; tiles sit on the scene's global grid (``pipeline.detect.tiles``), so the result is byte-identical for any
chunking. Workers build the model once per process (``pipeline.detect.detectors.get_predictor``):
tasks carry the weights' path, never the model.
"""

from __future__ import annotations

import contextlib

import dask
import dask.array as da
import numpy as np
import xarray as xr

from pipeline.catalog.sensors import CLASS_NAMES, MASK_NODATA, PROBABILITY_SCALE
from pipeline.config import BLOCK, InferSpec
from pipeline.detect.detectors import detector_weights, get_predictor
from pipeline.detect.weights import default_weights
from pipeline.errors import ConfigError
from pipeline.job.plans import aligned_chunks
from pipeline.job.tasks import task_prefix

FLAG_MEANINGS = " ".join(CLASS_NAMES)


def _predict_block(
    block: np.ndarray,
    weights: str,
    spec: InferSpec,
    before: int,
    starts_y,
    starts_x,
    probabilities: bool = False,
    block_info=None,
) -> np.ndarray:
    """One overlapped block ``(band, y+halos, x+halos)`` -> its interior's classes ``(y, x)`` uint8, or with
    ``probabilities`` ``(1 + class, y, x)`` uint8: the classes, then each class's probability x 250.
    ``before``: the leading halo (boundary="none": none before the scene's first row and column)."""
    _, i, j = block_info[0]["chunk-location"]
    y0, x0 = starts_y[i], starts_x[j]  # interior start on the scene grid
    oy, ox = max(0, y0 - before), max(0, x0 - before)
    h, w = starts_y[i + 1] - y0, starts_x[j + 1] - x0
    ty, tx = y0 - oy, x0 - ox
    pred = get_predictor(weights, spec).predict(
        block, offset=(oy, ox), needed=(slice(ty, ty + h), slice(tx, tx + w)), probabilities=probabilities
    )
    classes = pred.classes[ty : ty + h, tx : tx + w]
    if not probabilities:
        return classes
    probs = pred.probabilities[:, ty : ty + h, tx : tx + w]
    scaled = np.where(np.isfinite(probs), np.round(np.nan_to_num(probs) * PROBABILITY_SCALE), MASK_NODATA)
    return np.concatenate([classes[None], scaled.astype(np.uint8)])


def _with_halo(scene: da.Array, before: int, after: int) -> da.Array:
    """``scene (band, y, x)`` with each block extended by ``before`` pixels up/left and ``after`` down/right
    (taken from its neighbours; nothing beyond the scene's edges). Blocks are at least a stride wide, so no
    block is rechunked; an axis of one block needs no halo."""
    depth = {0: (0, 0), **{a: (before, after) if len(scene.chunks[a]) > 1 else (0, 0) for a in (1, 2)}}
    return da.overlap.overlap(scene, depth=depth, boundary={0: "none", 1: "none", 2: "none"})


def predict_masks(
    cube: xr.DataArray,
    weights: str | None = None,
    spec: InferSpec = InferSpec(),
    chunk: int = BLOCK,
    names: list[str] | None = None,
    gpu: bool = False,
    probabilities: bool = False,
):
    """Lazy masks of ``cube (time, band, y, x)`` harmonised DN (uint16, bands in the weights' order), with
    ``weights`` (path or URL; default: the shipped starter weights).

    Returns ``(time, y, x)`` uint8 with 0..3 and 255 for nodata, with the cube's coordinates; with
    ``probabilities``, a Dataset of that ``mask`` and ``probability (time, class, y, x)`` uint8 (p x 250,
    255 for nodata) from the same model run. ``chunk`` is the
    target block side (rounded to the tile stride); ``names[t]`` names time slice t's tasks (e.g. the scene id)
    so the dashboard's task stream reads like the job; ``gpu`` annotates tasks with a ``GPU`` resource.
    """
    weights = str(weights or default_weights())
    if cube.dims != ("time", "band", "y", "x"):
        raise ConfigError(f"cube dims are {cube.dims}; expected ('time', 'band', 'y', 'x')")
    meta = detector_weights(weights).meta
    if "band" in cube.coords and tuple(map(str, cube.band.values)) != meta.bands:
        raise ConfigError(f"cube bands {list(map(str, cube.band.values))} differ from the weights' {list(meta.bands)}")
    grid = spec.tiles(meta.tile_size)
    stride = grid.stride
    before, after = grid.halo
    data = cube.data if isinstance(cube.data, da.Array) else da.from_array(cube.data)
    _, nb, ny, nx = data.shape
    cy, cx = aligned_chunks(ny, chunk, stride), aligned_chunks(nx, chunk, stride)
    starts_y, starts_x = np.cumsum((0,) + cy).tolist(), np.cumsum((0,) + cx).tolist()
    slices = []
    for t in range(data.shape[0]):
        # "tasks", never P2P: each block is cut from at most four read windows' bands, a local split that
        # survives a lost worker as any task does; Dask picks P2P under a distributed client for blocks much
        # smaller than the read windows, and a worker lost mid-shuffle then failed the scene (seen on SLURM)
        scene = data[t].rechunk((nb, cy, cx), method="tasks")
        padded = _with_halo(scene, before, after)
        name = f"{task_prefix(names[t] if names else str(t))}-{dask.base.tokenize(scene, weights, spec)}"
        layers = (
            {"chunks": ((1 + len(meta.classes),), cy, cx)} if probabilities else {"chunks": (cy, cx), "drop_axis": 0}
        )
        with dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext():
            slices.append(
                da.map_blocks(
                    _predict_block,
                    padded,
                    weights,
                    spec,
                    before,
                    starts_y,
                    starts_x,
                    probabilities,
                    name=name,
                    dtype=np.uint8,
                    meta=np.empty((0,) * (3 if probabilities else 2), np.uint8),
                    **layers,
                )
            )
    empty = (0, 1 + len(meta.classes), ny, nx) if probabilities else (0, ny, nx)
    out = da.stack(slices) if slices else da.zeros(empty, np.uint8)
    coords = {k: v for k, v in cube.coords.items() if "band" not in v.dims}
    mask = xr.DataArray(
        out[:, 0] if probabilities else out,
        dims=("time", "y", "x"),
        coords=coords,
        name="mask",
        attrs={"flag_values": [0, 1, 2, 3], "flag_meanings": FLAG_MEANINGS, "nodata": MASK_NODATA},
    )
    if not probabilities:
        return mask
    prob = xr.DataArray(
        out[:, 1:],
        dims=("time", "class", "y", "x"),
        coords=dict(coords, **{"class": list(meta.classes)}),
        attrs={"long_name": f"class probability x {PROBABILITY_SCALE}", "nodata": MASK_NODATA},
    )
    return xr.Dataset({"mask": mask, "probability": prob})
