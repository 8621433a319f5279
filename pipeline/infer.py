"""Tiled MSCloudCAM prediction on one in-memory block: normalise, tile, batch, blend, argmax.

The model is built once per process and weights file (``get_predictor`` caches it), so Dask workers
reuse it across tasks instead of receiving it inside every task.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
    """Counters for efficiency figures: tiles run, seconds inside the model's forward pass, and the wall-clock
    times (``time.time()``) the first forward began and the last one ended."""

    tiles: int = 0
    forward_s: float = 0.0
    first_start: float = float("inf")
    last_end: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tiles: int, seconds: float) -> None:
        end = time.time()
        with self.lock:
            self.tiles += tiles
            self.forward_s += seconds
            self.first_start = min(self.first_start, end - seconds)
            self.last_end = max(self.last_end, end)

    def reset(self) -> None:
        with self.lock:
            self.tiles, self.forward_s, self.first_start, self.last_end = 0, 0.0, float("inf"), 0.0


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
        # CPU: batch 2 ran 20 % faster per tile than batch 1 on 256 px tiles and tied on 512 px ones
        self.batch_size = spec.batch_size or (8 if self.device.type == "cuda" else max(1, 2 * 256 ** 2 // tile ** 2))
        if self.device.type == "cpu":
            threads = spec.threads or dask_worker_threads()
            if threads:  # on the thread that runs the model: OpenMP keeps the thread count per calling thread
                on_model_thread(torch.set_num_threads, threads)
        heap_for_activations()
        self.model = on_model_thread(self._build, weights, model)
        self.stats = PredictorStats()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def submit_forward(self, batch: np.ndarray):
        """Softmax probabilities ``(N, K, T, T)`` float32 of normalised tiles ``batch (N, C, T, T)``, queued on the
        model thread: a ``concurrent.futures.Future`` of them."""
        return _MODEL_THREAD.submit(self._forward, batch)

    def _build(self, weights: Weights, model: torch.nn.Module | None) -> torch.nn.Module:
        if model is not None:  # a model being trained: used as it is (inputs still go channels_last)
            return model.eval().to(self.device)
        # channels_last measured faster on CPU too: `cloudmask benchmark model --variants default,contiguous`
        # (bf16 180 vs 218 ms, fp32 418 vs 455 ms per 512 px tile)
        return weights.build_model().eval().to(self.device).to(memory_format=torch.channels_last)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            probs = torch.softmax(self.model(x).float(), dim=1).cpu().numpy()
        self.stats.add(len(x), time.perf_counter() - start)
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
        blender = Blender(len(self.meta.classes), (h, w), offset, self.grid)
        bs = self.batch_size
        chunks = [origins[i:i + bs] for i in range(0, len(origins), bs)]

        def batch(k: int) -> np.ndarray:
            """Tiles ``(N, C, T, T)`` float32, normalised per tile (the block is never copied as float)."""
            tiles = np.stack([read_tile(image, offset, o, self.grid.tile) for o in chunks[k]]).astype(np.float32)
            tiles /= self.divisor
            return np.nan_to_num(tiles, copy=False)

        # Double-buffered: the model starts on the first batch at once; the next batch is cut and the last
        # one blended while it runs.
        running = self.submit_forward(batch(0)) if chunks else None
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
                running = self.submit_forward(upcoming)
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


_CACHE: dict[tuple, Predictor] = {}
_CACHE_LOCK = threading.Lock()
_MODEL_THREAD = ThreadPoolExecutor(1, thread_name_prefix="cloudmask-model")


def on_model_thread(fn, *args):
    """Run ``fn(*args)`` on the process's one model thread and return its result.

    Models are built and run only there, one call at a time: a forward uses every torch thread (or the GPU)
    while the worker's own threads read, decode and blend the neighbouring blocks. Torch calls from several
    threads would each get an OpenMP team of their own; with more team threads than cores, OpenMP stops
    spinning between parallel regions and a forward took half as long again."""
    return _MODEL_THREAD.submit(fn, *args).result()


HEAP_MMAP_THRESHOLD = 32 << 20
HEAP_TRIM_THRESHOLD = 256 << 20


def heap_for_activations() -> bool:
    """Serve allocations under 32 MiB from glibc's heap (True where set; False off glibc).

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's mmap threshold at
    128 KiB: every activation of a forward pass is then mmapped and zero-filled anew, and a forward took three
    times as long in a worker (170 vs 56 ms per 256 px tile, bf16, 2 threads). Larger blocks (image chunks)
    are still mmapped and handed back to the system when freed, so memory does not grow scene by scene."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        # -3: M_MMAP_THRESHOLD; -1: M_TRIM_THRESHOLD (threads other than the main one allocate from their own
        # arenas, which glibc shrinks, and later refaults, whenever more than the trim threshold is free)
        return bool(libc.mallopt(-3, HEAP_MMAP_THRESHOLD) and libc.mallopt(-1, HEAP_TRIM_THRESHOLD))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to do
        return False


def dask_worker_threads() -> int | None:
    """Threads of the Dask worker running this code (None outside one). Dask starts workers with
    OMP_NUM_THREADS=1, so without this a worker's torch would use one core whatever its thread count."""
    try:
        from distributed.worker import Worker
    except ImportError:
        return None
    workers = list(Worker._instances)  # get_worker() works only inside tasks, not in Client.run calls
    return workers[0].state.nthreads if len(workers) == 1 else None


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


def predictor_stats() -> dict:
    """This process's model counters over its cached predictors: ``tiles`` run, ``forward_s`` and the span
    ``first_start``..``last_end`` (``time.time()``) of its forward passes."""
    with _CACHE_LOCK:
        stats = [p.stats for p in _CACHE.values()]
    return {"tiles": sum(s.tiles for s in stats), "forward_s": sum(s.forward_s for s in stats),
            "first_start": min((s.first_start for s in stats), default=float("inf")),
            "last_end": max((s.last_end for s in stats), default=0.0)}


def reset_predictor_stats() -> None:
    with _CACHE_LOCK:
        for p in _CACHE.values():
            p.stats.reset()


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
