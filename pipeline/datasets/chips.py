"""Training chips: random ``size``-pixel crops of labelled scenes, reproducible per (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import torch



class RandomChips(torch.utils.data.Dataset):
    """``samples`` random crops per epoch from ``scenes`` = [(dn (C, y, x) uint16, labels (y, x) uint8)].

    Scene ``i`` is drawn with probability proportional to ``weights[i]`` (default: its area, at least one
    chip's worth). Scenes smaller than a chip are placed at a random offset in a zero (nodata) canvas with
    ignore labels, as small arrays are zero-padded at inference; with probability ``nodata_prob`` a strip
    of 20-70 % of any chip is zeroed (ignore labels) as at a swath edge, so that zeros are never evidence
    for a class. Each crop gets a random flip/rotation.
    Items are ``(dn (C, size, size) float32, labels (size, size) int64)``, the same for the same
    (seed, epoch, index), so a resumed run sees exactly the chips an uninterrupted one would.
    """

    def __init__(self, scenes, samples: int, size: int = 512, seed: int = 42, augment: bool = True,
                 weights=None, nodata_prob: float = 0.0) -> None:
        self.scenes = list(scenes)
        w = np.asarray(weights if weights is not None else [max(lab.size, size * size) for _, lab in self.scenes],
                       np.float64)
        self.p = w / w.sum()
        self.samples, self.size, self.seed, self.augment = samples, size, seed, augment
        self.nodata_prob = nodata_prob
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def _crop(self, rng, dn, lab):
        s = self.size
        h, w = lab.shape
        img = np.zeros((dn.shape[0], s, s), dn.dtype)
        tgt = np.full((s, s), 255, np.uint8)
        y0, x0 = rng.integers(0, max(h - s, 0) + 1), rng.integers(0, max(w - s, 0) + 1)  # source offset
        ch, cw = min(s, h), min(s, w)
        oy, ox = rng.integers(0, s - ch + 1), rng.integers(0, s - cw + 1)  # canvas offset (small scenes)
        img[:, oy:oy + ch, ox:ox + cw] = dn[:, y0:y0 + ch, x0:x0 + cw]
        tgt[oy:oy + ch, ox:ox + cw] = lab[y0:y0 + ch, x0:x0 + cw]
        return img, tgt

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        dn, lab = self.scenes[rng.choice(len(self.scenes), p=self.p)]
        img, tgt = self._crop(rng, dn, lab)
        if rng.random() < self.nodata_prob:  # a swath edge: zeros with ignore labels, so zeros mean nothing
            cut = int(rng.integers(self.size // 5, self.size * 7 // 10))
            img[:, :cut], tgt[:cut] = 0, 255  # rotated below, so any side
        if self.augment:
            k = int(rng.integers(0, 4))
            img, tgt = np.rot90(img, k, axes=(1, 2)), np.rot90(tgt, k)
            if rng.random() < 0.5:
                img, tgt = img[:, :, ::-1], tgt[:, ::-1]
        return (torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(tgt).astype(np.int64)))


class FixedChips(torch.utils.data.Dataset):
    """Items of a (lazy) sequence ``[(dn (C, y, x), labels (y, x))]`` as tensors, unchanged."""

    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        dn, lab = self.items[index]
        return (torch.from_numpy(np.ascontiguousarray(dn, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64)))
