"""Segmentation metrics as in the paper: one confusion matrix over a whole split, then per-class scores."""

from __future__ import annotations

import numpy as np

from pipeline.catalog.sensors import MASK_NODATA


def confusion(truth: np.ndarray, pred: np.ndarray, classes: int = 4, ignore: int = MASK_NODATA) -> np.ndarray:
    """``(classes, classes)`` int64 counts, rows = truth, columns = prediction; pixels with truth == ``ignore``
    (or a prediction outside the classes, e.g. nodata) are left out."""
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    keep = (t != ignore) & (t < classes) & (p < classes)
    return np.bincount(t[keep] * classes + p[keep], minlength=classes * classes).reshape(classes, classes)


def scores(cm: np.ndarray) -> dict:
    """Per-class IoU, F1 and one-vs-rest accuracy, their means, and overall pixel accuracy (aAcc), in %."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    total = cm.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
        acc = (total - fp - fn) / total
        aacc = tp.sum() / total
    pct = lambda a: [round(float(v) * 100, 2) for v in a]  # noqa: E731
    return {
        "iou": pct(iou),
        "f1": pct(f1),
        "acc": pct(acc),
        "miou": round(float(np.nanmean(iou)) * 100, 2),
        "mf1": round(float(np.nanmean(f1)) * 100, 2),
        "aacc": round(float(aacc) * 100, 2),
        "pixels": int(total),
    }
