"""Which asset of a STAC item holds each band a model needs, and which sensor and level the item is.

Read from the items' own metadata, as the public providers publish it (no per-provider profile):

- the sensor and level from ``s2:product_type`` / ``product:type`` / ``landsat:correction``, the platform,
  the instruments and, last, the collection id;
- each band from the asset's ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1) entry: its ``name`` (``B02``,
  ``OLI_B2``, zero padding ignored), else its ``center_wavelength`` (the nearest band of the sensor within
  ``WAVELENGTH_TOLERANCE``). ``common_name`` is never used: ``rededge`` names three bands, and Planetary
  Computer labels B8A ``rededge``;
- one band per asset (the three-band ``visual`` asset is never picked); where several assets hold a band (CDSE's
  ``B02_10m``, ``B02_20m``, ``B02_60m``; Earth Search's ``blue`` COG and ``blue-jp2``), the finest resolution
  (the band's native one), then a GeoTIFF/COG over JPEG 2000.

``band_assets(item, sensor, bands)`` -> ``{band: asset key}``; ``sensor_of(item)`` -> ``Sensor``.
"""

from __future__ import annotations

import functools
import re

from pipeline.catalog.sensors import LANDSAT_C2_L1, LANDSAT_C2_L2, SENTINEL2_L1C, SENTINEL2_L2A, Profile, Sensor
from pipeline.errors import InputError

WAVELENGTH_TOLERANCE = 0.012  # µm: B08 (0.842) and B8A (0.865) stay apart
_NOT_BANDS = {
    "visual",
    "overview",
    "thumbnail",
    "metadata",
    "tiles",
    "cloud",
    "snow-ice",
    "cloud-shadow",
    "saturation",
    "data-mask",
    "water-mask",
}


def sensor_of(item) -> Sensor:
    """The sensor and level of ``item`` (a ``pystac.Item``), from its properties, else its collection id."""
    p = item.properties
    platform = str(p.get("platform") or "").lower()
    instruments = [str(i).lower() for i in (p.get("instruments") or [])]
    collection = (item.collection_id or "").lower()
    product = str(
        p.get("s2:product_type")
        or p.get("product:type")
        or p.get("landsat:correction")
        or p.get("processing:level")
        or ""
    ).upper()
    if platform.startswith("sentinel-2") or "msi" in instruments or product.startswith("S2MSI"):
        return _level(
            item,
            product,
            collection,
            "Sentinel-2",
            "s2:product_type/product:type",
            ((product.endswith("2A"), "l2a", SENTINEL2_L2A), (product.endswith("1C"), "l1c", SENTINEL2_L1C)),
        )
    if platform.startswith("landsat") or "oli" in instruments:
        if "oli" not in instruments and platform not in ("landsat-8", "landsat-9"):
            raise InputError(
                f"item {item.id}: {platform or 'Landsat'} with instruments {instruments}: only Landsat 8/9 "
                f"OLI/TIRS bands are known (Landsat MSS/TM/ETM+ lack them)"
            )
        return _level(
            item,
            product,
            collection,
            "Landsat",
            "landsat:correction",
            ((product.startswith("L2"), "l2", LANDSAT_C2_L2), (product.startswith("L1"), "l1", LANDSAT_C2_L1)),
        )
    raise InputError(
        f"item {item.id}: platform {platform or 'absent'!s}, instruments {instruments}: not a sensor this "
        f"pipeline knows (Sentinel-2 MSI L1C/L2A, Landsat 8/9 OLI/TIRS C2 L1/L2)"
    )


def _level(item, product: str, collection: str, family: str, keys: str, options) -> Sensor:
    """The first of ``options`` ``(the product type says it, what the collection id holds, sensor)`` that the
    product type (or, without one, the collection id) matches."""
    for says, in_collection, sensor in options:
        if says if product else in_collection in collection:
            return sensor
    levels = " or ".join(sensor.level for *_, sensor in options)
    raise InputError(
        f"item {item.id}: {family}, but neither {keys} ({product or 'absent'}) nor the collection "
        f"({collection or 'absent'}) gives the level ({levels})"
    )


def _band_entries(asset) -> list[dict]:
    extra = asset.extra_fields
    return list(extra.get("eo:bands") or extra.get("bands") or [])


@functools.lru_cache(maxsize=4096)  # a job plans every item's assets: the same few names, thousands of times
def _normal(name: str) -> str:
    """``B02`` -> ``B2``, ``OLI_B2`` -> ``B2``, ``b8a`` -> ``B8A``; other names upper-cased."""
    name = str(name).upper().rsplit("_", 1)[-1] if re.search(r"_B\d", str(name).upper()) else str(name).upper()
    m = re.fullmatch(r"B0*(\d+A?)", name)
    return f"B{m.group(1)}" if m else name


def asset_resolution(item, key: str) -> float | None:
    """Pixel size in metres of asset ``key``'s file: its ``proj:transform``, else ``raster:bands[0].
    spatial_resolution``, else ``gsd`` (the sensor's, which may differ: Landsat's 100 m thermal band is served
    at 30 m); None when the item says nothing."""
    extra = item.assets[key].extra_fields
    t = extra.get("proj:transform")
    if t:
        return abs(float(t[0]))
    rb = extra.get("raster:bands") or [{}]
    if rb[0].get("spatial_resolution"):
        return float(rb[0]["spatial_resolution"])
    return float(extra["gsd"]) if extra.get("gsd") else None


def _is_cog(asset) -> bool:
    return "tiff" in str(asset.media_type or "").lower() or str(asset.href).lower().endswith((".tif", ".tiff"))


def _identify(asset, sensor: Sensor) -> str | None:
    """The one band of ``sensor`` that ``asset`` holds, or None (several bands, none, or not a data asset)."""
    if set(asset.roles or ()) & _NOT_BANDS and "data" not in (asset.roles or ()):
        return None
    entries = _band_entries(asset)
    if len(entries) != 1:
        return None
    entry = entries[0]
    by_name = _by_name(sensor.bands)
    if entry.get("name") and _normal(entry["name"]) in by_name:
        return by_name[_normal(entry["name"])]
    wl = entry.get("center_wavelength") or entry.get("eo:center_wavelength")
    if wl is not None:
        diffs = sorted((abs(float(wl) - w), b) for b, w in zip(sensor.bands, sensor.wavelengths))
        if diffs and diffs[0][0] <= WAVELENGTH_TOLERANCE:
            return diffs[0][1]
    return None


@functools.lru_cache(maxsize=64)
def _by_name(bands: tuple[str, ...]) -> dict[str, str]:
    return {_normal(b): b for b in bands}


def band_assets(item, sensor: Sensor, bands: tuple[str, ...], profile: Profile | None = None) -> dict[str, str]:
    """``{band: asset key}`` for every band of ``bands`` (names of ``sensor``). ``profile`` overrides the
    metadata for catalogues without band metadata. Raises ``InputError`` naming the missing bands and what the
    item offers."""
    if profile is not None:
        keys = {b: profile.assets.get(b) for b in bands}
        missing = [b for b, k in keys.items() if k not in item.assets]
        if missing:
            raise InputError(
                f"item {item.id}: bands {missing} have no asset (profile {profile.name!r} expects keys "
                f"{[keys[b] for b in missing]}; it has {sorted(item.assets)})"
            )
        return keys
    found: dict[str, list[str]] = {}
    for key, asset in item.assets.items():
        band = _identify(asset, sensor)
        if band is not None:
            found.setdefault(band, []).append(key)
    missing = [b for b in bands if b not in found]
    if missing:
        offered = sorted({b for b in found})
        raise InputError(
            f"item {item.id}: no asset holds bands {missing} of {sensor.title or sensor.key} (by "
            f"eo:bands/bands name or center_wavelength); it offers {offered or 'no single-band asset'}"
        )
    return {
        b: min(found[b], key=lambda k: (asset_resolution(item, k) or 1e9, not _is_cog(item.assets[k]), k))
        for b in bands
    }
