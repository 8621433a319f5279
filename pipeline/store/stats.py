"""Per-scene statistics: class counts (sums, so blocks merge) -> fractions -> a table keyed by STAC item id."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.catalog.sensors import CLASS_NAMES, MASK_NODATA
from pipeline.errors import ConfigError

SHARES = tuple(f"pct_{c}" for c in CLASS_NAMES)  # pct_clear, pct_thick_cloud, ...: % of the valid pixels
STATUS = {"pending": 0, "ok": 1, "failed": 2}


def class_counts(mask: np.ndarray) -> np.ndarray:
    """``mask (..., y, x) uint8`` -> ``(5,)`` int64 counts of classes 0..3 and of nodata (255)."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=256)
    return np.append(counts[: len(CLASS_NAMES)], counts[MASK_NODATA]).astype(np.int64)


@dataclass
class SceneStats:
    """One scene's row: counts-derived fractions among valid pixels, provenance and outcome."""

    item_id: str
    datetime: str = ""
    status: str = "pending"
    reason: str = ""
    valid_pixels: int = 0
    pct_clear: float = float("nan")  # every share in % of the valid pixels, as STAC's eo:cloud_cover is
    pct_thick_cloud: float = float("nan")
    pct_thin_cloud: float = float("nan")
    pct_cloud_shadow: float = float("nan")
    cloud_cover: float = float("nan")  # % of valid pixels that are thick or thin cloud
    pct_overcast_check: float = float("nan")  # % of valid pixels the overcast check made cloud (in cloud_cover)
    provider_cloud_cover: float = float("nan")  # the provider's eo:cloud_cover (%), for comparison
    processing_baseline: str = ""
    offset_applied: int = 0
    radiometry: str = ""  # what was applied to the DN and why (pipeline.read.radiometry)
    runtime_s: float = float("nan")
    extra: dict = field(default_factory=dict, repr=False)

    def set_counts(self, counts: np.ndarray) -> SceneStats:
        """The shares of ``counts``: ``(5,)`` classes 0..3 and nodata (``class_counts``), or ``(6,)`` with the cloud
        pixels the overcast check made (``pipeline.detect.overcast``) last."""
        valid = int(counts[: len(CLASS_NAMES)].sum())
        self.valid_pixels = valid
        if valid:
            p = 100 * counts[: len(CLASS_NAMES)] / valid
            self.pct_clear, self.pct_thick_cloud, self.pct_thin_cloud, self.pct_cloud_shadow = map(float, p)
            self.cloud_cover = float(p[1] + p[2])
            if len(counts) > len(CLASS_NAMES) + 1:
                self.pct_overcast_check = float(100 * counts[len(CLASS_NAMES) + 1] / valid)
        return self

    @classmethod
    def from_row(cls, row: dict) -> SceneStats:
        """The record of a stored row (a manifest entry's ``stats``; fields of other versions ignored)."""
        known = set(cls.__dataclass_fields__) - {"extra"}
        return cls(**{k: v for k, v in row.items() if k in known})

    def row(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def to_frame(records: list[SceneStats]):
    """A pandas DataFrame indexed by ``item_id``, one row per scene."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in records]).set_index("item_id")


def table_path(path: str | Path) -> Path:
    """``path`` as a table file to write: a .csv, .parquet or .pq suffix, in a folder that exists (else a
    ConfigError naming what to fix)."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet", ".pq"):
        raise ConfigError(f"table file {str(path)!r}: use a .csv or .parquet suffix")
    if not path.parent.is_dir():
        raise ConfigError(f"table file {str(path)!r}: its folder {str(path.parent)!r} does not exist")
    return path


def write_table(frame, path: str | Path) -> Path:
    """Write the table as CSV or Parquet, by the file's suffix (see ``table_path``)."""
    path = table_path(path)
    if path.suffix == ".csv":
        frame.to_csv(path)
    else:
        frame.to_parquet(path)
    return path
