"""Band catalogues per sensor and processing level, and the mask class codes.

Everything that differs between sensors, levels and providers lives here as data, so other modules look
things up instead of branching on sensor names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Sensor:
    """A sensor at one processing level.

    ``bands`` is the canonical band order the models are trained with; ``nodata`` is the DN that marks
    pixels outside the swath.
    """

    name: str
    level: str
    bands: tuple[str, ...]
    nodata: int = 0


SENTINEL2_L1C = Sensor(
    name="sentinel-2",
    level="L1C",
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"),
)
LANDSAT_C2_L1 = Sensor(
    name="landsat-8",
    level="L1",
    bands=("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
)

SENSORS: dict[str, Sensor] = {f"{s.name}-{s.level}".lower(): s for s in (SENTINEL2_L1C, LANDSAT_C2_L1)}


def get_sensor(key: str) -> Sensor:
    """Look a sensor up by ``"<name>-<level>"`` (e.g. ``"sentinel-2-l1c"``)."""
    try:
        return SENSORS[key.lower()]
    except KeyError:
        raise ConfigError(f"unknown sensor {key!r}; known sensors: {', '.join(sorted(SENSORS))}") from None


# Mask classes: the CloudSEN12 codes (also used by OmniCloudMask). 255 marks nodata in every mask.
CLASS_NAMES: tuple[str, ...] = ("clear", "thick_cloud", "thin_cloud", "cloud_shadow")
CLASS_CODES: tuple[int, ...] = (0, 1, 2, 3)
MASK_NODATA = 255
PROBABILITY_SCALE = 250  # stored class probabilities: round(p * 250) as uint8, 255 = nodata


@dataclass(frozen=True)
class Profile:
    """How one provider's collection names its assets: canonical band -> STAC asset key.

    ``sign``: items need signed asset URLs (Planetary Computer, with the ``planetary-computer`` package).
    """

    name: str
    collection: str
    sensor: Sensor
    assets: dict
    sign: bool = False


_S2_COMMON = dict(zip(SENTINEL2_L1C.bands, ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
                                              "nir", "nir08", "nir09", "cirrus", "swir16", "swir22")))
_L8_COMMON = dict(zip(LANDSAT_C2_L1.bands, ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "pan",
                                              "cirrus", "lwir11", "lwir12")))
PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("earth-search-l1c", "sentinel-2-l1c", SENTINEL2_L1C, _S2_COMMON),
    Profile("earth-search-l2a", "sentinel-2-l2a", SENTINEL2_L1C, {b: k for b, k in _S2_COMMON.items() if b != "B10"}),
    Profile("planetary-computer-l2a", "sentinel-2-l2a", SENTINEL2_L1C,
            {b: b for b in SENTINEL2_L1C.bands if b != "B10"}, sign=True),
    Profile("landsat-c2-l1", "landsat-c2-l1", LANDSAT_C2_L1, _L8_COMMON),
    Profile("demo", "sentinel-2-l1c", SENTINEL2_L1C, {b: b for b in SENTINEL2_L1C.bands}),
)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown provider profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}") from None
