"""SIMULATION for ``cloudmask benchmark scale``: W Dask workers in one process, each with one simulated GPU.

``python -m flows.simulated_gpus SCHEDULER W LATENCY`` starts W workers (``GPU=1`` resource, two threads each: one reads while the other holds the GPU)
that connect to SCHEDULER. Their model is a stand-in: each block's prediction holds the worker's GPU slot for
LATENCY seconds (a sleep: no CPU used, as a GPU's forward pass leaves the CPU free) and returns classes that vary
over the block, so the rest of the job (reads, graph, writes, statistics, manifest) is the real one. ``BUSY``
counts the simulated GPU seconds. Nothing here is used by ``cloudmask run``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import numpy as np


class Busy:
    def __init__(self) -> None:
        self.seconds, self._lock = 0.0, threading.Lock()

    def add(self, s: float) -> None:
        with self._lock:
            self.seconds += s

    def reset(self) -> None:
        with self._lock:
            self.seconds = 0.0


BUSY = Busy()


class SimulatedPredictor:
    """Stands in for ``pipeline.infer.Predictor``: same ``predict`` signature, a fixed latency per block."""

    def __init__(self, weights, latency: float) -> None:
        from pipeline.runtime import PredictorStats

        self.meta, self.latency, self.stats = weights.meta, latency, PredictorStats()

    def predict(self, image, *, offset=(0, 0), needed=None, probabilities=False, mask_nodata=True):
        from pipeline.runtime import Prediction

        start = time.perf_counter()
        time.sleep(self.latency)
        _, h, w = image.shape
        classes = ((np.arange(h)[:, None] + np.arange(w)[None, :] + sum(offset)) % 4).astype(np.uint8)
        BUSY.add(time.perf_counter() - start)
        self.stats.add(1, time.perf_counter() - start)
        return Prediction(classes=classes)


async def main(address: str, w: int, latency: float) -> None:
    from distributed import Worker

    from pipeline import detectors

    from flows import simulated_gpus  # this module as tasks import it (not __main__): one BUSY for both

    detectors.build_predictor = lambda weights, spec=None: simulated_gpus.SimulatedPredictor(weights, latency)
    workers = [Worker(address, nthreads=2, resources={"GPU": 1}, name=f"sim-gpu-{i}", host="127.0.0.1",
                      dashboard=False, memory_limit=0) for i in range(w)]
    await asyncio.gather(*workers)
    await asyncio.gather(*(wk.finished() for wk in workers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
