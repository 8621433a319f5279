"""The lazy cube of one scene: ``load_scene(item) -> (time=1, band, y, x)`` uint16 on the scene's own 10 m grid.

odc-stac reads the assets (only when computed), every band resampled onto the grid of the scene's 10 m
band in its own CRS, nodata 0, bands in the weights' order, chunks aligned with the tile stride.
Radiometry is harmonised to the weights' convention (``pipeline.radiometry``) on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from .errors import InputError
from .radiometry import Harmonisation, decide, harmonise
from .sensors import Profile


# Reads are cut into windows of this side (rounded to the tile stride), whatever the model's block size: GDAL's
# bilinear warp of the 60 m bands onto the 10 m grid rounds differently by 1 DN here and there depending on the
# window it computes, so windows that followed --chunk made the masks depend on it (measured on the test
# archive: 27 to 1,033 pixels of B01/B09/B10 per scene differed between 96, 144 and whole-scene windows).
READ_WINDOW = 2048  # the default block side: with the default --chunk, reads and blocks coincide


@dataclass
class SceneCube:
    """A scene's harmonised cube ``data (time=1, band, y, x)`` uint16 (lazy), its grid and what was applied."""

    item_id: str
    data: xr.DataArray
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    harmonisation: Harmonisation


def grid_of(item, profile: Profile, reference: str = "B02"):
    """``(epsg, GDAL transform, (h, w))`` of the item's 10 m reference band from its projection metadata."""
    key = profile.assets.get(reference, reference)
    asset = item.assets.get(key)
    if asset is None:
        raise InputError(f"item {item.id}: asset {key!r} ({reference}) is missing; it has {sorted(item.assets)}")
    extra = {**item.properties, **asset.extra_fields}
    epsg = extra.get("proj:epsg") or int(str(extra.get("proj:code", "EPSG:0")).split(":")[-1])
    shape, t = extra.get("proj:shape"), extra.get("proj:transform")
    if not (epsg and shape and t):
        raise InputError(f"item {item.id}: asset {key!r} lacks proj:epsg/proj:shape/proj:transform")
    a, b, c, d, e, f = t[:6]
    return int(epsg), (c, a, b, f, d, e), (int(shape[0]), int(shape[1]))


def load_scene(item, profile: Profile, bands: tuple[str, ...], chunk: int, check_offset: bool = True) -> SceneCube:
    """Lazily load one STAC item as a harmonised cube read in ``chunk`` px windows (the job passes a fixed
    window, ``READ_WINDOW`` on the stride, so that its values never depend on the model's block size); the
    offset decision may read the (small, 60 m) B10."""
    import odc.stac
    from odc.geo.geobox import GeoBox
    from affine import Affine

    missing = [b for b in bands if profile.assets.get(b) not in item.assets]
    if missing:
        raise InputError(f"item {item.id}: bands {missing} have no asset (expected keys "
                         f"{[profile.assets.get(b) for b in missing]}; it has {sorted(item.assets)})")
    for band in bands:  # one band per asset: odc-stac would silently read the first of several
        declared = item.assets[profile.assets[band]].extra_fields.get("raster:bands")
        if declared is not None and len(declared) != 1:
            raise InputError(f"item {item.id}: asset {profile.assets[band]!r} ({band}) holds {len(declared)} bands "
                             f"(raster:bands); expected one band per asset")
    epsg, (x0, dx, rx, y0, ry, dy), shape = grid_of(item, profile)
    geobox = GeoBox(shape, Affine(dx, rx, x0, ry, dy, y0), f"EPSG:{epsg}")
    keys = [profile.assets[b] for b in bands]
    ds = odc.stac.load([item], bands=keys, geobox=geobox, chunks={"y": chunk, "x": chunk}, dtype="uint16",
                       resampling="bilinear", groupby="id", fail_on_error=True)
    cube = ds[keys].to_array("band").transpose("time", "band", "y", "x").assign_coords(band=list(bands))
    b10 = None
    if check_offset and "B10" in bands:
        b10 = _read_small(item, profile.assets["B10"])
    h = decide(dict(item.properties, id=item.id), b10)
    data = cube.copy(data=harmonise(cube.data, h.offset))
    return SceneCube(item.id, data, epsg, (x0, dx, rx, y0, ry, dy), h)


def _read_small(item, key: str) -> np.ndarray:
    """Read one coarse band (B10, 60 m) at reduced resolution for the offset check."""
    import rasterio

    href = item.assets[key].href
    try:
        with rasterio.open(href) as src:
            step = max(1, max(src.width, src.height) // 256)
            return src.read(1, out_shape=(max(1, src.height // step), max(1, src.width // step)))
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"item {item.id}: could not read {href}: {exc}") from exc


def unreadable_asset(item, profile: Profile, bands: tuple[str, ...]) -> str | None:
    """The first asset of ``bands`` that cannot be opened and read (one small window each), as
    ``"asset B03 (href): error"``; None if all read. Used to name the culprit when a scene fails."""
    import rasterio

    for band in bands:
        asset = item.assets.get(profile.assets.get(band, band))
        if asset is None:
            return f"asset for {band} is missing"
        try:
            with rasterio.open(asset.href) as src:
                src.read(1, window=((0, min(256, src.height)), (0, min(256, src.width))))
        except Exception as exc:  # noqa: BLE001 - any failure names the asset
            return f"asset {band} ({asset.href}): {exc}"
    return None
