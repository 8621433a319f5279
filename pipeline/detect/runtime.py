"""What every detector shares in a worker process: its prediction record, counters, the one model thread, and
the process settings a forward pass needs (heap, thread count). numpy and the standard library only."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Prediction:
    """``classes (y, x) uint8`` with 255 for nodata; ``probabilities (class, y, x)`` (float32, or uint8 as stored)
    or None; ``counts``: ``(6,)`` int64 pixels of classes 0..3, of nodata and of the cloud the overcast check made
    (``pipeline.detect.overcast``), where the predictor counted them."""

    classes: np.ndarray
    probabilities: np.ndarray | None = None
    counts: np.ndarray | None = None


@dataclass
class PredictorStats:
    """Counters for efficiency figures: tiles run, empty tiles run to fill short batches (``filler``), tiles run
    again as the overcast check's far view (``far_views``, counted in ``tiles`` too), seconds inside the model's
    forward pass, and the wall-clock times (``time.time()``) the first forward began and the last one ended."""

    tiles: int = 0
    filler: int = 0
    far_views: int = 0
    forward_s: float = 0.0
    first_start: float = float("inf")
    last_end: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tiles: int, seconds: float, filler: int = 0, far: bool = False) -> None:
        end = time.time()
        with self.lock:
            self.tiles += tiles
            self.filler += filler
            self.far_views += tiles if far else 0
            self.forward_s += seconds
            self.first_start = min(self.first_start, end - seconds)
            self.last_end = max(self.last_end, end)

    def reset(self) -> None:
        with self.lock:
            self.tiles, self.filler, self.far_views, self.forward_s = 0, 0, 0, 0.0
            self.first_start, self.last_end = float("inf"), 0.0


_MODEL_THREAD = ThreadPoolExecutor(1, thread_name_prefix="cloudmask-model")


def on_model_thread(fn, *args):
    """Run ``fn(*args)`` on the process's one model thread and return its result.

    Models are built and run only there, one call at a time: a forward uses every torch thread (or the GPU)
    while the worker's own threads read, decode and blend the neighbouring blocks. Torch calls from several
    threads would each get an OpenMP team of their own; with more team threads than cores, OpenMP stops
    spinning between parallel regions and a forward took half as long again."""
    return submit_on_model_thread(fn, *args).result()


def submit_on_model_thread(fn, *args):
    """Queue ``fn(*args)`` on the process's one model thread; a ``concurrent.futures.Future`` of its result."""
    return _MODEL_THREAD.submit(fn, *args)


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
