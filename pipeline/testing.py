"""Factories shared by tests and flows: real Sentinel-2 L1C arrays from the shared data, tiny weights files.

Real data is read from ``shared/data`` beside the checkout (or ``$CLOUDMASK_SHARED_DATA``); it is never
copied into the project.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .sensors import CLASS_CODES, CLASS_NAMES, SENTINEL2_L1C


def shared_data_dir() -> Path:
    """The shared real-data folder: ``$CLOUDMASK_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("CLOUDMASK_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        raise InputError(f"shared data folder {str(path)!r} not found; set CLOUDMASK_SHARED_DATA to its location")
    return path


def eolearn_scenes() -> np.ndarray:
    """The 5 eo-learn reference scenes (Slovenia, 2015): ``(time=5, band=13, y=101, x=100)`` uint16 DN.

    Stored as TOA reflectance; DN = reflectance * 10000 (the pre-04.00 L1C convention). Scenes 0 and 1 are
    fully cloudy, 2-4 clear.
    """
    refl = np.load(shared_data_dir() / "eo-learn-testeopatch" / "REFERENCE_SCENES.npy")
    return np.clip(np.round(refl.transpose(0, 3, 1, 2) * 10000), 0, 65535).astype(np.uint16)


def sen12mscr_patch() -> np.ndarray:
    """A cloudy SEN12MS-CR patch (West Africa, summer 2018): ``(band=13, y=256, x=256)`` uint16 DN, 10 m."""
    import rasterio

    path = shared_data_dir() / "more-s2" / "sen12ms-cr-mamba-scr" / "ROIs1868_summer_s2_cloudy_19_p30.tif"
    with rasterio.open(path) as src:
        return src.read()


def tiny_weights(path: str | Path, seed: int = 0, **model_kwargs) -> str:
    """Write randomly initialised ``mscloudcam_tiny`` weights (13 S2 L1C bands, 64 px tiles); return sha256."""
    import torch

    from .model import create_model
    from .model.weights import WeightsMeta, save_weights

    torch.manual_seed(seed)
    model = create_model("mscloudcam_tiny", **model_kwargs)
    meta = WeightsMeta(
        model="mscloudcam_tiny", bands=SENTINEL2_L1C.bands, classes=CLASS_NAMES, class_codes=CLASS_CODES,
        model_kwargs=model_kwargs, tile_size=model.img_size,
        provenance={"data": "none", "recipe": f"random init, seed {seed}", "note": "for tests only"},
    )
    return save_weights(path, model, meta)
