"""Tiled MSCloudCAM prediction on one in-memory block: normalise, tile, batch, blend, argmax.

The model is built once per process and weights file (``get_predictor`` caches it), so Dask workers
reuse it across tasks instead of receiving it inside every task.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import InferSpec
from .errors import ConfigError, InputError
from .model.weights import Weights, cached_weights, default_weights
from .sensors import MASK_NODATA
from .tiles import Blender, TileGrid, read_tile


@dataclass
class Prediction:
    """``classes (y, x) uint8`` with 255 for nodata; ``probabilities (class, y, x) float32`` or None."""

    classes: np.ndarray
    probabilities: np.ndarray | None = None


@dataclass
class PredictorStats:
    """Counters for efficiency figures: tiles run and seconds inside the model's forward pass."""

    tiles: int = 0
    forward_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tiles: int, seconds: float) -> None:
        with self.lock:
            self.tiles += tiles
            self.forward_s += seconds


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device={device!r} was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Predictor:
    """A model on a device with its weights' contract, predicting class maps for arrays of any size."""

    def __init__(self, weights: Weights, spec: InferSpec = InferSpec(), model: torch.nn.Module | None = None) -> None:
        """``model``: an already built model to use instead of building one from ``weights.state``."""
        self.meta = weights.meta
        self.sha256 = weights.sha256
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.dtype = resolve_precision(spec.precision, self.device)
        tile = self.meta.tile_size
        if spec.tile not in (None, tile):
            raise ConfigError(f"tile={spec.tile} but these weights were built for {tile}x{tile} tiles; omit --tile")
        if 2 * spec.overlap >= tile:
            raise ConfigError(f"overlap={spec.overlap} must be less than half the tile size {tile}")
        self.grid = TileGrid(tile=tile, overlap=spec.overlap)
        self.divisor = float(self.meta.normalisation["divisor"])
        self.channels_last = self.device.type == "cuda"
        self.batch_size = spec.batch_size or (8 if self.device.type == "cuda" else 1)
        model = (model if model is not None else weights.build_model()).eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.stats = PredictorStats()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward_probs(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``(N, K, T, T)`` float32 for a batch of normalised tiles ``(N, C, T, T)``."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            probs = torch.softmax(self.model(x).float(), dim=1).cpu().numpy()
        self.stats.add(len(batch), time.perf_counter() - start)
        return probs

    def predict(self, image: np.ndarray, *, offset: tuple[int, int] = (0, 0),
                needed: tuple[slice, slice] | None = None, probabilities: bool = False,
                mask_nodata: bool = True) -> Prediction:
        """Predict classes for ``image (band, y, x)`` (integer DN or float, band order of the weights).

        ``offset``: global pixel position of ``image[:, 0, 0]`` on the scene grid the tiles are anchored to.
        ``needed``: the local window whose pixels must be right (default: all); tiles that do not touch it
        are skipped, and pixels outside it may differ from a whole-scene prediction.
        Pixels that are 0 (or NaN) in every band are nodata: class 255, probabilities NaN -- unless
        ``mask_nodata=False`` (the paper's evaluation protocol, which scores zero padding too).
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[0] != len(self.meta.bands):
            raise InputError(
                f"image has shape {image.shape}; expected (band, y, x) with {len(self.meta.bands)} bands "
                f"in the weights' order {list(self.meta.bands)}"
            )
        _, h, w = image.shape
        ys, xs = needed or (slice(0, h), slice(0, w))
        ys, xs = slice(*ys.indices(h)[:2]), slice(*xs.indices(w)[:2])
        gy, gx = offset
        origins = self.grid.origins((gy + ys.start, gy + ys.stop), (gx + xs.start, gx + xs.stop))
        data = image.astype(np.float32) / self.divisor
        nodata = np.all((image == 0) | np.isnan(data), axis=0) if mask_nodata else np.zeros((h, w), bool)
        np.nan_to_num(data, copy=False)
        blender = Blender(len(self.meta.classes), (h, w), offset, self.grid)
        bs = self.batch_size
        for i in range(0, len(origins), bs):
            chunk = origins[i:i + bs]
            batch = np.stack([read_tile(data, offset, o, self.grid.tile) for o in chunk])
            for probs, origin in zip(self.forward_probs(batch), chunk):
                blender.add(probs, origin)
        probs = blender.result()
        codes = np.asarray(self.meta.class_codes, dtype=np.uint8)
        classes = codes[np.nan_to_num(probs, nan=-1.0).argmax(axis=0)]
        classes[nodata] = MASK_NODATA
        probs[:, nodata] = np.nan
        outside = np.ones((h, w), dtype=bool)
        outside[ys, xs] = False
        classes[outside & ~np.isfinite(probs[0])] = MASK_NODATA
        return Prediction(classes=classes, probabilities=probs if probabilities else None)


_CACHE: dict[tuple, Predictor] = {}
_CACHE_LOCK = threading.Lock()


def get_predictor(weights: str | Path | Weights | None = None, spec: InferSpec = InferSpec()) -> Predictor:
    """The process's predictor for these weights (default: the shipped starter weights) and settings, built
    on first use and reused after."""
    if weights is None:
        weights = default_weights()
    if not isinstance(weights, Weights):
        weights = cached_weights(weights)
    key = (weights.sha256, spec)
    with _CACHE_LOCK:
        if key not in _CACHE:
            from .peers import PEER_MODELS, PeerPredictor

            _CACHE[key] = PeerPredictor(weights) if weights.meta.model in PEER_MODELS else Predictor(weights, spec)
        return _CACHE[key]


def predict(image: np.ndarray, weights: str | Path | Weights | None = None, spec: InferSpec = InferSpec(),
            **kwargs) -> Prediction:
    """Convenience: ``get_predictor(weights, spec).predict(image, **kwargs)``."""
    return get_predictor(weights, spec).predict(image, **kwargs)


def release_gpu_memory() -> int:
    """Return PyTorch's cached CUDA memory to the driver (the model stays loaded); bytes still reserved."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved()
