"""Training chips: random ``size``-pixel crops of labelled scenes, reproducible per (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import torch


class RandomChips(torch.utils.data.Dataset):
    """``samples`` random crops per epoch from ``scenes`` = [(dn (C, y, x) uint16, labels (y, x) uint8)].

    Scene ``i`` is drawn with probability proportional to ``weights[i]`` (default: its area, at least one
    chip's worth). With probability ``class_prob`` a chip is instead centred on a random pixel of a class
    drawn uniformly from ``focus_classes`` (among those labelled anywhere), so rare classes (clouds and
    shadows in a mostly clear archive) are seen as often as common ones. Scenes smaller than a chip are placed at a random offset in a zero (nodata) canvas with
    ignore labels, as small arrays are zero-padded at inference; with probability ``nodata_prob`` a strip
    of 20-70 % of any chip is zeroed (ignore labels) as at a swath edge, so that zeros are never evidence
    for a class. Each crop gets a random flip/rotation.
    Items are ``(dn (C, size, size) float32, labels (size, size) int64)``, the same for the same
    (seed, epoch, index), so a resumed run sees exactly the chips an uninterrupted one would.
    """

    def __init__(
        self,
        scenes,
        samples: int,
        size: int = 512,
        seed: int = 42,
        augment: bool = True,
        weights=None,
        nodata_prob: float = 0.0,
        class_prob: float = 0.0,
        focus_classes: tuple[int, ...] = (1, 2, 3),
    ) -> None:
        self.scenes = list(scenes)
        self.class_prob = class_prob
        # per class: [(scene index, flat pixel indices of that class)]
        self.where = {
            c: [(i, np.flatnonzero(lab == c)) for i, (_, lab) in enumerate(self.scenes)] for c in focus_classes
        }
        self.where = {c: [(i, px) for i, px in v if px.size] for c, v in self.where.items()}
        self.where = {c: v for c, v in self.where.items() if v}
        w = np.asarray(
            weights if weights is not None else [max(lab.size, size * size) for _, lab in self.scenes], np.float64
        )
        self.p = w / w.sum()
        self.samples, self.size, self.seed, self.augment = samples, size, seed, augment
        self.nodata_prob = nodata_prob
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def _centred(self, rng):
        """Scene index and source offset of a chip centred on a random pixel of a random focus class."""
        c = list(self.where)[int(rng.integers(len(self.where)))]
        counts = np.array([px.size for _, px in self.where[c]], np.float64)
        i, px = self.where[c][rng.choice(len(counts), p=counts / counts.sum())]
        h, w = self.scenes[i][1].shape
        cy, cx = divmod(int(px[rng.integers(px.size)]), w)
        s = self.size
        return i, int(np.clip(cy - s // 2, 0, max(h - s, 0))), int(np.clip(cx - s // 2, 0, max(w - s, 0)))

    def _crop(self, rng, dn, lab, at=None):
        s = self.size
        h, w = lab.shape
        img = np.zeros((dn.shape[0], s, s), dn.dtype)
        tgt = np.full((s, s), 255, np.uint8)
        y0, x0 = at or (rng.integers(0, max(h - s, 0) + 1), rng.integers(0, max(w - s, 0) + 1))  # source offset
        ch, cw = min(s, h), min(s, w)
        oy, ox = rng.integers(0, s - ch + 1), rng.integers(0, s - cw + 1)  # canvas offset (small scenes)
        img[:, oy : oy + ch, ox : ox + cw] = dn[:, y0 : y0 + ch, x0 : x0 + cw]
        tgt[oy : oy + ch, ox : ox + cw] = lab[y0 : y0 + ch, x0 : x0 + cw]
        return img, tgt

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.class_prob and self.where and rng.random() < self.class_prob:
            i, y0, x0 = self._centred(rng)
            img, tgt = self._crop(rng, *self.scenes[i], at=(y0, x0))
        else:
            img, tgt = self._crop(rng, *self.scenes[rng.choice(len(self.scenes), p=self.p)])
        if rng.random() < self.nodata_prob:  # a swath edge: zeros with ignore labels, so zeros mean nothing
            cut = int(rng.integers(self.size // 5, self.size * 7 // 10))
            img[:, :cut], tgt[:cut] = 0, 255  # rotated below, so any side
        if self.augment:
            k = int(rng.integers(0, 4))
            img, tgt = np.rot90(img, k, axes=(1, 2)), np.rot90(tgt, k)
            if rng.random() < 0.5:
                img, tgt = img[:, :, ::-1], tgt[:, ::-1]
        return (
            torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(tgt).astype(np.int64)),
        )


class FixedChips(torch.utils.data.Dataset):
    """Items of a (lazy) sequence ``[(dn (C, y, x), labels (y, x))]`` as tensors, unchanged."""

    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        dn, lab = self.items[index]
        return (
            torch.from_numpy(np.ascontiguousarray(dn, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64)),
        )


class MixedChips(torch.utils.data.Dataset):
    """Items of ``main`` where, for a share ``share`` of the indices (drawn per (seed, epoch, index), so a resumed
    run sees the same mix), the item of the same index of ``extra`` comes instead, with the pixels that the main
    chip labels as one of the ``paste`` classes pasted over it (pixels and labels: e.g. clouds and their shadows
    over other land, so that ``extra``'s kind of chip is not always cloudless). Both are chip datasets of equal
    length with items ``(dn (C, S, S) float32, labels (S, S) int64)`` and optionally ``set_epoch``. ``overlay``
    (e.g. ``translucent.TranslucentOverlay``), when given, does the pasting instead: ``overlay(main_dn, main_labels,
    extra_dn, extra_labels, rng) -> (dn, labels)``, ``rng`` drawn per (seed, epoch, index) too."""

    stream = 5  # apart from the draws of TransformedChips' streams

    def __init__(self, main, extra, share: float, seed: int = 42, paste: tuple[int, ...] = (), overlay=None) -> None:
        if len(main) != len(extra):
            raise ValueError(f"main has {len(main)} chips an epoch, extra {len(extra)}; expected equal lengths")
        self.main, self.extra, self.share, self.seed, self.epoch = main, extra, share, seed, 0
        self.paste, self.overlay = tuple(paste), overlay

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for chips in (self.main, self.extra):
            if hasattr(chips, "set_epoch"):
                chips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.main)

    def from_extra(self, index: int) -> bool:
        return bool(np.random.default_rng([self.seed, self.epoch, index, self.stream]).random() < self.share)

    def __getitem__(self, index: int):
        if not self.from_extra(index):
            return self.main[index]
        dn, labels = self.extra[index]
        if self.overlay is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index, self.stream, 1])
            return self.overlay(*self.main[index], dn, labels, rng)
        if self.paste:
            main_dn, main_labels = self.main[index]
            where = torch.from_numpy(np.isin(main_labels.numpy(), self.paste))
            dn, labels = torch.where(where, main_dn, dn), torch.where(where, main_labels, labels)
        return dn, labels


class TransformedChips(torch.utils.data.Dataset):
    """Base of chip datasets that change each chip of another (``chips``: items ``(dn (C, S, S), labels (S, S))``,
    optionally with ``set_epoch``) by a random draw reproducible per (seed, epoch, index, ``stream``), like the
    chips themselves; subclasses define ``transform(dn, labels, rng) -> (dn tensor, labels tensor)``."""

    stream = 0  # keeps the draws of different transforms of one chip apart

    def __init__(self, chips, seed: int = 42) -> None:
        self.chips, self.seed, self.epoch = chips, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.chips, "set_epoch"):
            self.chips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int):
        dn, labels = self.chips[index]
        return self.transform(
            np.asarray(dn), labels, np.random.default_rng([self.seed, self.epoch, index, self.stream])
        )

    def transform(self, dn: np.ndarray, labels, rng):
        raise NotImplementedError
