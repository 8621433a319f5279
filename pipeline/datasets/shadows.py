"""Training chips with synthetic cloud shadows, darkened by the physics of a blocked sun.

The starter's real scenes hold few cloud shadows (97 % of the 10 m shadow pixels are one winter scene), so a
model learns that scene rather than what a shadow is. A shadow is the same surface lit by the sky alone: in
top-of-atmosphere reflectance ``rho = path + (surface part)``, the surface part shrinks to its diffuse share
``k`` while the atmosphere's own path reflectance stays. So, per band::

    shadowed = path + k * (rho - path),    k = min(1, k_nir * (842 nm / wavelength) ** alpha)

with ``path`` each band's dark-object value in the chip (its 1st percentile), but at most
``0.12 * (490 nm / wavelength) ** 2`` (a hazy atmosphere's path reflectance falls off about as Rayleigh scattering
does; without the cap, a chip without water would take its darkest forest's NIR for the atmosphere's), ``k_nir`` the NIR's diffuse share
(0.15-0.7, thick to thin clouds) and ``alpha`` (0.5-1.5) making the sky's light bluer than the sun's. The cirrus
band (B10) sees no surface and is left as it is. Shadows are blobs of smoothed noise (cloud-like, soft edges).

Labels follow the labelling rule (:mod:`pipeline.pseudolabels`, rule 4): a **clear** pixel in a blob's core
becomes **shadow** where its darkened NIR (B08) is below 0.25 and at most 0.8 times what it was; it stays clear
where the darkened NIR is still >= 0.25 (the rule's bright-NIR veto), and is ignored (255) where the shadow barely
shows (water, dark forest: already dark, so no evidence either way), as is the penumbra. Cloud pixels are not
darkened (a shadow falls on the ground, not on cloud tops).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..pseudolabels import CLEAR, SHADOW, SHADOW_NIR
from ..sensors import MASK_NODATA
from .brightness import REFLECTANCE_DN
from .chips import TransformedChips

# Centre wavelengths (nm) of the Sentinel-2 MSI bands
WAVELENGTH_NM = {"B01": 443, "B02": 490, "B03": 560, "B04": 665, "B05": 705, "B06": 740, "B07": 783, "B08": 842,
                 "B8A": 865, "B09": 945, "B10": 1375, "B11": 1610, "B12": 2190}
SURFACE_BLIND = ("B10",)  # bands that do not see the ground (strong water-vapour absorption below the cirrus)
DIFFUSE_NIR = (0.15, 0.7)
SKY_BLUENESS = (0.5, 1.5)
PATH_BLUE = 0.12  # upper bound of the path reflectance at 490 nm (DN / 1e4), falling off as wavelength ** -2
COVER = (0.05, 0.35)  # share of the chip a shadow covers
VISIBLE = 0.8  # a shadow pixel's NIR is at most this share of the sunlit one (else the shadow does not show)
CORE, EDGE = 0.9, 0.1  # darkening shares above which a pixel is the shadow's core; between them, its penumbra


def shadow_blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cloud-like shadow footprint: ``(size, size)`` float32 darkening share in [0, 1] (1 = full shadow)."""
    sigma = size * rng.uniform(1 / 40, 1 / 10)
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma, mode="wrap")
    blob = (noise >= np.quantile(noise, 1 - rng.uniform(*COVER))).astype(np.float32)
    return np.clip(ndimage.gaussian_filter(blob, rng.uniform(0.8, 2.5)) * 1.25 - 0.125, 0, 1)


def shade(dn: np.ndarray, labels: np.ndarray, share: np.ndarray, bands: tuple[str, ...], k_nir: float,
          alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Darken ``dn (C, y, x)`` DN (1e4 per unit reflectance) under ``share (y, x)`` as in the module docstring and
    relabel ``labels (y, x)`` uint8 -> ``(float32 dn, uint8 labels)``. Only clear, shadow and ignored ground
    pixels are darkened; nodata (0 in every band) stays 0."""
    dn = dn.astype(np.float32)
    valid = (dn != 0).any(axis=0)
    ground = valid & np.isin(labels, (CLEAR, SHADOW, MASK_NODATA))
    share = np.where(ground, share, 0).astype(np.float32)
    out = dn.copy()
    for i, band in enumerate(bands):
        if band in SURFACE_BLIND or not valid.any():
            continue
        cap = PATH_BLUE * REFLECTANCE_DN * (WAVELENGTH_NM["B02"] / WAVELENGTH_NM[band]) ** 2
        path = np.float32(min(np.percentile(dn[i][valid], 1), cap))
        k = min(1.0, k_nir * (WAVELENGTH_NM["B08"] / WAVELENGTH_NM[band]) ** alpha)
        surface = np.maximum(dn[i] - path, 0)
        out[i] = np.where(valid, dn[i] - share * (1 - k) * surface, 0)
    lab = labels.copy()
    core, penumbra = share >= CORE, (share > EDGE) & (share < CORE)
    i = bands.index("B08")
    nir, shows = out[i] / REFLECTANCE_DN, out[i] <= VISIBLE * dn[i]
    clear = labels == CLEAR
    lab[core & clear & (nir < SHADOW_NIR) & shows] = SHADOW
    lab[((core & ~shows) | penumbra) & clear] = MASK_NODATA
    return out, lab


class ShadowedChips(TransformedChips):
    """Chips of a chip dataset (items ``(dn (C, S, S) float32, labels (S, S) int64)``, bands in ``bands`` order)
    where, with probability ``prob``, a synthetic cloud shadow is cast (see :func:`shade`); reproducible per
    (seed, epoch, index) like the chips themselves."""

    stream = 4

    def __init__(self, chips, bands: tuple[str, ...], prob: float, seed: int = 42) -> None:
        super().__init__(chips, seed)
        self.bands, self.prob = tuple(bands), prob

    def transform(self, dn, labels, rng):
        labels = np.asarray(labels)
        if rng.random() >= self.prob:
            return torch.from_numpy(np.asarray(dn, np.float32)), torch.from_numpy(labels.astype(np.int64))
        share = shadow_blob(rng, labels.shape[-1])
        out, lab = shade(dn, labels.astype(np.uint8), share, self.bands, rng.uniform(*DIFFUSE_NIR),
                         rng.uniform(*SKY_BLUENESS))
        return torch.from_numpy(out), torch.from_numpy(lab.astype(np.int64))
