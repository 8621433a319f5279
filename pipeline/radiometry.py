"""Harmonised DN: Sentinel-2 L1C radiometry brought to the pre-04.00 convention the weights were trained on.

Processing baseline 04.00 (January 2022) added 1000 DN to every L1C pixel (``RADIO_ADD_OFFSET = -1000``).
CloudSEN12 and the starter weights use the old convention, so for baselines >= 04.00 the offset is subtracted
(clipped at 1, with 0 kept as nodata). Provider metadata is sometimes wrong, so it is checked against the
data: the cirrus band B10 sits near 0-100 DN over most of a scene without the offset and above 1000 with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import InputError

OFFSET_DN = 1000
B10_THRESHOLD = 600  # median valid B10 above this: the data carries the offset, whatever the metadata says


@dataclass(frozen=True)
class Harmonisation:
    """What was applied to one scene: ``offset`` DN subtracted, the ``baseline`` read, and why."""

    offset: int
    baseline: str | None
    reason: str


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
    """The offset to subtract for one scene, from its metadata, checked against its B10 DN when given."""
    baseline = processing_baseline(properties)
    offset = metadata_offset(baseline)
    reason = f"baseline {baseline}" if baseline else "no baseline in metadata: pre-04.00 assumed"
    if b10 is not None:
        valid = b10[b10 > 0]
        if valid.size:
            median = float(np.median(valid))
            carries = median > B10_THRESHOLD
            if carries and not offset:
                return Harmonisation(OFFSET_DN, baseline, f"{reason}, but B10 median {median:.0f} DN shows the 04.00 offset")
            if offset and not carries:
                return Harmonisation(0, baseline, f"{reason}, but B10 median {median:.0f} DN shows no offset")
            reason += f", B10 median {median:.0f} DN agrees"
    return Harmonisation(offset, baseline, reason)


def harmonise(dn, offset: int):
    """``dn`` (numpy or dask, any shape, uint16) minus ``offset``, clipped at 1; 0 (nodata) stays 0."""
    if not offset:
        return dn
    shifted = (dn.astype(np.int32) - offset).clip(1, 65535).astype(np.uint16)
    if isinstance(dn, np.ndarray):
        return np.where(dn == 0, np.uint16(0), shifted)
    import dask.array as da

    return da.where(dn == 0, np.uint16(0), shifted)
