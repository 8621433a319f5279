"""The job as a plan, decided from the items' metadata alone before any cluster starts or any store is touched.

``plan_job(items, weights, ...) -> JobPlan``: pure (no pixels, no store, no cluster). For each item a ``ScenePlan``:
sensor and level, the asset of every band the model reads, the scene's pixel grid (an odc-geo ``GeoBox``), the
radiometry to apply (or the check that decides it on a worker), the model, and its ``Block``s -- the work units,
each with the window of the scene it reads (interior + halo) and the band windows that needs. Items that cannot be
run are listed with the reason (they fail alone). ``check_items`` is the pre-flight check: ``PreflightError``
(exit status 2 in the CLI, one line saying what the items offer and what would work) when none of the first items
can be run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from odc.geo.geobox import GeoBox

from pipeline.catalog.assets import asset_resolution, band_assets, sensor_of
from pipeline.catalog.sensors import Profile, Sensor
from pipeline.config import BLOCK
from pipeline.detect.detectors import DETECTORS, detector_of, model_for, weights_sensor
from pipeline.detect.tiles import TileGrid
from pipeline.detect.weights import STARTERS, Weights
from pipeline.errors import CloudmaskError, InputError, PreflightError
from pipeline.read.bands import BandSource, SceneRead
from pipeline.read.grids import MAX_GRID_PX, axes_on, check_size, declared_grid, grid_name
from pipeline.read.radiometry import Harmonisation, band_scale, decide, decide_landsat
from pipeline.read.upsample import Axis, Span

SAMPLE = 10  # items the pre-flight check looks at
# item properties the Sentinel-2 offset decision reads (pipeline.read.radiometry.decide)
RADIOMETRY_KEYS = (
    "s2:processing_baseline",
    "processing:version",
    "s2:product_uri",
    "s2:product_id",
    "earthsearch:boa_offset_applied",
)


@dataclass(frozen=True)
class Block:
    """A block of a scene: ``index`` (row, column) among its blocks, its interior ``rows`` x ``cols`` (scene
    pixels; edges on multiples of the tile stride, so whole store chunks) and the window read for it,
    ``read_rows`` x ``read_cols`` (interior + halo, clipped to the scene)."""

    index: tuple[int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]
    read_rows: tuple[int, int]
    read_cols: tuple[int, int]

    def __dask_tokenize__(self):
        return ("Block", self.index, self.rows, self.cols, self.read_rows, self.read_cols)

    def band_windows(self, scene: SceneRead) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
        """``{band: ((row0, row1), (col0, col1))}``: the file pixels each band's window covers, as declared."""
        out = {}
        for b in scene.bands:
            y, x = Span.of(b.y, *self.read_rows), Span.of(b.x, *self.read_cols)
            out[b.band] = ((y.src_start, y.src_stop), (x.src_start, x.src_stop))
        return out


@dataclass(frozen=True)
class ScenePlan:
    """One item's plan: ``sensor``, ``assets`` (band -> asset key, in the model's band order), its ``grid``
    (the finest band's) and store ``group``, ``read`` (what workers read), ``blocks``, ``model`` (what the tasks
    run: a weights path or URL, or a peer's source name) and its radiometry: ``harmonisation`` when the metadata
    decides it, else ``offset_check`` (the B10 href a worker reads to check the Sentinel-2 L1C offset) with the
    ``properties`` the decision reads."""

    item_id: str
    datetime: str
    sensor: Sensor
    assets: dict
    grid: GeoBox
    model: str
    read: SceneRead | None = None
    blocks: tuple[Block, ...] = ()
    harmonisation: Harmonisation | None = None
    offset_check: str | None = None
    properties: tuple = ()
    provider_cloud_cover: float = float("nan")

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.assets)

    @property
    def group(self) -> str:
        return grid_name(self.grid)

    @property
    def time(self) -> np.datetime64:
        """The acquisition time, UTC, as the store's ``time`` coordinate holds it."""
        value = dt.datetime.fromisoformat(self.datetime.replace("Z", "+00:00"))
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return np.datetime64(value)


@dataclass(frozen=True)
class JobPlan:
    """The whole job: ``scenes`` in submission order (earlier acquisitions first), ``failed`` ``(item id, datetime,
    reason)`` of items that cannot be run, the ``groups`` (store group -> grid), the block side ``chunk`` (a
    multiple of the tile stride) and the tile grid."""

    scenes: tuple[ScenePlan, ...]
    failed: tuple[tuple[str, str, str], ...]
    groups: dict
    chunk: int
    tiles: TileGrid


def aligned_chunk(target: int, stride: int) -> int:
    """The block side used for ``target``: a multiple of ``stride`` at most ``target`` (at least one stride)."""
    return max(stride, (target // stride) * stride)


def aligned_chunks(size: int, target: int, stride: int) -> tuple[int, ...]:
    """Block sizes along an axis of ``size`` pixels: multiples of ``stride`` near ``target``, remainder last.
    A remainder under one stride joins the last block: as a block of its own it would rerun a whole row of
    tiles for a sliver of pixels."""
    step = aligned_chunk(target, stride)
    full, rest = divmod(size, step)
    if full and 0 < rest < stride:
        return (step,) * (full - 1) + (step + rest,)
    return (step,) * full + ((rest,) if rest else ())


def plan_blocks(shape: tuple[int, int], chunk: int, tiles: TileGrid) -> tuple[Block, ...]:
    """The blocks of a scene of ``shape (h, w)``: sides near ``chunk`` on the tile stride, each read with the tile
    grid's halo (a stride before, the overlap after; nothing beyond the scene), row-major."""
    before, after = tiles.halo
    edges = []
    for size in shape:
        sizes = aligned_chunks(size, chunk, tiles.stride)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        edges.append([(a, a + s, max(0, a - before), min(size, a + s + after)) for a, s in zip(starts, sizes)])
    return tuple(
        Block((i, j), (y0, y1), (x0, x1), (ry0, ry1), (rx0, rx1))
        for i, (y0, y1, ry0, ry1) in enumerate(edges[0])
        for j, (x0, x1, rx0, rx1) in enumerate(edges[1])
    )


def scene_grid(item, assets: dict) -> tuple[str, GeoBox]:
    """``(asset key, grid)`` of the finest-resolution asset among ``assets`` (band -> key) that declares its grid;
    assets that declare none are placed on it by their files."""
    res = {k: asset_resolution(item, k) or 1e9 for k in assets.values()}
    order = sorted(res, key=lambda k: (res[k], k))
    declared = {k: declared_grid(item, k) for k in order}  # finest first: an unusable grid is named there
    usable = [k for k in order if declared[k] is not None]
    if not usable:
        raise InputError(
            f"item {item.id}: none of its assets {order} declares proj:shape/proj:transform (its grid); "
            f"expected at least one, as Earth Search and Planetary Computer publish"
        )
    key, finest = usable[0], order[0]
    if res[finest] < res[key]:
        raise InputError(
            f"item {item.id}: asset {finest!r} ({res[finest]:g} m) declares no grid and no {res[finest]:g} m "
            f"asset does; expected proj:shape/proj:transform on the finest assets"
        )
    return key, declared[key]


def band_source(item, band: str, key: str, scene: GeoBox, sensor: Sensor) -> BandSource:
    """Where band ``band`` (asset ``key``) lies on the ``scene`` grid: its declared grid, else (no projection
    metadata) the scene's origin at the asset's resolution, which the file then confirms or corrects."""
    asset = item.assets[key]
    extra = asset.extra_fields
    declared = declared_grid(item, key) if extra.get("proj:shape") and extra.get("proj:transform") else None
    if declared is not None:
        try:
            y, x = axes_on(scene, declared.crs, declared.affine, declared.shape)
        except ValueError as exc:
            raise InputError(
                f"item {item.id}: asset {key!r} ({band}) cannot be read onto the scene's grid: {exc}"
            ) from None
    else:
        res = asset_resolution(item, key) or abs(scene.affine.a)
        f = max(1, round(res / abs(scene.affine.a)))
        h, w = scene.shape
        y, x = Axis(f, 0, -(-h // f)), Axis(f, 0, -(-w // f))
    rb = (extra.get("raster:bands") or [{}])[0]
    dtype = rb.get("data_type") or extra.get("data_type") or "uint16"
    return BandSource(band, key, asset.href, y, x, str(dtype), declared is not None, band_scale(extra))


def check_href(item_id: str, key: str, href: str, allowed: tuple[str, ...] | None) -> None:
    """Refuse (``InputError``) an asset href that matches none of the ``allowed`` patterns (fnmatch, e.g.
    ``s3://sentinel-cogs/*``); None allows every href."""
    from fnmatch import fnmatchcase

    from pipeline.catalog.access import redact

    if allowed is not None and not any(fnmatchcase(href, p) for p in allowed):
        raise InputError(
            f"item {item_id}: asset {key!r} is at {redact(href)}, which matches none of the allowed "
            f"hrefs ({', '.join(allowed)}); the workers read whatever the items name: add a pattern to "
            f"--allowed-hrefs only for places you trust"
        )


def plan_scene(
    item,
    weights: Weights,
    profile: Profile | None = None,
    *,
    chunk: int | None = None,
    tiles: TileGrid | None = None,
    max_grid: int = MAX_GRID_PX,
    allowed_hrefs: tuple[str, ...] | None = None,
) -> ScenePlan:
    """The plan of one item (a ``pystac.Item``) for ``weights``; ``InputError`` when it cannot be run. Blocks are
    planned when ``chunk`` and ``tiles`` are given; ``allowed_hrefs``: the patterns every href read must match."""
    sensor = profile.sensor if profile is not None else sensor_of(item)
    try:
        model, bands = model_for(weights, sensor)
    except InputError as exc:
        raise InputError(f"item {item.id}: {exc}") from None
    assets = band_assets(item, sensor, bands, profile)
    for band, key in assets.items():  # one band per asset: a stacked file would be read as its first band
        declared = item.assets[key].extra_fields.get("raster:bands")
        if declared is not None and len(declared) != 1:
            raise InputError(
                f"item {item.id}: asset {key!r} ({band}) holds {len(declared)} bands (raster:bands); "
                f"expected one band per asset"
            )
    _, grid = scene_grid(item, assets)
    check_size(item.id, grid, max_grid)
    read = SceneRead(item.id, grid, tuple(band_source(item, b, k, grid, sensor) for b, k in assets.items()))
    props = {k: item.properties[k] for k in RADIOMETRY_KEYS if k in item.properties}
    props["id"] = item.id
    harmonisation, check = _radiometry(item, sensor, assets, read, props)
    for key, href in [*((b.asset, b.href) for b in read.bands), *((("B10", check),) if check else ())]:
        check_href(item.id, key, href, allowed_hrefs)
    blocks = plan_blocks(tuple(grid.shape), chunk, tiles) if chunk and tiles else ()
    cover = item.properties.get("eo:cloud_cover")
    return ScenePlan(
        item.id,
        str(item.datetime),
        sensor,
        assets,
        grid,
        model,
        read,
        blocks,
        harmonisation,
        check,
        tuple(sorted(props.items())),
        float(cover) if cover is not None else float("nan"),
    )


def _radiometry(item, sensor: Sensor, assets: dict, read: SceneRead, props: dict):
    """``(harmonisation, None)`` where the metadata decides it (Landsat, Sentinel-2 L2A), else ``(None, B10 href)``:
    Sentinel-2 L1C's offset is checked against its cirrus band on a worker."""
    if sensor.name != "sentinel-2":
        declared = {b.band: b.scale for b in read.bands}
        return decide_landsat(sensor.level, tuple(assets), dict(zip(sensor.bands, sensor.wavelengths)), declared), None
    if sensor.level == "L1C":
        try:
            key = assets.get("B10") or band_assets(item, sensor, ("B10",))["B10"]
            return None, item.assets[key].href
        except InputError:
            pass
    return decide(props), None


def plan_job(
    items: list,
    weights: Weights,
    profile: Profile | None = None,
    *,
    chunk: int = BLOCK,
    tiles: TileGrid,
    max_grid: int = MAX_GRID_PX,
    allowed_hrefs: tuple[str, ...] | None = None,
) -> JobPlan:
    """The plan of a job over ``items`` (pystac Items) with ``weights``: every item planned (``plan_scene``) with
    blocks of about ``chunk`` px on the ``tiles`` grid, or listed as failed with its reason; scenes ordered by
    acquisition time, then id."""
    scenes, failed = [], []
    side = aligned_chunk(chunk, tiles.stride)
    for item in sorted(items, key=lambda i: (str(i.datetime), i.id)):
        try:
            scenes.append(
                plan_scene(
                    item, weights, profile, chunk=side, tiles=tiles, max_grid=max_grid, allowed_hrefs=allowed_hrefs
                )
            )
        except CloudmaskError as exc:
            failed.append((item.id, str(item.datetime), str(exc)))
    groups = {s.group: s.grid for s in scenes}
    return JobPlan(tuple(scenes), tuple(failed), groups, side, tiles)


def check_items(
    items: list,
    weights: Weights,
    where: str,
    profile: Profile | None = None,
    sample: int = SAMPLE,
    max_grid: int = MAX_GRID_PX,
    allowed_hrefs: tuple[str, ...] | None = None,
) -> tuple:
    """``(item, plan)`` of the first of the first ``sample`` items that can be run with ``weights``; else
    ``PreflightError`` with one line naming what they are and what would work. ``where``: the collection and
    API, for the message."""
    reasons, sensors = [], []
    for item in items[:sample]:
        try:
            return item, plan_scene(item, weights, profile, max_grid=max_grid, allowed_hrefs=allowed_hrefs)
        except InputError as exc:
            reasons.append(str(exc))
            try:
                sensors.append(sensor_of(item))
            except InputError:
                pass
    hint = _what_would_work(weights, sensors)
    raise PreflightError(
        f"none of the first {len(reasons)} items of {where} can be run: {reasons[0]}{'; ' + hint if hint else ''}"
    )


def _what_would_work(weights: Weights, sensors: list[Sensor]) -> str:
    if not sensors:
        return "give --profile for a catalogue without band metadata"
    sensor, current = sensors[0], detector_of(weights)
    options = []
    if not _runs(current, weights, sensor):
        if (
            sensor.name == "sentinel-2"
            and sensor.level in STARTERS
            and not weights.source.endswith(STARTERS[sensor.level])
        ):
            options.append(f"the shipped {sensor.level} starter (no --weights)")
        options.append(f"weights trained on {sensor.key} (--weights)")
        others = [d for d in DETECTORS.values() if d is not current and not d.takes_weights]
        options += [f"--model {d.name}" for d in others if d.bands_on(sensor) is not None]
    trained = weights_sensor(weights) if current.takes_weights else None
    if trained is not None and trained.key != sensor.key:
        options.append(f"a {trained.key} collection (e.g. --collection {trained.key})")
    return "use " + ", or ".join(options) if options else ""


def _runs(detector, weights: Weights, sensor: Sensor) -> bool:
    try:
        detector.model_for(weights, sensor)
    except InputError:
        return False
    return True
