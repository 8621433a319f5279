"""A scene's bands as files at their native resolution, and the windows of them a block reads.

``BandSource``: one band of a scene (asset, href, where its file lies on the scene grid, the dtype the item
declares). ``read_block(scene, block, harmonisation)`` -> ``NativeBlock``: every band's window over the block and
its halo, decoded at its own resolution (no warp), checked against what the item declares and harmonised;
``assemble(block, device)`` brings it onto the scene grid, ``(band, y, x)`` int32 and a validity mask, with the
exact kernel of ``pipeline.read.upsample``. A pixel is nodata where any band is nodata there or its file does not reach it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from odc.geo.geobox import GeoBox

from pipeline.catalog.access import Access, read_failure, redact
from pipeline.errors import InputError
from pipeline.read.radiometry import Harmonisation, harmonise
from pipeline.read.upsample import Axis, Span, upsample
from pipeline.retries import retrying

if TYPE_CHECKING:  # imported where a block is assembled: planning a job needs no torch
    import torch

READ_RETRY_S = 30.0  # how long a band read waits for an unreachable server


@dataclass(frozen=True)
class BandSource:
    """Band ``band`` of a scene: asset ``asset`` at ``href``; ``y``/``x``: where its file lies on the scene grid, as the
    item declares it (``declared``) or as assumed from its resolution where the item says nothing (then the file
    decides); ``dtype``: the data type the item declares (``raster:bands``), else the sensor's; ``scale``: the
    item's ``(scale, offset)`` for it (Landsat's reflectance), ``(None, None)`` where none."""

    band: str
    asset: str
    href: str
    y: Axis
    x: Axis
    dtype: str = "uint16"
    declared: bool = True
    scale: tuple = (None, None)


@dataclass(frozen=True)
class SceneRead:
    """What a worker needs to read one scene's blocks: ``item_id``, its ``grid`` and its ``bands`` in the
    weights' order."""

    item_id: str
    grid: GeoBox
    bands: tuple[BandSource, ...]

    def __dask_tokenize__(self):  # cheap: tokenising the grid's CRS once per block made a scene cost 0.25 s to submit
        return (
            "SceneRead",
            self.item_id,
            tuple(b.href for b in self.bands),
            str(self.grid.affine),
            tuple(self.grid.shape),
        )

    def __reduce__(self):
        """Plain values (every block task carries its scene's read plan, and the scheduler passes each on)."""
        a = self.grid.affine
        bands = tuple(
            (
                b.band,
                b.asset,
                b.href,
                b.y.factor,
                b.y.shift,
                b.y.size,
                b.x.factor,
                b.x.shift,
                b.x.size,
                b.dtype,
                b.declared,
                b.scale,
            )
            for b in self.bands
        )
        return _scene_read, (
            self.item_id,
            str(self.grid.crs),
            (a.a, a.b, a.c, a.d, a.e, a.f),
            tuple(self.grid.shape),
            bands,
        )

    def signed(self, hrefs: dict[str, str]) -> SceneRead:
        """The same with the hrefs of ``hrefs`` (asset key -> href, e.g. freshly signed)."""
        from dataclasses import replace

        return replace(self, bands=tuple(replace(b, href=hrefs.get(b.asset, b.href)) for b in self.bands))


@functools.lru_cache(maxsize=64)
def _scene_read(item_id: str, crs: str, affine: tuple, shape: tuple, bands: tuple) -> SceneRead:
    """A scene's read plan from its plain values; one object per scene and process (its blocks share it)."""
    from affine import Affine

    sources = tuple(
        BandSource(band, asset, href, Axis(yf, ys, ysz), Axis(xf, xs, xsz), dtype, declared, scale)
        for band, asset, href, yf, ys, ysz, xf, xs, xsz, dtype, declared, scale in bands
    )
    return SceneRead(item_id, GeoBox(shape, Affine(*affine), crs), sources)


@dataclass
class BandWindow:
    """One band of a block as read from its file: ``data (rows, cols)`` uint16 (harmonised, 0 = nodata), the file
    pixels ``y.src_start..y.src_stop`` x ``x.src_start..x.src_stop`` for the scene pixels of ``y`` and ``x``;
    ``nodata``: whether ``data`` holds any 0."""

    data: np.ndarray
    y: Span
    x: Span
    nodata: bool = True


@dataclass
class NativeBlock:
    """A block's bands at their native resolutions (in the weights' band order) over the scene window
    ``rows`` x ``cols`` (scene pixels, halo included); ``needed``: its interior, in scene pixels."""

    bands: list[BandWindow]
    rows: tuple[int, int]
    cols: tuple[int, int]
    needed: tuple[tuple[int, int], tuple[int, int]]


def assemble(block: NativeBlock, device: torch.device | str = "cpu", host: list | None = None):
    """``(image (band, y, x) int32, valid (y, x) bool)`` of the block's read window on ``device``: each band
    upsampled from its native window; ``image`` is 0 wherever it is not valid. ``host``: the bands' data as host
    tensors already (pinned, for a GPU), else taken from ``block``."""
    import torch

    (r0, r1), (c0, c1) = block.rows, block.cols
    image = torch.empty((len(block.bands), r1 - r0, c1 - c0), dtype=torch.int32, device=device)
    valid = torch.ones((r1 - r0, c1 - c0), dtype=torch.bool, device=device)
    for b, band in enumerate(block.bands):
        data = host[b] if host is not None else torch.from_numpy(band.data.astype(np.int32))
        values, ok = upsample(data.to(device, non_blocking=True), band.y, band.x, band.nodata)
        image[b] = values
        valid &= ok
    image *= valid
    return image, valid


def block_image(block: NativeBlock) -> np.ndarray:
    """The block's read window on the scene grid as ``(band, y, x)`` uint16 (0 = nodata), on the CPU."""
    image, _ = assemble(block)
    return image.numpy().astype(np.uint16)


def open_checked(src, source: BandSource, scene: SceneRead) -> tuple[Axis, Axis]:
    """The axes of the open file ``src`` (rasterio) of ``source`` on the scene grid, once it is checked against
    what the item declares: a CRS, on the scene's grid, its grid the declared one, one band of the declared dtype,
    covering some of the scene; ``InputError`` naming the asset and what is wrong otherwise."""
    from pipeline.read.grids import axes_on

    what = f"item {scene.item_id}: asset {source.asset!r} ({source.band}, {redact(source.href)})"
    if src.crs is None:
        raise InputError(f"{what} has no CRS: expected a georeferenced raster (GeoTIFF/COG or JPEG 2000)")
    try:
        y, x = axes_on(scene.grid, src.crs, src.transform, (src.height, src.width))
    except ValueError as exc:
        raise InputError(f"{what} cannot be read onto the scene's grid: {exc}") from None
    if source.declared and (y, x) != (source.y, source.x):
        raise InputError(
            f"{what}: the file's grid ({src.height} x {src.width} px, origin "
            f"({src.transform.c:.10g}, {src.transform.f:.10g}), {src.transform.a:g} m) is not the one the "
            f"item declares (proj:shape/proj:transform: {source.y.size} x {source.x.size} px at "
            f"{source.x.factor}x the scene's pixels, offset ({source.y.shift}, {source.x.shift})); the "
            f"item's metadata does not describe its file"
        )
    if src.count != 1:
        raise InputError(f"{what} holds {src.count} bands; expected one band per asset")
    if src.dtypes[0] != source.dtype:
        raise InputError(
            f"{what} holds {src.dtypes[0]} pixels, the item declares {source.dtype} (raster:bands "
            f"data_type, or the sensor's convention): a band in another form (e.g. reflectance as "
            f"floats) would be masked as if it were DN"
        )
    declared_scale, declared_offset = source.scale
    scale, offset = (src.scales or (1.0,))[0], (src.offsets or (0.0,))[0]
    if (
        (scale, offset) != (1.0, 0.0)
        and declared_scale is not None
        and (not np.isclose(scale, declared_scale) or not np.isclose(offset, declared_offset or 0.0))
    ):
        raise InputError(
            f"{what}: the file's scale/offset ({scale:g}, {offset:g}) differ from the item's "
            f"raster:bands ({declared_scale:g}, {declared_offset or 0:g})"
        )
    h, w = scene.grid.shape
    rows, cols = y.contains(np.array([0, h - 1])), x.contains(np.array([0, w - 1]))
    if rows[1] < 0 or rows[0] >= y.size or cols[1] < 0 or cols[0] >= x.size:
        raise InputError(f"{what} does not cover any of the scene's grid ({h} x {w} px): the band is missing")
    return y, x


def check_files(scene: SceneRead, access: Access | None = None) -> None:
    """Open every band file of ``scene`` and check it against its item (``open_checked``): ``InputError`` naming the
    first that does not match. A file that cannot be opened from here is left to the workers, which may reach it."""
    import rasterio

    access = access or Access(())
    for source in scene.bands:
        try:
            with access.env(source.href), rasterio.open(source.href) as src:
                open_checked(src, source, scene)
        except rasterio.errors.RasterioIOError:
            continue


def read_window(
    source: BandSource, scene: SceneRead, rows: tuple[int, int], cols: tuple[int, int], access: Access | None = None
) -> tuple[np.ndarray, Span, Span]:
    """The file pixels of ``source`` that scene pixels ``rows`` x ``cols`` need: ``(data (h, w) uint16 with the
    file's nodata as 0, row span, column span)``; the file is checked first (``open_checked``)."""
    import rasterio
    from rasterio.windows import Window

    access = access or Access(())

    def read():
        with access.env(source.href), rasterio.open(source.href) as src:
            y, x = open_checked(src, source, scene)
            ys, xs = Span.of(y, *rows), Span.of(x, *cols)
            h, w = ys.src_stop - ys.src_start, xs.src_stop - xs.src_start
            if not (h and w):
                return np.zeros((h, w), np.uint16), ys, xs
            data = src.read(1, window=Window(xs.src_start, ys.src_start, w, h))
            if src.nodata not in (None, 0) and not np.isnan(src.nodata):
                data[data == src.nodata] = 0
            return data, ys, xs

    failure = None
    try:  # an unreachable server is waited for a while (GDAL retries HTTP 5xx itself: GDAL_HTTP_MAX_RETRY)
        data, ys, xs = retrying(read, seconds=READ_RETRY_S)
    except rasterio.errors.RasterioIOError as exc:
        failure = read_failure(f"item {scene.item_id}: asset {source.asset!r} ({source.band})", source.href, exc)
    if failure:  # raised outside the handler: an error chained to GDAL's does not pickle back to the client
        raise InputError(failure)
    return data.astype(np.uint16, copy=False), ys, xs


def read_block(
    scene: SceneRead,
    rows: tuple[int, int],
    cols: tuple[int, int],
    needed: tuple[tuple[int, int], tuple[int, int]],
    harmonisation: Harmonisation,
    access: Access | None = None,
) -> NativeBlock:
    """Every band of ``scene`` over scene pixels ``rows`` x ``cols`` at its native resolution, harmonised
    (``harmonisation``: the Sentinel-2 offset, or Landsat's per-band gain and bias, applied to the native DN)."""
    bands = []
    for b, source in enumerate(scene.bands):
        data, ys, xs = read_window(source, scene, rows, cols, access)
        if harmonisation.scale:
            data = harmonise(data[None], 0, (harmonisation.scale[b],))[0]
        elif harmonisation.offset:
            data = harmonise(data, harmonisation.offset)
        bands.append(BandWindow(data, ys, xs, nodata=bool(data.size and not data.all())))
    return NativeBlock(bands, rows, cols, needed)
