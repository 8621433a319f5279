"""Real Sentinel-2 **L2A** pixels: the six example patches that ship in ``bigearthnet-common==2.8.0`` (PyPI,
Apache-2.0 package; BigEarthNet data CDLA-Permissive-1.0), each 1.2 km × 1.2 km (120 × 120 px at 10 m) of a
Sen2Cor L2A product of 2017–2018 over Europe, processing baselines before
04.00 (no offset: DN = reflectance × 10000).

BigEarthNet left out cloudy patches, and its lists name none of these six as cloudy (one is in its seasonal snow
list): they test the **clear** side of an L2A model (false clouds and shadows over real surfaces), not its
clouds.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np

from pipeline.catalog.sensors import SENTINEL2_L2A
from pipeline.errors import InputError
from pipeline.training.datasets.scenes import Scene, package_dir

ARCHIVE = "BigEarthNet-S2-Example.tar.bz2"


def l2a_patches() -> list[Scene]:
    """The six patches as ``Scene(name, dn (12, 120, 120) uint16 in SENTINEL2_L2A.bands order, 10.0)``; the 20 m
    and 60 m bands brought to the 10 m grid (bilinear), as the job's cube does."""
    import rasterio
    from rasterio.enums import Resampling

    path = package_dir("bigearthnet_common") / ARCHIVE
    if not path.is_file():
        raise InputError(f"{path} is missing; run: pip install --no-deps bigearthnet-common==2.8.0")
    files: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:bz2") as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name.endswith(".tif"):
                patch, band = name[:-4].rsplit("_", 1)
                files.setdefault(patch, {})[band] = tar.extractfile(member).read()
    scenes = []
    for patch in sorted(files):
        dn = np.zeros((len(SENTINEL2_L2A.bands), 120, 120), np.uint16)
        for i, band in enumerate(SENTINEL2_L2A.bands):
            with rasterio.MemoryFile(io.BytesIO(files[patch][band])) as mem, mem.open() as src:
                dn[i] = src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear)
        scenes.append(Scene(f"bigearthnet-{patch}", dn, 10.0, "bigearthnet-common 2.8.0, real L2A, cloud-free"))
    return scenes
