"""Brightness-jittered training chips whose thick/thin labels follow the labelling rule's own threshold.

The starter's teacher labels split cloud into thick and thin by brightness (B02 >= 0.25, rule 3 of
:mod:`pipeline.training.pseudolabels`), but in the few real scenes here brightness and scene go together (a winter
scene's haze is thin, a small fully cloudy scene is thick), so a model can learn the scene instead of the
threshold. Scaling a chip's reflectance by a random gain -- as illumination, view geometry and cloud optical
thickness do -- and re-deriving thick/thin from the scaled B02 breaks that link.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.catalog.sensors import REFLECTANCE_DN
from pipeline.training.datasets.chips import TransformedChips
from pipeline.training.pseudolabels import THICK, THICK_BLUE, THIN


def brighten(dn: np.ndarray, labels: np.ndarray, gain: float, blue: int) -> tuple[np.ndarray, np.ndarray]:
    """``dn (C, y, x)`` times ``gain`` (nodata 0 stays 0, clipped to 65535) and ``labels (y, x)`` with every cloud
    pixel (thick or thin) re-split by the scaled band ``blue``: thick where it is >= 0.25 reflectance, else thin.
    Clear, shadow and ignore labels are kept."""
    out = np.clip(dn.astype(np.float32) * np.float32(gain), 0, 65535)
    lab = labels.copy()
    cloud = np.isin(labels, (THICK, THIN))
    lab[cloud] = np.where(out[blue][cloud] >= THICK_BLUE * REFLECTANCE_DN, THICK, THIN)
    return out, lab


class BrightenedChips(TransformedChips):
    """Chips of a chip dataset (items ``(dn (C, S, S) float32, labels (S, S) int64)``, bands in ``bands`` order)
    with a log-uniform random gain in ``gains`` each (see :func:`brighten`), reproducible per (seed, epoch,
    index) like the chips themselves."""

    stream = 3

    def __init__(self, chips, bands: tuple[str, ...], gains: tuple[float, float], seed: int = 42) -> None:
        super().__init__(chips, seed)
        self.blue, self.gains = tuple(bands).index("B02"), gains

    def transform(self, dn, labels, rng):
        gain = float(np.exp(rng.uniform(*np.log(self.gains))))
        out, lab = brighten(dn, np.asarray(labels), gain, self.blue)
        return torch.from_numpy(out), torch.from_numpy(lab.astype(np.int64))
