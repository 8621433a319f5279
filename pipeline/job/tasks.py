"""What Dask workers run for a scene: its radiometry check, one task per block, and the scene's class counts.

``mask_block`` is the work unit: it reads every band over the block and its halo at its native resolution
(``pipeline.read.bands``), queues the block for the process's model (``pipeline.detect.infer``: upsampled, tiled and predicted
on the model's device), writes the block's whole store chunks and returns its class counts. Tasks carry small
records (the scene's read plan, the block, the model's path and sha256, where to write), never the model or pixels.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from pipeline.catalog.access import Access, read_failure
from pipeline.catalog.sensors import CLASS_NAMES, MASK_NODATA
from pipeline.config import InferSpec
from pipeline.errors import InputError
from pipeline.job.plans import Block
from pipeline.read.bands import SceneRead, read_block
from pipeline.read.radiometry import Harmonisation, decide
from pipeline.retries import retrying
from pipeline.store.locks import lease_seconds


def task_prefix(scene: str, stage: str = "mask") -> str:
    """The dashboard's name for a scene's tasks, e.g. ``mask_S2A_MSIL1C_20170216_T33UUU``: Dask names tasks
    by the key's first dash-separated word, so the scene id joins the stage with underscores."""
    return f"{stage}_{scene.replace('-', '_')}"


@dataclass(frozen=True)
class ModelRef:
    """The model a job runs: weights ``source`` (path, URL or peer name) with the ``sha256`` the job checked, and
    the inference settings."""

    source: str
    sha256: str
    infer: InferSpec

    def __dask_tokenize__(self):
        return ("ModelRef", self.source, self.sha256, repr(self.infer))


@dataclass(frozen=True)
class Writer:
    """Where a job's blocks go: the store ``url`` (with fsspec ``options``), the ``group``, whether probabilities
    are stored, the job run's id ``run`` (arrays are opened once per run and process: a later run may have grown
    them) and its ``lease`` (``(lock object key, token)`` on object storage): a block is not written once another
    job holds the store."""

    url: str
    options: tuple
    group: str
    probabilities: bool = False
    run: str = ""
    lease: tuple | None = None

    def __dask_tokenize__(self):
        return ("Writer", self.url, self.options, self.group, self.probabilities, self.run, self.lease)

    def arrays(self):
        return _arrays(self.url, self.options, self.group, self.run)

    def write(self, t: int, block: Block, classes: np.ndarray, probabilities: np.ndarray | None = None) -> None:
        """Write a block's ``classes (y, x)`` uint8 (and ``probabilities (class, y, x)`` uint8) into time slot ``t``:
        whole chunks, so a retried task writes the same bytes. A store that is unreachable for a while is waited
        for (``pipeline.retries``), up to a lease's time."""
        retrying(self._write, t, block, classes, probabilities, seconds=lease_seconds())

    def _write(self, t, block, classes, probabilities) -> None:
        if self.lease is not None:
            _check_lease(self.url, self.options, *self.lease)
        arrays = self.arrays()
        (y0, y1), (x0, x1) = block.rows, block.cols
        arrays["mask"][t, y0:y1, x0:x1] = classes
        if self.probabilities and probabilities is not None:
            arrays["probability"][t, :, y0:y1, x0:x1] = probabilities


_ARRAYS: dict[tuple, dict] = {}
_ARRAYS_LOCK = threading.Lock()


def _arrays(url: str, options: tuple, group: str, run: str) -> dict:
    """The group's ``mask`` (and ``probability``) zarr arrays, opened once per process and job run."""
    key = (url, options, group, run)
    with _ARRAYS_LOCK:
        if key not in _ARRAYS:
            import zarr

            args = {"store": url} if "://" not in url else {"store": url, "storage_options": dict(options)}
            g = zarr.open_group(**args, path=group, mode="r+")
            for old in [k for k in _ARRAYS if k[:3] == key[:3]]:  # an earlier run's view of the group
                del _ARRAYS[old]
            # every chunk written whole, nodata ones too: no read-back, and no comparison of each chunk with the
            # fill value (that check cost four times the write of a 2,016 px chunk)
            _ARRAYS[key] = {
                name: g[name].with_config({"write_empty_chunks": True}) for name in ("mask", "probability") if name in g
            }
        return _ARRAYS[key]


def _check_lease(url: str, options: tuple, key: str, token: str) -> None:
    """Raise ``LeaseLostError`` unless the store's lock object (``key``) still holds this job's ``token``."""
    import json

    import fsspec

    from pipeline.store.locks import LeaseLostError

    try:
        data = fsspec.filesystem(url.split("://", 1)[0], **dict(options)).cat_file(key)
    except FileNotFoundError:
        data = b"{}"
    try:
        holder = json.loads(data).get("token")
    except (ValueError, AttributeError):
        holder = None
    if holder != token:
        raise LeaseLostError(f"stopped writing {url}: another job holds its lease now")


def radiometry(properties: tuple, b10_href: str | None, access: Access) -> Harmonisation:
    """Sentinel-2's offset decision, on a worker: metadata, checked against B10 read at reduced resolution. Made
    once per process and scene (the blocks of a scene on one worker share it; it is the same on every worker)."""
    key = (properties, b10_href)
    with _DECISIONS_LOCK:
        if key in _DECISIONS:
            return _DECISIONS[key]
    props = dict(properties)
    b10 = None
    if b10_href is not None:
        import rasterio

        failure = None
        try:
            with access.env(b10_href), rasterio.open(b10_href) as src:
                step = max(1, max(src.width, src.height) // 256)
                b10 = src.read(1, out_shape=(max(1, src.height // step), max(1, src.width // step)))
        except rasterio.errors.RasterioIOError as exc:
            failure = read_failure(f"item {props['id']}: B10 (the offset check)", b10_href, exc)
        if failure:  # raised outside the handler: an error chained to GDAL's does not pickle back to the client
            raise InputError(failure)
    decision = decide(props, b10)
    with _DECISIONS_LOCK:
        _DECISIONS[key] = decision
        while len(_DECISIONS) > 256:  # scenes long done
            _DECISIONS.pop(next(iter(_DECISIONS)))
    return decision


_DECISIONS: dict = {}
_DECISIONS_LOCK = threading.Lock()


def mask_block(
    scene: SceneRead, block: Block, radiometry_of, model: ModelRef, writer: Writer, t: int, access: Access
) -> tuple[np.ndarray, Harmonisation]:
    """Read, predict and write one block: ``(counts (6,) int64 (classes 0..3, nodata, the cloud the overcast check
    made), the radiometry applied)``. ``radiometry_of``: the scene's ``Harmonisation``, or ``(properties, B10 href)`` for the Sentinel-2
    L1C check (``radiometry``)."""
    from pipeline.detect.detectors import get_predictor

    harmonisation = radiometry_of if isinstance(radiometry_of, Harmonisation) else radiometry(*radiometry_of, access)
    native = read_block(scene, block.read_rows, block.read_cols, (block.rows, block.cols), harmonisation, access)
    predictor = get_predictor(model.source, model.infer, sha256=model.sha256)
    pred = predictor.predict_block(native, probabilities=writer.probabilities)
    writer.write(t, block, pred.classes, pred.probabilities)
    counts = pred.counts  # counted where the classes were made (on the GPU, nearly free)
    if counts is None:
        counted = np.bincount(pred.classes.ravel(), minlength=256)
        counts = np.append(counted[: len(CLASS_NAMES)], [counted[MASK_NODATA], 0]).astype(np.int64)
    return counts, harmonisation


def scene_counts(*blocks: tuple[np.ndarray, Harmonisation]) -> tuple[np.ndarray, Harmonisation]:
    """A scene's counts ``(6,)`` int64 (as ``mask_block``'s), the sum of its blocks', with the radiometry applied (the same in
    every block)."""
    return np.sum([c for c, _ in blocks], axis=0, dtype=np.int64), blocks[0][1]
