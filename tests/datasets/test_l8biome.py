"""L8Biome reader on real Landsat-8 scenes written in torchgeo's layout."""

import random

import numpy as np
import pytest
import rasterio

from pipeline.datasets.l8biome import L8Biome, legacy_shuffle, remap, scene_split
from pipeline.errors import InputError


def test_legacy_shuffle_matches_the_python_fisher_yates():
    items = list(range(96))
    rnd = random.Random(42).random
    expected = list(items)
    for i in reversed(range(1, len(expected))):  # the algorithm random.shuffle used with random=...
        j = int(rnd() * (i + 1))
        expected[i], expected[j] = expected[j], expected[i]
    got = legacy_shuffle(items)
    assert got == expected and sorted(got) == items and got != items


def test_split_sizes_for_96_scenes(tmp_path):
    for i in range(96):
        d = tmp_path / f"biome{i % 8}" / f"LC8{i:03d}0012014001LGN00"
        d.mkdir(parents=True)
        (d / f"LC8{i:03d}0012014001LGN00.TIF").touch()
    sizes = {k: len(v) for k, v in scene_split(tmp_path).items()}
    assert sizes == {"train": 57, "val": 19, "test": 20}


def test_tiles_codes_and_split(l8biome_root):
    split = scene_split(l8biome_root)
    assert sum(map(len, split.values())) == 5 and not set(split["train"]) & set(split["test"])
    ds = L8Biome(l8biome_root, "train")
    assert len(ds) == 3  # one full 512 tile per 627x603 scene; partial edge tiles dropped
    dn, labels = ds[0]
    assert dn.shape == (11, 512, 512) and dn.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 1, 2, 3, 255}
    scene, mask, y, x = ds.tiles[0]
    with rasterio.open(mask) as src:
        raw = src.read(1)[:512, :512]
    expected = np.select([raw == 128, raw == 255, raw == 192, raw == 64], [0, 1, 2, 3], 255)
    np.testing.assert_array_equal(labels, expected)


def test_unknown_mask_codes_and_missing_files_are_named(l8biome_root, tmp_path):
    with pytest.raises(InputError, match=r"m\.TIF: mask values \[7\]"):
        remap(np.array([[128, 7]], np.uint8), "m.TIF")
    scene = sorted(l8biome_root.rglob("LC8*_fixedmask.TIF"))[0]
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(l8biome_root, broken)
    (broken / scene.relative_to(l8biome_root)).unlink()
    with pytest.raises(InputError, match="_fixedmask.TIF is missing"):
        for s in ("train", "val", "test"):
            L8Biome(broken, s)
    with pytest.raises(InputError, match="does not exist"):
        L8Biome(tmp_path / "nowhere")
