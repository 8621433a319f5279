"""Snow over real L2A land, labelled clear: bright ground with dark shortwave infrared is not cloud.

Without B10 a model tells snow from cloud by the shortwave infrared alone: snow absorbs at 1.6 and 2.2 µm (B11 and
B12 about a tenth of its blue), water-droplet cloud does not (B11 half its blue or more; the starter's cloud labels:
B11 median 0.20-0.46). The training land held one snowy patch (reBEN's ``…T35VNJ_00_00``, Finland, November: 120 ×
120 px, about a third of the real land chips) and the L2A starters still called bright snow cloud (run 25: 3,218 of
that very patch's pixels, and 6,826 of bigearthnet-common's held-out snow patch; docs/training-log.md, "Snow").

So a share of the real land chips gets a snow cover: a smoothed random field, thresholded at a random level, decides
where (10-90 % of the chip), with soft edges where the ground shows through (forest, thin snow: ``f · snow + (1 −
f) · land`` with ``f`` rising over a few pixels up to a per-chip maximum of 0.5-1); the snow's spectrum is one real
snow pixel of the training patch (its pixels with NDSI ≥ 0.7 and B03 ≥ 0.15: :func:`snow_library`), scaled as a
change of illumination (every band by one gain, at most 2.5) so that its blue lands in ``BLUE`` (0.25-0.9
reflectance: low winter sun to fresh snow at a high one), with a ±10 % smooth texture. Labels stay as they were
(clear, or ignored), so the clouds laid over the chip afterwards (``translucent``) still teach cloud over snow.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from pipeline.catalog.sensors import REFLECTANCE_DN
from pipeline.training.datasets.chips import TransformedChips

BLUE = (0.25, 0.9)  # B02 reflectance of a chip's snow
MAX_GAIN = 2.5  # at most this change of illumination from the library pixel (shaded snow stays dim)
COVER = (0.1, 0.9)  # share of the chip's pixels under snow
FULL = (0.5, 1.0)  # the most a chip's snow hides of the ground beneath (below 1: trees and stubble show through)
GRAIN = (4.0, 32.0)  # px: smoothing of the field that places the snow (small patches to whole fields)
EDGE = 0.15  # field units over which the snow fraction rises from 0 to its maximum (soft edges)
TEXTURE = 0.1  # relative brightness variation within the snow
PURE_NDSI, PURE_GREEN = 0.7, 0.15  # library pixels: (B03 - B11) / (B03 + B11) and B03 at least these


def snow_library(dn: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """The pure snow pixels of ``dn (C, y, x)`` (DN, 1e4 per unit reflectance): ``(N, C) float32`` spectra of the
    pixels with NDSI ≥ 0.7 and B03 ≥ 0.15 reflectance."""
    r = np.asarray(dn, np.float32) / REFLECTANCE_DN
    green, swir = r[bands.index("B03")], r[bands.index("B11")]
    ndsi = (green - swir) / np.maximum(green + swir, 1e-6)
    pure = (ndsi >= PURE_NDSI) & (green >= PURE_GREEN)
    return np.asarray(dn, np.float32)[:, pure].T.copy()


def training_library() -> np.ndarray:
    """:func:`snow_library` of reBEN's snowy training patches (the held-out ones left out), in
    ``SENTINEL2_L2A.bands`` order: ``(N, 12) float32``."""
    from pipeline.catalog.sensors import SENTINEL2_L2A
    from pipeline.training.datasets.reben import patches_of

    return np.concatenate([snow_library(p.dn, SENTINEL2_L2A.bands) for p in patches_of("train") if p.snow])


def _smoothed(noise: np.ndarray, sigma: float, spread: float = 1.0) -> np.ndarray:
    """``noise (y, x)`` smoothed by a Gaussian of ``sigma`` px and scaled to a standard deviation of ``spread``:
    ``(y, x) float32``."""
    field = ndimage.gaussian_filter(noise.astype(np.float32), sigma)
    return spread * field / max(float(field.std()), 1e-6)


def snow_cover(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``(y, x) float32`` snow fraction in [0, maximum]: 0 on bare ground, the chip's maximum (``FULL``) inside
    the snow, rising over ``EDGE`` of the field's spread at its edges; ``COVER`` of the pixels are snow."""
    field = _smoothed(rng.standard_normal(shape), rng.uniform(*GRAIN))
    level = np.quantile(field, 1 - rng.uniform(*COVER))
    return (np.clip((field - level) / EDGE, 0, 1) * rng.uniform(*FULL)).astype(np.float32)


def lay_snow(dn: np.ndarray, spectrum: np.ndarray, cover: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """``dn (C, y, x)`` with ``spectrum (C,)`` (DN) mixed in by ``cover (y, x)`` and brightened per pixel by
    ``texture (y, x)`` (around 1): ``f · spectrum · texture + (1 − f) · dn``; nodata (0 in every band) stays 0.
    Returns float32."""
    dn = np.asarray(dn, np.float32)
    valid = dn.any(axis=0)
    f = np.where(valid, cover, 0)[None]
    return np.clip(f * spectrum[:, None, None] * texture[None] + (1 - f) * dn, 0, 65535).astype(np.float32)


class SnowedChips(TransformedChips):
    """Chips of a chip dataset of real L2A land (items ``(dn (C, S, S) float32, labels (S, S) int64)``, bands in
    ``bands`` order) where, with probability ``prob``, a snow cover is laid (:func:`snow_cover`, :func:`lay_snow`)
    with one spectrum of ``library (N, C)`` (:func:`snow_library`) scaled to a blue in ``BLUE`` (by a gain of at most
    ``MAX_GAIN``); labels unchanged.
    Reproducible per (seed, epoch, index) like the chips themselves."""

    stream = 6

    def __init__(self, chips, bands: tuple[str, ...], library: np.ndarray, prob: float, seed: int = 42) -> None:
        super().__init__(chips, seed)
        if not len(library):
            raise ValueError("the snow library is empty: no pixel with NDSI >= 0.7 and B03 >= 0.15")
        self.library, self.prob, self.blue = np.asarray(library, np.float32), prob, tuple(bands).index("B02")

    def transform(self, dn, labels, rng):
        if rng.random() >= self.prob:
            return torch.from_numpy(np.asarray(dn, np.float32)), labels
        pixel = self.library[rng.integers(len(self.library))]
        gain = min(rng.uniform(*BLUE) * REFLECTANCE_DN / max(float(pixel[self.blue]), 1.0), MAX_GAIN)
        spectrum = pixel * np.float32(gain)
        shape = np.asarray(dn).shape[1:]
        texture = 1 + _smoothed(rng.standard_normal(shape), 2.0, TEXTURE)
        return torch.from_numpy(lay_snow(dn, spectrum, snow_cover(shape, rng), texture)), labels
