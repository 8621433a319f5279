"""Harmonised DN: every product brought to one convention, reflectance x 10000 with 0 as nodata.

The rules belong to the sensor, and the provider's metadata decides where it speaks:

- Sentinel-2 (L1C and L2A): processing baseline 04.00 (January 2022) added 1000 DN to every pixel
  (``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET = -1000``). CloudSEN12 and the starter weights use the old convention,
  so for baselines >= 04.00 the offset is subtracted (clipped at 1, 0 kept as nodata), unless the provider
  says it removed it already (Earth Search's ``earthsearch:boa_offset_applied: true``: its maintainers call that
  flag the truth where its ``raster:bands`` offset of -0.1 disagrees). L1C metadata is checked against the data
  (on the workers): the cirrus band B10 sits near 0-100 DN over most of a scene without the offset and above
  1000 with it. L2A has no B10 and no such check.
- Landsat 8/9 Collection 2: the reflective bands' ``raster:bands`` ``scale``/``offset`` (STAC raster v1, or
  ``raster:scale``/``raster:offset`` of v2) give reflectance; stored DN become ``(DN x scale + offset) x 10000``
  (Level-2: 2.75e-05 and -0.2; Level-1: 2e-05 and -0.1, the Collection 2 values, used when an item omits them).
  Thermal bands (B10, B11) stay in their DN. The Sentinel-2 rule never applies to Landsat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError

OFFSET_DN = 1000
B10_THRESHOLD = 600  # median valid B10 above this: the data carries the offset, whatever the metadata says


@dataclass(frozen=True)
class Harmonisation:
    """What was applied to one scene: ``offset`` DN subtracted (Sentinel-2), the ``baseline`` read, and why;
    ``scale``: per band ``(gain, bias)`` applied instead (Landsat; empty for Sentinel-2), DN x gain + bias."""

    offset: int
    baseline: str | None
    reason: str
    scale: tuple[tuple[float, float], ...] = ()

    def __dask_tokenize__(self):
        return ("Harmonisation", self.offset, self.baseline, self.reason, self.scale)


def processing_baseline(properties: dict) -> str | None:
    """``"04.00"``-style baseline from STAC properties (``s2:processing_baseline``) or a product id (``_N0400_``)."""
    value = properties.get("s2:processing_baseline") or properties.get("processing:version")
    if value:
        return str(value)
    for key in ("s2:product_uri", "s2:product_id", "id"):
        m = re.search(r"_N(\d{2})(\d{2})_", str(properties.get(key, "")))
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def metadata_offset(baseline: str | None) -> int:
    if baseline is None:
        return 0
    try:
        major, minor = (int(p) for p in baseline.split(".")[:2])
    except ValueError:
        raise InputError(f"processing baseline {baseline!r} is not of the form NN.NN (e.g. 04.00)") from None
    return OFFSET_DN if (major, minor) >= (4, 0) else 0


def decide(properties: dict, b10: np.ndarray | None = None) -> Harmonisation:
    """The Sentinel-2 offset to subtract for one scene, from its metadata (a provider's own flag first), checked
    against its B10 DN when given (L1C)."""
    baseline = processing_baseline(properties)
    offset = metadata_offset(baseline)
    reason = f"baseline {baseline}" if baseline else "no baseline in metadata: pre-04.00 assumed"
    if offset and properties.get("earthsearch:boa_offset_applied") is True:
        return Harmonisation(
            0, baseline, f"{reason}, offset already removed by the provider (earthsearch:boa_offset_applied)"
        )
    if b10 is not None:
        valid = b10[b10 > 0]
        if valid.size:
            median = float(np.median(valid))
            carries = median > B10_THRESHOLD
            if carries and not offset:
                return Harmonisation(
                    OFFSET_DN, baseline, f"{reason}, but B10 median {median:.0f} DN shows the 04.00 offset"
                )
            if offset and not carries:
                return Harmonisation(0, baseline, f"{reason}, but B10 median {median:.0f} DN shows no offset")
            reason += f", B10 median {median:.0f} DN agrees"
    return Harmonisation(offset, baseline, reason)


# Collection 2 reflectance scaling by level, for items whose raster:bands omit it
LANDSAT_SCALE = {"L1": (2e-05, -0.1), "L2": (2.75e-05, -0.2)}


def band_scale(extra: dict) -> tuple[float | None, float | None]:
    """``(scale, offset)`` an asset declares: ``raster:bands[0]`` (raster v1), else ``raster:scale``/``raster:offset``
    on the asset or its single ``bands`` entry (v2); None where absent."""
    rb = (extra.get("raster:bands") or [{}])[0]
    v2 = (extra.get("bands") or [{}])[0] if len(extra.get("bands") or []) == 1 else {}
    scale = rb.get("scale", extra.get("raster:scale", v2.get("raster:scale")))
    offset = rb.get("offset", extra.get("raster:offset", v2.get("raster:offset")))
    return scale, offset


def decide_landsat(level: str, bands: tuple[str, ...], wavelengths: dict, declared: dict) -> Harmonisation:
    """Per-band ``(gain, bias)`` for Landsat C2 ``level`` (``L1``/``L2``): reflective bands (under 3 µm) to
    reflectance x 10000 from ``declared[band] = (scale, offset)``, the Collection 2 values where absent; thermal
    bands unchanged."""
    default = LANDSAT_SCALE[level]
    pairs, notes = [], []
    for band in bands:
        if wavelengths.get(band, 0) >= 3:
            pairs.append((1.0, 0.0))
            continue
        scale, offset = declared.get(band, (None, None))
        if scale is None or offset is None:
            scale, offset = default
            notes.append(band)
        pairs.append((float(scale) * 10000, float(offset) * 10000))
    reason = f"Landsat C2 {level}: reflectance x 10000 from raster:bands scale/offset"
    if notes:
        reason += f" (Collection 2 values {default} for {notes}: not in the item)"
    return Harmonisation(0, None, reason, tuple(pairs))


def harmonise(dn, offset: int, scale: tuple[tuple[float, float], ...] = ()):
    """``dn`` (numpy or dask, any shape, uint16) minus ``offset``, clipped at 1; 0 (nodata) stays 0. With
    ``scale`` (one ``(gain, bias)`` per band of ``dn (..., band, y, x)``) DN x gain + bias instead, rounded."""
    if scale:
        gain = np.array([g for g, _ in scale], np.float32)[:, None, None]
        bias = np.array([b for _, b in scale], np.float32)[:, None, None]
        shifted = (dn.astype(np.float32) * gain + bias).round().clip(1, 65535).astype(np.uint16)
    elif not offset:
        return dn
    else:
        shifted = (dn.astype(np.int32) - offset).clip(1, 65535).astype(np.uint16)
    if isinstance(dn, np.ndarray):
        return np.where(dn == 0, np.uint16(0), shifted)
    import dask.array as da

    return da.where(dn == 0, np.uint16(0), shifted)
