"""The lazy cube of one scene: ``load_scene(item, plan) -> (time=1, band, y, x)`` uint16 on the scene's own grid.

odc-stac reads the assets (only when computed), every band resampled onto the grid of the scene's finest band
(10 m for Sentinel-2, 30 m for Landsat) in its own CRS, nodata 0, bands in the model's order, chunks aligned
with the tile stride.
Radiometry is harmonised to the weights' convention (``pipeline.radiometry``) on the fly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .access import Access, redact
from .assets import band_assets
from .errors import InputError
from .plans import ScenePlan
from .radiometry import Harmonisation, band_scale, decide, decide_landsat, harmonise


# Reads are cut into windows of this side (rounded to the tile stride), whatever the model's block size: GDAL's
# bilinear warp of the 60 m bands onto the 10 m grid rounds differently by 1 DN here and there depending on the
# window it computes, so windows that followed --chunk made the masks depend on it (measured on the test
# archive: 27 to 1,033 pixels of B01/B09/B10 per scene differed between 96, 144 and whole-scene windows).
READ_WINDOW = 2048  # the default block side: with the default --chunk, reads and blocks coincide


@dataclass
class SceneCube:
    """A scene's harmonised cube ``data (time=1, band, y, x)`` uint16 (lazy), its grid and what was applied
    (``harmonisation``: a ``Harmonisation``, or a ``dask.delayed`` one where the workers check it against the
    data)."""

    item_id: str
    data: xr.DataArray
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    harmonisation: object


def load_scene(item, plan: ScenePlan, chunk: int, access: Access | None = None,
               check_offset: bool = True) -> SceneCube:
    """Lazily load one STAC item as planned (``plan``: its band assets and grid) as a harmonised cube read in
    ``chunk`` px windows (the job passes a fixed window, ``READ_WINDOW`` on the stride, so that its values never
    depend on the model's block size). Sentinel-2 L1C's offset decision reads the (small, 60 m) B10 on a
    worker, as a task the cube depends on."""
    import dask
    import dask.array as da
    import odc.stac
    from affine import Affine
    from odc.geo.geobox import GeoBox

    access = access or Access(())
    for band, key in plan.assets.items():  # one band per asset: odc-stac would silently read the first of several
        declared = item.assets[key].extra_fields.get("raster:bands")
        if declared is not None and len(declared) != 1:
            raise InputError(f"item {item.id}: asset {key!r} ({band}) holds {len(declared)} bands (raster:bands); "
                             f"expected one band per asset")
    x0, dx, rx, y0, ry, dy = plan.grid.transform
    geobox = GeoBox(plan.grid.shape, Affine(dx, rx, x0, ry, dy, y0), plan.grid.crs)
    keys = list(plan.assets.values())
    ds = odc.stac.load([item], bands=keys, geobox=geobox, chunks={"y": chunk, "x": chunk}, dtype="uint16",
                       nodata=0, resampling="bilinear", groupby="id", fail_on_error=True)
    cube = ds[keys].to_array("band").transpose("time", "band", "y", "x").assign_coords(band=list(plan.bands))
    props = dict(item.properties, id=item.id)
    if plan.sensor.name == "sentinel-2":
        b10 = None
        if check_offset and plan.sensor.level == "L1C":
            try:
                b10 = item.assets[band_assets(item, plan.sensor, ("B10",))["B10"]].href
            except InputError:
                b10 = None
        h = dask.delayed(_sentinel2_decision, pure=True)(props, b10, access)
        data = da.map_blocks(_subtract, cube.data, h, dtype=np.uint16)
    else:
        declared = {b: band_scale(item.assets[k].extra_fields) for b, k in plan.assets.items()}
        h = decide_landsat(plan.sensor.level, plan.bands, dict(zip(plan.sensor.bands, plan.sensor.wavelengths)),
                           declared)
        data = harmonise(cube.data, 0, h.scale)
    epsg = int(plan.grid.crs.split(":")[-1])
    return SceneCube(item.id, cube.copy(data=data), epsg, plan.grid.transform, h)


def _subtract(block: np.ndarray, h: Harmonisation) -> np.ndarray:
    return harmonise(block, h.offset)


def _sentinel2_decision(properties: dict, b10_href: str | None, access: Access) -> Harmonisation:
    """Sentinel-2's offset decision, on a worker: metadata, checked against B10 read at reduced resolution."""
    b10 = None
    if b10_href is not None:
        import rasterio

        try:
            with access.env(), rasterio.open(b10_href) as src:
                step = max(1, max(src.width, src.height) // 256)
                b10 = src.read(1, out_shape=(max(1, src.height // step), max(1, src.width // step)))
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"item {properties['id']}: could not read B10 ({redact(b10_href)}): {redact(exc)}") from exc
    return decide(properties, b10)


def unreadable_asset(item, plan: ScenePlan, access: Access | None = None) -> str | None:
    """The first planned asset that cannot be opened and read (one small window each), as
    ``"asset B03 (href): error"``; None if all read. Used to name the culprit when a scene fails."""
    import rasterio

    access = access or Access(())
    for band, key in plan.assets.items():
        asset = item.assets.get(key)
        if asset is None:
            return f"asset for {band} is missing"
        try:
            with access.env(), rasterio.open(asset.href) as src:
                src.read(1, window=((0, min(256, src.height)), (0, min(256, src.width))))
        except Exception as exc:  # noqa: BLE001 - any failure names the asset
            hint = ""
            if asset.href.startswith("s3://") and re.search(r"403|Access ?Denied|Forbidden", str(exc), re.I):
                hint = (" (s3 access refused: set AWS credentials; for a requester-pays bucket also "
                        "AWS_REQUEST_PAYER=requester)")
            return f"asset {band} ({redact(asset.href)}): {redact(exc)}{hint}"
    return None
