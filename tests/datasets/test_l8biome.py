"""L8Biome reader on real Landsat-8 scenes written in torchgeo's layout."""

import numpy as np
import pytest
import rasterio

from pipeline.errors import InputError
from pipeline.training.datasets.l8biome import L8Biome, legacy_shuffle, remap, scene_split

# What Python 3.10.13 printed for `x = list(range(96)); random.shuffle(x, random=random.Random(42).random)`
# (the call the authors' split used; its `random=` argument is gone since Python 3.11).
PYTHON310_ORDER = [
    10,
    73,
    1,
    48,
    64,
    29,
    56,
    38,
    65,
    89,
    54,
    82,
    43,
    74,
    3,
    19,
    45,
    51,
    92,
    60,
    41,
    58,
    31,
    21,
    62,
    91,
    88,
    8,
    76,
    87,
    84,
    26,
    77,
    85,
    22,
    35,
    14,
    55,
    28,
    71,
    24,
    27,
    66,
    50,
    9,
    78,
    79,
    30,
    13,
    5,
    72,
    4,
    15,
    12,
    83,
    39,
    32,
    59,
    36,
    49,
    33,
    70,
    75,
    34,
    47,
    81,
    40,
    57,
    69,
    6,
    23,
    68,
    11,
    93,
    52,
    90,
    0,
    63,
    46,
    17,
    44,
    53,
    16,
    86,
    42,
    18,
    94,
    37,
    7,
    80,
    95,
    67,
    20,
    25,
    2,
    61,
]


def test_legacy_shuffle_reproduces_the_order_python_3_10_gave():
    assert legacy_shuffle(list(range(96))) == PYTHON310_ORDER


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
