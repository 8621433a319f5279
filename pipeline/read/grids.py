"""Pixel grids, one type from item to store: odc-geo's ``GeoBox`` (shape, affine, CRS).

``declared_grid(item, key)`` reads an asset's grid from its STAC projection metadata; ``grid_name(geobox)`` names
the store group of a grid; ``axes_on(scene, crs, affine, shape)`` says where another grid (a band's file) lies on a
scene's grid, in whole scene pixels, for the exact upsampling of ``pipeline.read.upsample``.
"""

from __future__ import annotations

import functools

from affine import Affine
from odc.geo.geobox import GeoBox

from pipeline.config import MAX_GRID_PX
from pipeline.errors import InputError
from pipeline.read.upsample import Axis

ALIGNMENT_PX = 1e-3  # a file origin within this many scene pixels of a pixel edge counts as on it


def geobox(crs: str, affine: Affine | tuple, shape: tuple[int, int]) -> GeoBox:
    """A GeoBox from a CRS, an affine (or its six GDAL-order numbers ``x0, dx, rx, y0, ry, dy``) and ``(h, w)``."""
    if not isinstance(affine, Affine):
        x0, dx, rx, y0, ry, dy = affine
        affine = Affine(dx, rx, x0, ry, dy, y0)
    return GeoBox((int(shape[0]), int(shape[1])), affine, crs)


def epsg_code(extra: dict) -> str | None:
    """``EPSG:n`` from STAC ``proj:code`` / ``proj:epsg``; None where neither names an EPSG code."""
    code = extra.get("proj:code") or (f"EPSG:{extra['proj:epsg']}" if extra.get("proj:epsg") else None)
    if not code or not str(code).upper().startswith("EPSG:") or not str(code).split(":")[-1].isdigit():
        return None
    return f"EPSG:{int(str(code).split(':')[-1])}"


_PROJ = ("proj:shape", "proj:transform", "proj:code", "proj:epsg")


def declared_grid(item, key: str) -> GeoBox | None:
    """The grid asset ``key`` of ``item`` declares (``proj:shape`` + ``proj:transform``, the asset's own or the
    item's, with its EPSG code); None where the item says nothing of it. ``InputError`` for a grid that is
    declared but unusable."""
    own, common = item.assets[key].extra_fields, item.properties
    extra = {k: own[k] if own.get(k) is not None else common.get(k) for k in _PROJ}  # the asset's, else the item's
    shape, t = extra.get("proj:shape"), extra.get("proj:transform")
    if not (shape and t):
        return None
    code = epsg_code(extra)
    if code is None:
        raise InputError(
            f"item {item.id}: asset {key!r} has no usable CRS (proj:code={extra.get('proj:code')!r}, "
            f"proj:epsg={extra.get('proj:epsg')!r}); expected an EPSG code"
        )
    if len(shape) != 2 or len(t) < 6:
        raise InputError(
            f"item {item.id}: asset {key!r} declares proj:shape {shape!r} and proj:transform {t!r}; "
            f"expected [rows, cols] and six numbers"
        )
    a, b, c, d, e, f = (float(v) for v in t[:6])
    if int(shape[0]) < 1 or int(shape[1]) < 1:
        raise InputError(f"item {item.id}: asset {key!r} declares proj:shape {list(shape)}; expected positive sizes")
    return _geobox((int(shape[0]), int(shape[1])), (a, b, c, d, e, f), code)


@functools.lru_cache(maxsize=1024)  # GeoBoxes are immutable; an archive's items declare a few grids many times
def _geobox(shape: tuple[int, int], transform: tuple[float, ...], code: str) -> GeoBox:
    return GeoBox(shape, Affine(*transform), code)


def check_size(item_id: str, grid: GeoBox, limit: int = MAX_GRID_PX) -> None:
    """Refuse (``InputError``) a scene grid with a side over ``limit`` pixels."""
    h, w = grid.shape
    if max(h, w) > limit:
        raise InputError(
            f"item {item_id}: its grid is {h} x {w} px, over the limit of {limit} px a side (a "
            f"Sentinel-2 tile is 10,980); check its proj:shape, or raise the limit with --max-grid {max(h, w)}"
        )


def crs_name(crs) -> str:
    """``EPSG:n`` where the CRS has an EPSG code, else the start of its WKT."""
    return f"EPSG:{crs.epsg}" if crs.epsg else crs.to_wkt()[:60] + "..."


def grid_name(grid: GeoBox) -> str:
    """The store group's name of a grid, e.g. ``epsg32633_x330000_y5822040_res10_768x1536``."""
    a = grid.affine
    return f"epsg{grid.crs.epsg or 'wkt'}_x{a.c:.10g}_y{a.f:.10g}_res{abs(a.a):.10g}_{grid.shape[0]}x{grid.shape[1]}"


def _whole(value: float, what: str, *args: float) -> int:
    """``value`` as an int, or ``ValueError`` naming ``what`` (formatted with ``args`` only then: planning calls
    this for every band of every scene)."""
    n = round(value)
    if abs(value - n) > ALIGNMENT_PX:
        raise ValueError(f"{what.format(*args)} is {value:.6g}, not a whole number")
    return int(n)


def axes_on(scene: GeoBox, crs, affine: Affine, shape: tuple[int, int]) -> tuple[Axis, Axis]:
    """``(rows, cols)`` axes of a grid (a band's file: ``crs``, ``affine``, ``(h, w)``) on the ``scene`` grid; raises
    ``ValueError`` saying why where it cannot be read onto it exactly (another CRS, rotated, a pixel size that is not
    a whole multiple of the scene's, an origin off the scene's pixel edges)."""
    if crs is None:
        raise ValueError("it has no CRS")
    from odc.geo.crs import CRS

    if CRS(crs) != scene.crs:
        raise ValueError(f"it is in {crs_name(CRS(crs))}, the scene's grid in {crs_name(scene.crs)}")
    s = scene.affine
    if affine.b or affine.d or s.b or s.d:
        raise ValueError("its grid is rotated")
    fx = _whole(affine.a / s.a, "its pixel width over the scene's ({:g} / {:g} m)", affine.a, s.a)
    fy = _whole(affine.e / s.e, "its pixel height over the scene's ({:g} / {:g} m)", affine.e, s.e)
    if fx < 1 or fy < 1:
        raise ValueError(f"its pixels ({affine.a:g} m) are finer than the scene's ({s.a:g} m)")
    sx = _whole((s.c - affine.c) / s.a, "its origin's x offset in scene pixels")
    sy = _whole((s.f - affine.f) / s.e, "its origin's y offset in scene pixels")
    return Axis(fy, sy, int(shape[0])), Axis(fx, sx, int(shape[1]))
