"""CloudSEN12+ in its distributed TACO format (``cloudsen12-l1c.000N.part.taco``), read with tacoreader 0.6.5.

The published files are TACO v1 containers (magic ``WX``, parquet footer, nested tortillas per sample).
tacoreader 2.x refuses them ("Legacy TACO v1 format"); the 0.x series reads them, and 0.6.5 is its last
release, so the project pins ``tacoreader==0.6.5`` (extra ``datasets``). Each sample is a nested tortilla
whose item 0 is the 13-band Sentinel-2 image and item 1 the label raster (0 clear, 1 thick, 2 thin, 3 shadow).

The paper's subset: ``real_proj_shape == 509`` and ``label_type == "high"`` (10,000 patches), padded from
509 to 512 with zeros on the left and bottom (docs/mscloudcam.md; padded label pixels are 0 = clear and
count), split sequentially by record index 85/5/10 (8500/500/1000), or by the official
``tortilla:data_split`` with ``split_mode="official"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.errors import ConfigError, InputError

SIZE, NATIVE = 512, 509
SPLIT_FRACTIONS = (0.85, 0.05)  # train, val; test is the rest
OFFICIAL = {"train": "train", "val": "validation", "test": "test"}


def _tacoreader():
    try:
        import tacoreader
    except ImportError as exc:
        raise ConfigError(
            "reading CloudSEN12 needs tacoreader 0.6.5: pip install 'cloudmask-pipeline[datasets]'"
        ) from exc
    return tacoreader


def pad_to_512(a: np.ndarray) -> np.ndarray:
    """``(..., 509, 509)`` -> ``(..., 512, 512)``: zeros on the left and bottom, as in the authors' subset."""
    h, w = a.shape[-2:]
    if (h, w) == (SIZE, SIZE):
        return a
    if h > SIZE or w > SIZE:
        raise InputError(f"patch of {h}x{w} pixels is larger than {SIZE}; expected 509x509 or 512x512")
    pad = [(0, 0)] * (a.ndim - 2) + [(0, SIZE - h), (SIZE - w, 0)]
    return np.pad(a, pad)


def paper_split(n: int) -> dict[str, slice]:
    """The authors' sequential split of ``n`` records: 85 % / 5 % / rest (8500/500/1000 of 10,000)."""
    a = int(n * SPLIT_FRACTIONS[0])
    b = a + int(n * SPLIT_FRACTIONS[1])
    return {"train": slice(0, a), "val": slice(a, b), "test": slice(b, n)}


class CloudSEN12(Sequence):
    """Items ``(dn (13, 512, 512) uint16, labels (512, 512) uint8)`` of one split of the paper's subset."""

    def __init__(self, paths, split: str = "train", split_mode: str = "paper") -> None:
        if split not in OFFICIAL:
            raise ConfigError(f"split {split!r}; expected train, val or test")
        if split_mode not in ("paper", "official"):
            raise ConfigError(f"split_mode {split_mode!r}; expected paper or official")
        files = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        for f in files:
            if "://" not in f and not Path(f).is_file():
                raise InputError(f"CloudSEN12 file {f!r} does not exist; pass the .part.taco file(s) with --data")
        try:
            table = _tacoreader().load(files if len(files) > 1 else files[0])
        except ValueError as exc:
            raise InputError(f"{files}: not a TACO file readable by tacoreader 0.6.5 ({exc})") from exc
        for column in ("real_proj_shape", "label_type", "tortilla:data_split"):
            if column not in table.columns:
                raise InputError(f"{files}: TACO metadata lacks the column {column!r}; is this CloudSEN12+?")
        subset = table[(table["real_proj_shape"] == NATIVE) & (table["label_type"] == "high")].reset_index(drop=True)
        if split_mode == "official":
            rows = np.flatnonzero(subset["tortilla:data_split"].to_numpy() == OFFICIAL[split])
        else:
            rows = np.arange(len(subset))[paper_split(len(subset))[split]]
        self.table, self.rows, self.files = subset, rows, files

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import rasterio

        if not -len(self) <= i < len(self):
            raise IndexError(i)
        row = int(self.rows[i])
        sample_id = self.table["tortilla:id"].iloc[row]
        sample = self.table.read(row)
        image_path, label_path = sample.read(0), sample.read(1)
        with rasterio.open(image_path) as src:
            if src.count != len(SENTINEL2_L1C.bands):
                raise InputError(f"CloudSEN12 sample {sample_id!r}: image has {src.count} bands, expected 13")
            dn = src.read()
        with rasterio.open(label_path) as src:
            labels = src.read(1)
        bad = np.setdiff1d(np.unique(labels), [0, 1, 2, 3])
        if bad.size:
            raise InputError(f"CloudSEN12 sample {sample_id!r}: label values {bad.tolist()} outside the codes 0..3")
        return pad_to_512(dn).astype(np.uint16), pad_to_512(labels).astype(np.uint8)


def train_data(paths, split_mode: str = "paper"):
    from pipeline.training.datasets.chips import FixedChips
    from pipeline.training.trainer import TrainData

    return TrainData(
        train=FixedChips(CloudSEN12(paths, "train", split_mode)),
        val=CloudSEN12(paths, "val", split_mode),
        bands=SENTINEL2_L1C.bands,
        dataset="CloudSEN12+ (real_proj_shape 509, label_type high)",
        split=f"{split_mode} split",
        ignore_index=None,
    )
