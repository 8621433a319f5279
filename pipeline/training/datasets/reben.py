"""Real Sentinel-2 **L2A** patches of BigEarthNet v2.0 (reBEN): the 24 Sentinel-2 patches of the mock data that ship
in ``configilm==0.7.1`` (PyPI, MIT; BigEarthNet data CDLA-Permissive-1.0), an LMDB of safetensors records beside
its ``metadata.parquet`` (18 patches: 6 train, 6 validation, 6 test) and
``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` (6 more). Each patch is 1.2 km × 1.2 km (120 × 120 px
at 10 m) of a Sen2Cor L2A product reprocessed for reBEN (``N9999``) from 2017 L1C, so no baseline-04.00 offset:
DN = reflectance × 10000.

- 21 patches come from one Austrian product of 2017-06-13 (tile 33UUP), in groups of neighbours (the names end in
  the patch's column and row in the tile): green summer land, of which three carry reBEN's flag
  ``contains_cloud_or_shadow``; three come from a Finnish product of 2017-11-01 (tile 35VNJ), flagged
  ``contains_seasonal_snow``.
- reBEN's flags are a label source independent of this project's teachers: a patch flagged neither cloudy nor
  shadowed is clear ground (snow counts as clear ground in the four classes).

:func:`mosaics` puts the training neighbours of one product side by side (the six train patches of 33UUP become one
360 × 240 px scene), so chips see real neighbouring land, not zero padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.catalog.sensors import SENTINEL2_L2A
from pipeline.errors import ConfigError, InputError
from pipeline.training.datasets.scenes import Scene, package_dir

PACKAGE = "configilm"
MOCK = "extra/mock_data/BENv2"
PATCH = 120  # px a side at 10 m
SPLITS = {"train": "train", "val": "validation", "test": "test"}  # ours: reBEN's
CLEAR, IGNORE = 0, 255


@dataclass(frozen=True)
class Patch:
    """One reBEN patch: ``dn (12, 120, 120) uint16`` in ``SENTINEL2_L2A.bands`` order (the 20 m and 60 m bands
    brought to the 10 m grid, bilinear); ``split`` train, val or test (reBEN's own); its flags."""

    name: str
    dn: np.ndarray
    split: str
    snow: bool
    cloud_or_shadow: bool

    @property
    def product(self) -> str:
        return self.name.rsplit("_", 2)[0]

    @property
    def cell(self) -> tuple[int, int]:
        """``(row, column)`` of the patch in its tile: the name ends in ``_{column}_{row}`` (checked on the seams
        between neighbours in tests/datasets/test_reben.py)."""
        col, row = self.name.rsplit("_", 2)[1:]
        return int(row), int(col)


def patches() -> list[Patch]:
    """All 24 Sentinel-2 patches, sorted by name."""
    import lmdb
    import pyarrow.parquet as pq
    import torch
    from safetensors.numpy import load

    root = package_dir(PACKAGE) / MOCK
    if not (root / "BigEarthNet-V2-LMDB" / "data.mdb").is_file():
        raise InputError(f"{root / 'BigEarthNet-V2-LMDB'} is missing; run: pip install --no-deps configilm==0.7.1")
    meta = {}
    for table in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        for row in pq.read_table(root / table).to_pylist():
            meta[row["patch_id"]] = row
    split_of = {v: k for k, v in SPLITS.items()}
    out = []
    env = lmdb.open(str(root / "BigEarthNet-V2-LMDB"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            for name, row in sorted(meta.items()):
                record = txn.get(name.encode())
                if record is None:
                    raise InputError(f"reBEN patch {name} is listed in the metadata but not in the LMDB of {root}")
                bands = load(record)
                dn = np.zeros((len(SENTINEL2_L2A.bands), PATCH, PATCH), np.uint16)
                for i, band in enumerate(SENTINEL2_L2A.bands):
                    a = torch.from_numpy(bands[band].astype(np.float32))[None, None]
                    if a.shape[-1] != PATCH:  # 20 m (60 px) and 60 m (20 px) bands
                        a = torch.nn.functional.interpolate(
                            a, size=(PATCH, PATCH), mode="bilinear", align_corners=False
                        )
                    dn[i] = np.clip(np.rint(a[0, 0].numpy()), 0, 65535).astype(np.uint16)
                out.append(
                    Patch(
                        name,
                        dn,
                        split_of[row["split"]],
                        bool(row["contains_seasonal_snow"]),
                        bool(row["contains_cloud_or_shadow"]),
                    )
                )
    finally:
        env.close()
    return out


def held_out(p: Patch) -> bool:
    """Patches for evaluation only: reBEN's test split, and every patch flagged cloudy or shadowed (their flags say
    only that some pixel is, not which, so they cannot label a training chip)."""
    return p.split == "test" or p.cloud_or_shadow


def patches_of(split: str) -> list[Patch]:
    """The patches of one of our splits: ``test`` = every :func:`held_out` patch; ``train``/``val`` = reBEN's split
    without them (all clear by reBEN's flags)."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}; expected one of {', '.join(SPLITS)}")
    return [p for p in patches() if (held_out(p) if split == "test" else p.split == split and not held_out(p))]


def mosaics(split: str) -> list[tuple[Scene, np.ndarray]]:
    """``[(scene, labels (y, x) uint8)]`` for training: the patches of ``split`` (``train`` or ``val``) that are not
    :func:`held_out`, neighbours of one product placed side by side on their tile grid; dn 0 and labels 255 (ignored)
    where a cell has no patch, labels clear (0) elsewhere, by reBEN's flags."""
    if split not in ("train", "val"):
        raise ConfigError(f"split {split!r}: reBEN mosaics are for training; expected train or val")
    chosen = patches_of(split)
    out = []
    for product in sorted({p.product for p in chosen}):
        group = [p for p in chosen if p.product == product]
        for block in _neighbours(group):
            r0, c0 = min(p.cell[0] for p in block), min(p.cell[1] for p in block)
            rows, cols = max(p.cell[0] for p in block) - r0 + 1, max(p.cell[1] for p in block) - c0 + 1
            dn = np.zeros((len(SENTINEL2_L2A.bands), rows * PATCH, cols * PATCH), np.uint16)
            labels = np.full((rows * PATCH, cols * PATCH), IGNORE, np.uint8)
            for p in block:
                y, x = (p.cell[0] - r0) * PATCH, (p.cell[1] - c0) * PATCH
                dn[:, y : y + PATCH, x : x + PATCH] = p.dn
                labels[y : y + PATCH, x : x + PATCH] = CLEAR
            _, _, when, _, _, tile = product.split("_")
            out.append(
                (
                    Scene(
                        f"reben-{tile}-{when[:8]}-{c0}_{r0}",
                        dn,
                        10.0,
                        "configilm 0.7.1 mock reBEN, real L2A",
                        note=f"{len(block)} patches, clear by reBEN's flags",
                    ),
                    labels,
                )
            )
    return out


def _neighbours(group: list[Patch]) -> list[list[Patch]]:
    """Groups of patches that touch (8-neighbourhood on the tile grid), each sorted by cell."""
    left, blocks = sorted(group, key=lambda p: p.cell), []
    while left:
        block = [left.pop(0)]
        frontier = list(block)
        while frontier:
            r, c = frontier.pop().cell
            near = [p for p in left if abs(p.cell[0] - r) <= 1 and abs(p.cell[1] - c) <= 1]
            for p in near:
                left.remove(p)
            block += near
            frontier += near
        blocks.append(sorted(block, key=lambda p: p.cell))
    return blocks
