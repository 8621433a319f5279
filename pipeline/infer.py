"""Tiled MSCloudCAM prediction on one in-memory block: normalise, tile, batch, blend, argmax.

The model is built once per process and weights file (``pipeline.detectors.get_predictor`` caches it), so
Dask workers reuse it across tasks instead of receiving it inside every task.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import torch

from .config import InferSpec
from .errors import ConfigError, InputError
from .model.weights import Weights
from .runtime import (Prediction, PredictorStats, dask_worker_threads, heap_for_activations, on_model_thread,
                      submit_on_model_thread)
from .sensors import MASK_NODATA
from .tiles import Blender, TileGrid, read_tile


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device={device!r} was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes (non-x86 builds): stay with fp32
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 autocast on CUDA (fp16 where bf16 is unsupported) and on CPUs with native bf16; fp32 on
    other CPUs. On CPU, bf16 was measured twice as fast as fp32 with 99.9 % of pixels in the same class on the
    real scenes (``cloudmask benchmark precision`` repeats the check for any weights)."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return PRECISION_DTYPES[precision]


PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(dtype: torch.dtype) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a dtype ``resolve_precision`` returns."""
    return next(name for name, d in PRECISION_DTYPES.items() if d == dtype)


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
        overlap = spec.overlap_for(tile)
        if 2 * overlap >= tile:
            raise ConfigError(f"overlap={overlap} must be less than half the tile size {tile}")
        self.grid = TileGrid(tile=tile, overlap=overlap)
        self.divisor = float(self.meta.normalisation["divisor"])
        # CPU: batch 2 ran 20 % faster per tile than batch 1 on 256 px tiles and tied on 512 px ones; short
        # batches are filled up to this size (see predict), so small tiles stop at 4
        self.batch_size = spec.batch_size or (8 if self.device.type == "cuda" else min(4, max(1, 2 * 256 ** 2 // tile ** 2)))
        if self.device.type == "cpu":
            threads = spec.threads or dask_worker_threads()
            if threads:  # on the thread that runs the model: OpenMP keeps the thread count per calling thread
                on_model_thread(torch.set_num_threads, threads)
        heap_for_activations()
        self.model = on_model_thread(self._build, weights, model)
        self.stats = PredictorStats()
        self._active, self._active_lock = 0, threading.Lock()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def submit_forward(self, batch: np.ndarray, tiles: int | None = None):
        """Softmax probabilities ``(N, K, T, T)`` float32 of normalised tiles ``batch (N, C, T, T)``, queued on the
        model thread: a ``concurrent.futures.Future`` of them."""
        return submit_on_model_thread(self._forward, batch, len(batch) if tiles is None else tiles)

    def _build(self, weights: Weights, model: torch.nn.Module | None) -> torch.nn.Module:
        if model is not None:  # a model being trained: used as it is (inputs still go channels_last)
            return model.eval().to(self.device)
        # channels_last measured faster on CPU too: `cloudmask benchmark model --variants default,contiguous`
        # (bf16 180 vs 218 ms, fp32 418 vs 455 ms per 512 px tile)
        return weights.build_model().eval().to(self.device).to(memory_format=torch.channels_last)

    def _forward(self, batch: np.ndarray, tiles: int) -> np.ndarray:
        """``tiles``: how many of the batch are real tiles (the rest fill a short batch up)."""
        start = time.perf_counter()
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            probs = torch.softmax(self.model(x).float(), dim=1).cpu().numpy()
        self.stats.add(tiles, time.perf_counter() - start, filler=len(x) - tiles)
        return probs

    def predict(self, image: np.ndarray, **kwargs) -> Prediction:
        """``_predict`` (below); on a GPU, the last prediction running in the process hands PyTorch's cached
        memory back to the driver when it ends (on the worker that used it, not by a broadcast from the client)."""
        with self._active_lock:
            self._active += 1
        try:
            return self._predict(image, **kwargs)
        finally:
            with self._active_lock:
                self._active -= 1
                idle = self._active == 0
            if idle and self.device.type == "cuda":
                submit_on_model_thread(release_gpu_memory)

    def _predict(self, image: np.ndarray, *, offset: tuple[int, int] = (0, 0),
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
        blender = Blender(len(self.meta.classes), (h, w), offset, self.grid)
        bs = self.batch_size
        chunks = [origins[i:i + bs] for i in range(0, len(origins), bs)]

        def batch(k: int) -> np.ndarray:
            """Tiles ``(bs, C, T, T)`` float32, normalised per tile (the block is never copied as float). A short
            last batch is filled up with empty tiles: kernels chosen per batch size round differently, and a
            tile's classes must not depend on how many tiles its block had (chunking invariance)."""
            tiles = np.zeros((bs, len(self.meta.bands), self.grid.tile, self.grid.tile), np.float32)
            for n, o in enumerate(chunks[k]):
                tiles[n] = read_tile(image, offset, o, self.grid.tile)
            tiles /= self.divisor
            return np.nan_to_num(tiles, copy=False)

        # Double-buffered: the model starts on the first batch at once; the next batch is cut and the last
        # one blended while it runs.
        running = self.submit_forward(batch(0), len(chunks[0])) if chunks else None
        if not mask_nodata:
            nodata = np.zeros((h, w), bool)
        elif np.issubdtype(image.dtype, np.floating):
            nodata = np.all((image == 0) | np.isnan(image), axis=0)
        else:
            nodata = ~image.any(axis=0)
        for k in range(len(chunks)):
            upcoming = batch(k + 1) if k + 1 < len(chunks) else None
            done = running.result()
            if upcoming is not None:
                running = self.submit_forward(upcoming, len(chunks[k + 1]))
            for probs, origin in zip(done, chunks[k]):
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


def release_gpu_memory() -> int:
    """Return PyTorch's cached CUDA memory to the driver (the model stays loaded); bytes still reserved."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved()
