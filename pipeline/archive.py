"""Archives of real Sentinel-2 L1C scenes as COGs with STAC items, as providers publish them.

Each band is written at its native resolution (10, 20 or 60 m) as a Cloud-Optimized GeoTIFF with its CRS;
the item carries the projection, eo and raster extensions and realistic properties (platform, MGRS tile,
processing baseline, eo:cloud_cover). Used by the embedded demo and the tests.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from .sensors import SENTINEL2_L1C

NATIVE_RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
              "B09": 60, "B10": 60, "B11": 20, "B12": 20}
COMMON = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge",
          "B07": "rededge", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B10": "cirrus", "B11": "swir16",
          "B12": "swir22"}
EXTENSIONS = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
              "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
              "https://stac-extensions.github.io/raster/v1.1.0/schema.json"]


def _downsample(band: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean of a 10 m band to ``factor`` x coarser pixels; blocks with any nodata become nodata."""
    if factor == 1:
        return band
    h, w = band.shape[0] // factor * factor, band.shape[1] // factor * factor
    blocks = band[:h, :w].reshape(h // factor, factor, w // factor, factor)
    out = blocks.mean(axis=(1, 3)).round().astype(np.uint16)
    out[(blocks == 0).any(axis=(1, 3))] = 0
    return out


def write_item(dn: np.ndarray, folder: str | Path, item_id: str, *, epsg: int, origin: tuple[float, float],
               datetime: str, mgrs_tile: str, baseline: str = "02.04", cloud_cover: float = 0.0,
               platform: str = "sentinel-2a", href_base: str | None = None, collection: str = "sentinel-2-l1c",
               lonlat_bbox: tuple[float, float, float, float] | None = None) -> dict:
    """Write ``dn (13, y, x)`` uint16 at 10 m (bands resampled down to their native resolution) as COGs in
    ``folder/item_id/`` and return the STAC item (dict). ``origin`` is the upper-left corner (x, y) in
    ``epsg``; asset hrefs are ``file://`` URIs, or ``href_base/<item_id>/<band>.tif`` when given."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    out = Path(folder) / item_id
    out.mkdir(parents=True, exist_ok=True)
    crs = f"EPSG:{epsg}"
    h10, w10 = dn.shape[1:]
    assets = {}
    for i, band in enumerate(SENTINEL2_L1C.bands):
        res = NATIVE_RES[band]
        data = _downsample(dn[i], res // 10)
        transform = from_origin(origin[0], origin[1], res, res)
        path = out / f"{band}.tif"
        with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                           dtype="uint16", crs=crs, transform=transform, nodata=0, compress="deflate",
                           blocksize=256) as dst:
            dst.write(data, 1)
        assets[band] = {
            # a URI, not a bare path: STAC clients resolve bare paths against the API's own URL
            "href": f"{href_base.rstrip('/')}/{item_id}/{band}.tif" if href_base else path.resolve().as_uri(),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
            "title": f"{band} ({COMMON[band]}), {res} m", "gsd": res,
            "eo:bands": [{"name": band, "common_name": COMMON[band]}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": res}],
            "proj:shape": [int(data.shape[0]), int(data.shape[1])], "proj:transform": list(transform)[:6],
        }
    right, bottom = origin[0] + 10 * w10, origin[1] - 10 * h10
    west, south, east, north = lonlat_bbox or transform_bounds(crs, "EPSG:4326", origin[0], bottom, right, origin[1])
    baseline_code = "N" + baseline.replace(".", "")
    stamp = dt.datetime.fromisoformat(datetime.replace("Z", "+00:00"))
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": EXTENSIONS, "id": item_id,
        "collection": collection, "bbox": [west, south, east, north],
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]]},
        "properties": {
            "datetime": datetime, "platform": platform, "constellation": "sentinel-2", "instruments": ["msi"],
            "eo:cloud_cover": float(cloud_cover), "proj:epsg": epsg, "s2:mgrs_tile": mgrs_tile,
            "s2:processing_baseline": baseline, "s2:product_type": "S2MSI1C",
            "s2:product_uri": f"S2A_MSIL1C_{stamp:%Y%m%dT%H%M%S}_{baseline_code}_R000_T{mgrs_tile}_{stamp:%Y%m%dT%H%M%S}.SAFE",
            "created": "2026-11-25T00:00:00Z", "updated": "2026-11-25T00:00:00Z",
        },
        "assets": assets, "links": [],
    }


def collection(collection_id: str = "sentinel-2-l1c", description: str = "Sentinel-2 L1C scenes") -> dict:
    """A minimal STAC collection for the archive."""
    return {"type": "Collection", "stac_version": "1.0.0", "id": collection_id, "description": description,
            "license": "proprietary", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [["2015-06-23T00:00:00Z", None]]}}}
