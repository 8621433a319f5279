"""Band catalogues per sensor and processing level, and the mask class codes.

Everything that differs between sensors, levels and providers lives here as data, so other modules look
things up instead of branching on sensor names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Sensor:
    """A sensor at one processing level.

    ``bands`` is the canonical band order the models are trained with; ``wavelengths`` their centre wavelengths
    (µm, to recognise a band whose asset names it otherwise); ``nodata`` is the DN that marks pixels outside the
    swath; ``title`` names it for people.
    """

    name: str
    level: str
    bands: tuple[str, ...]
    wavelengths: tuple[float, ...] = ()
    nodata: int = 0
    title: str = ""

    @property
    def key(self) -> str:
        """``"<name>-<level>"`` in lower case, e.g. ``sentinel-2-l2a``."""
        return f"{self.name}-{self.level}".lower()

    def wavelength(self, band: str) -> float | None:
        return dict(zip(self.bands, self.wavelengths)).get(band)


_S2 = dict(
    B01=0.443,
    B02=0.490,
    B03=0.560,
    B04=0.665,
    B05=0.704,
    B06=0.740,
    B07=0.783,
    B08=0.842,
    B8A=0.865,
    B09=0.945,
    B10=1.375,
    B11=1.610,
    B12=2.190,
)
# Landsat 8/9 OLI (B1-B9) and TIRS (B10, B11). Level-2 products carry surface reflectance B1-B7 and surface
# temperature B10 only.
_OT = dict(
    B1=0.443, B2=0.482, B3=0.561, B4=0.655, B5=0.865, B6=1.609, B7=2.201, B8=0.590, B9=1.373, B10=10.895, B11=12.005
)


def _sensor(name: str, level: str, table: dict, bands, title: str) -> Sensor:
    bands = tuple(bands)
    return Sensor(name, level, bands, tuple(table[b] for b in bands), title=title)


SENTINEL2_L1C = _sensor("sentinel-2", "L1C", _S2, _S2, "Sentinel-2 L1C")
SENTINEL2_L2A = _sensor("sentinel-2", "L2A", _S2, [b for b in _S2 if b != "B10"], "Sentinel-2 L2A")
LANDSAT_C2_L1 = _sensor("landsat-oli-tirs", "L1", _OT, _OT, "Landsat 8/9 C2 L1")
LANDSAT_C2_L2 = _sensor(
    "landsat-oli-tirs", "L2", _OT, ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B10"), "Landsat 8/9 C2 L2"
)

SENSORS: dict[str, Sensor] = {s.key: s for s in (SENTINEL2_L1C, SENTINEL2_L2A, LANDSAT_C2_L1, LANDSAT_C2_L2)}
# names earlier weights files used for a sensor family
SENSOR_ALIASES = {"landsat-8": "landsat-oli-tirs", "landsat-9": "landsat-oli-tirs"}


def get_sensor(key: str) -> Sensor:
    """Look a sensor up by ``"<name>-<level>"`` (e.g. ``"sentinel-2-l1c"``)."""
    for alias, name in SENSOR_ALIASES.items():
        if key.lower().startswith(alias + "-"):
            key = name + key[len(alias) :]
    try:
        return SENSORS[key.lower()]
    except KeyError:
        raise ConfigError(f"unknown sensor {key!r}; known sensors: {', '.join(sorted(SENSORS))}") from None


# Mask classes: the CloudSEN12 codes (also used by OmniCloudMask). 255 marks nodata in every mask.
CLASS_NAMES: tuple[str, ...] = ("clear", "thick_cloud", "thin_cloud", "cloud_shadow")
CLASS_CODES: tuple[int, ...] = (0, 1, 2, 3)
MASK_NODATA = 255
REFLECTANCE_DN = 10000.0  # Sentinel-2 DN of reflectance 1, both levels (once the baseline-04.00 offset is removed)
PROBABILITY_SCALE = 250  # stored class probabilities: round(p * 250) as uint8, 255 = nodata


@dataclass(frozen=True)
class Profile:
    """An override for catalogues whose assets carry no band metadata (``eo:bands``/``bands``): canonical band
    -> STAC asset key. Items with band metadata need no profile (``pipeline.catalog.assets`` reads it)."""

    name: str
    collection: str
    sensor: Sensor
    assets: dict


_S2_COMMON = dict(
    zip(
        SENTINEL2_L1C.bands,
        (
            "coastal",
            "blue",
            "green",
            "red",
            "rededge1",
            "rededge2",
            "rededge3",
            "nir",
            "nir08",
            "nir09",
            "cirrus",
            "swir16",
            "swir22",
        ),
    )
)
_L8_COMMON = dict(
    zip(
        LANDSAT_C2_L1.bands,
        ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "pan", "cirrus", "lwir11", "lwir12"),
    )
)
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("earth-search-l1c", "sentinel-2-l1c", SENTINEL2_L1C, _S2_COMMON),
        Profile(
            "earth-search-l2a", "sentinel-2-l2a", SENTINEL2_L2A, {b: k for b, k in _S2_COMMON.items() if b != "B10"}
        ),
        Profile("planetary-computer-l2a", "sentinel-2-l2a", SENTINEL2_L2A, {b: b for b in SENTINEL2_L2A.bands}),
        Profile("landsat-c2-l1", "landsat-c2-l1", LANDSAT_C2_L1, _L8_COMMON),
        Profile("demo", "sentinel-2-l1c", SENTINEL2_L1C, {b: b for b in SENTINEL2_L1C.bands}),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown provider profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}") from None
