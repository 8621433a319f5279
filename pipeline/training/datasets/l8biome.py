"""L8Biome in torchgeo's layout: ``<root>/<biome>/<scene>/<scene>.TIF`` (11-band stack) and
``<scene>_fixedmask.TIF``; 512x512 tiles, stride 512 from (0, 0), partial edge tiles dropped.

Mask codes 128 clear, 255 thick cloud, 192 thin cloud, 64 shadow -> 0/1/2/3; 0 (fill) -> 255 (ignore).
Scene split of docs/mscloudcam.md ("Training recipe"): scene folders sorted, shuffled with the legacy Fisher-Yates of
``random.shuffle(x, random=random.Random(42).random)`` (removed from Python 3.11, so written out here),
then 60/20/20 (57/19/20 for the 96 scenes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.catalog.sensors import LANDSAT_C2_L1, MASK_NODATA
from pipeline.errors import ConfigError, InputError

SIZE = 512
CODES = {128: 0, 255: 1, 192: 2, 64: 3, 0: MASK_NODATA}
_LUT = np.full(256, MASK_NODATA, np.uint8)
for _code, _cls in CODES.items():
    _LUT[_code] = _cls


def legacy_shuffle(items: list, seed: int = 42) -> list:
    """Python < 3.11 ``random.shuffle(items, random=random.Random(seed).random)``, reproduced exactly."""
    items, rnd = list(items), random.Random(seed).random
    for i in reversed(range(1, len(items))):
        j = int(rnd() * (i + 1))
        items[i], items[j] = items[j], items[i]
    return items


def scene_split(root: str | Path) -> dict[str, list[Path]]:
    """``{"train": [...], "val": [...], "test": [...]}`` scene stacks, by the paper's shuffled 60/20/20 split."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"L8Biome folder {str(root)!r} does not exist; pass the folder torchgeo downloads into")
    scenes = sorted(p for p in root.rglob("LC8*.TIF") if not p.name.endswith("_fixedmask.TIF"))
    if not scenes:
        raise InputError(f"no L8Biome scenes (LC8*.TIF) under {str(root)!r}")
    order = legacy_shuffle(scenes)
    n = len(order)
    a, b = int(0.6 * n), int(0.6 * n) + int(0.2 * n)
    return {"train": order[:a], "val": order[a:b], "test": order[b:]}


def remap(mask: np.ndarray, source: str) -> np.ndarray:
    """fixedmask codes ``(y, x)`` uint8 -> classes 0..3 and 255; unknown codes are an error naming them."""
    bad = np.setdiff1d(np.unique(mask), list(CODES))
    if bad.size:
        raise InputError(f"{source}: mask values {bad.tolist()} are not L8Biome codes {sorted(CODES)}")
    return _LUT[mask]


class L8Biome(Sequence):
    """Items ``(dn (11, 512, 512) uint16, labels (512, 512) uint8)``: every full 512 tile of a split's scenes."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        import rasterio

        splits = scene_split(root)
        if split not in splits:
            raise ConfigError(f"split {split!r}; expected train, val or test")
        self.tiles = []
        for scene in splits[split]:
            mask = scene.with_name(scene.stem + "_fixedmask.TIF")
            if not mask.is_file():
                raise InputError(f"{scene}: the label file {mask.name} is missing beside it")
            with rasterio.open(scene) as src:
                if src.count != len(LANDSAT_C2_L1.bands):
                    raise InputError(f"{scene}: {src.count} bands, expected 11 (B1..B11)")
                h, w = src.height, src.width
            self.tiles += [
                (scene, mask, y, x) for y in range(0, h - SIZE + 1, SIZE) for x in range(0, w - SIZE + 1, SIZE)
            ]
        self.scenes = splits[split]

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int):
        import rasterio
        from rasterio.windows import Window

        scene, mask, y, x = self.tiles[i]
        window = Window(x, y, SIZE, SIZE)
        with rasterio.open(scene) as src:
            dn = src.read(window=window)
        with rasterio.open(mask) as src:
            labels = remap(src.read(1, window=window), str(mask))
        return dn.astype(np.uint16), labels


def train_data(root, split_mode: str = "paper"):
    from pipeline.training.datasets.chips import FixedChips
    from pipeline.training.trainer import TrainData

    return TrainData(
        train=FixedChips(L8Biome(root, "train")),
        val=L8Biome(root, "val"),
        bands=LANDSAT_C2_L1.bands,
        dataset="L8Biome",
        split="sorted + legacy-shuffled scenes 60/20/20",
        sensor=LANDSAT_C2_L1.name,
        level=LANDSAT_C2_L1.level,
        ignore_index=MASK_NODATA,
    )
