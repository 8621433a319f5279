"""Translucent clouds over real L2A land: the pasted clouds fade out towards their edges, so that thin cloud at L2A
is seen over real ground.

Thin cloud in the starter's training labels is almost all one winter haze (docs/training-log.md, "Map v3": 84,823
of 89,691 thin pixels, blue 0.087 over land 0.028), while real L2A thin cloud here is the rim of cumulus (reBEN's
cumulus patch: blue 0.122 over land 0.019, thick cores 0.458). A cloud is seen through where it is optically thin, at its
edges most of all; so a pasted cloud pixel becomes ``a · cloud + (1 − a) · land`` with an opacity ``a`` that rises
from the cloud's rim inwards over ``width`` pixels and tops out at ``opacity``, both drawn per chip. Its label then
follows the labelling rule's own split (``pipeline.training.pseudolabels``) applied to the cloud, not to the ground beneath:
thick where the blue it would show over dark land (``DARK_BLUE``, reBEN's green land) is ≥ 0.25 reflectance, else
thin, so that faint cloud over bright ground (snow, bare soil) is not called thick (run 22 learnt snow as thick
under the mixed-blue split); a rim that adds under ``FAINT_BLUE`` (0.05) to the land's blue is left unlabelled
(``IGNORE``), as the teachers could not say. Shadows are pasted as they are. What runs with it gave, and why none
was shipped (bright bare soil called thin): docs/training-log.md, "Translucent clouds".
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from pipeline.catalog.sensors import REFLECTANCE_DN
from pipeline.training.pseudolabels import SHADOW, THICK, THICK_BLUE, THIN

IGNORE = 255
WIDTH = (2.0, 24.0)  # px over which a cloud's opacity rises from its rim (10 m pixels)
OPACITY = (0.35, 1.0)  # the most a chip's clouds hide of the land beneath
FAINT_BLUE = (
    0.05  # reflectance added to the land's blue under which a cloud pixel is left unlabelled (run 20: 0.02; card)
)
DARK_BLUE = 0.03  # the blue of the dark ground the thick/thin split is made over (reBEN's clear land: 0.019-0.032)


def opacity_map(cloud: np.ndarray, width: float, opacity: float) -> np.ndarray:
    """``cloud (y, x) bool`` -> opacity ``(y, x) float32`` in [0, ``opacity``]: 0 off the cloud, ``opacity / width``
    on its rim, rising by that much per pixel inwards up to ``opacity``."""
    inside = ndimage.distance_transform_edt(cloud)  # px to the nearest clear pixel: 1 on the rim
    return (np.clip(inside / width, 0.0, 1.0) * opacity).astype(np.float32)


def translucent_paste(
    cloud_dn: np.ndarray,
    cloud_labels: np.ndarray,
    land_dn: np.ndarray,
    land_labels: np.ndarray,
    rng: np.random.Generator,
    blue: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The clouds and shadows of a chip ``(cloud_dn (C, S, S), cloud_labels (S, S))`` laid over another chip of land
    ``(land_dn, land_labels)`` (DN = reflectance × 10000, band ``blue`` = B02): shadows replace the land, clouds are
    mixed with it by :func:`opacity_map` (width and opacity drawn from ``rng``; pasted whole over nodata, all bands 0)
    and re-labelled by their blue: ``IGNORE`` where they add under ``FAINT_BLUE`` to the land's, else thick where
    ``a · cloud + (1 − a) · DARK_BLUE`` ≥ 0.25, else thin. Returns ``(dn (C, S, S) float32, labels (S, S) int64)``."""
    cloud_labels, land_labels = np.asarray(cloud_labels), np.asarray(land_labels)
    cloud_dn, land_dn = np.asarray(cloud_dn, np.float32), np.asarray(land_dn, np.float32)
    dn, labels = land_dn.copy(), land_labels.astype(np.int64)
    shadow = cloud_labels == SHADOW
    dn[:, shadow], labels[shadow] = cloud_dn[:, shadow], SHADOW
    cloud = np.isin(cloud_labels, (THICK, THIN))
    a = opacity_map(cloud, rng.uniform(*WIDTH), rng.uniform(*OPACITY))
    a[~dn.any(axis=0)] = 1.0  # over the land chip's nodata strips the cloud is pasted whole, as before
    a = a[cloud]
    dn[:, cloud] = a * cloud_dn[:, cloud] + (1 - a) * dn[:, cloud]
    added = dn[blue][cloud] - land_dn[blue][cloud]
    over_dark = a * cloud_dn[blue][cloud] + (1 - a) * DARK_BLUE * REFLECTANCE_DN
    labels[cloud] = np.where(
        added < FAINT_BLUE * REFLECTANCE_DN, IGNORE, np.where(over_dark >= THICK_BLUE * REFLECTANCE_DN, THICK, THIN)
    )
    return dn, labels


class TranslucentOverlay:
    """``MixedChips``' overlay (``(cloud_dn, cloud_labels, land_dn, land_labels, rng) -> (dn, labels)`` tensors):
    :func:`translucent_paste` with the blue band found in ``bands``."""

    def __init__(self, bands: tuple[str, ...]) -> None:
        self.blue = tuple(bands).index("B02")

    def __call__(self, cloud_dn, cloud_labels, land_dn, land_labels, rng):
        dn, labels = translucent_paste(cloud_dn, cloud_labels, land_dn, land_labels, rng, self.blue)
        return torch.from_numpy(dn), torch.from_numpy(labels)
