"""SIMULATION for ``cloudmask benchmark scale``: W Dask workers, each with one simulated GPU.

``python -m flows.simulated_gpus SCHEDULER W THREADS READ_S FORWARD_S TAG`` starts W workers (named ``sim-gpu-TAG-i``) (``GPU=1`` resource, THREADS
threads each) that connect to SCHEDULER. Two stand-ins replace what needs real pixels and a real GPU; everything
else a block task does is the job's own (its task, the store write of the block's chunks, its counts):

- reading a block waits READ_S seconds (and the Sentinel-2 offset is the metadata's, its B10 check not read) (the measured CPU time of a block's read, spread over the worker's
  threads as on a GPU node's cores: a sleep, so this machine's two cores are left to the orchestration);
- the forward pass holds the worker's GPU for FORWARD_S seconds per block (one block at a time per GPU, as the
  model thread runs them) and returns one class per block, varying from block to block.

``BUSY`` records when the simulated GPUs were busy. Nothing here is used by ``cloudmask run``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import numpy as np


class Busy:
    """The simulated GPUs' busy intervals (``time.time()`` start and end of each forward pass) in this process."""

    def __init__(self) -> None:
        self.intervals, self._lock = [], threading.Lock()

    def add(self, start: float, end: float) -> None:
        with self._lock:
            self.intervals.append((start, end))

    def reset(self) -> None:
        with self._lock:
            self.intervals = []


BUSY = Busy()
READ_S = 0.0
WRITE_S = 0.0


def measured_write() -> float:
    """CPU seconds of writing one 2,016 px uint8 mask chunk into a Zarr array, as the job's blocks write theirs."""
    import tempfile

    import zarr

    with tempfile.TemporaryDirectory() as folder:
        array = zarr.create_array(
            f"{folder}/m.zarr", shape=(2, 4032, 4032), chunks=(1, 2016, 2016), dtype="uint8", fill_value=255
        ).with_config({"write_empty_chunks": True})
        block = np.full((2016, 2016), 2, np.uint8)
        array[0, :2016, :2016] = block  # warm
        start = time.process_time()
        for i in range(4):
            array[1, 2016 * (i // 2) : 2016 * (i // 2 + 1), 2016 * (i % 2) : 2016 * (i % 2 + 1)] = block
        return (time.process_time() - start) / 4


def simulated_write(self, t, block, classes, probabilities=None) -> None:
    """Stands in for ``pipeline.job.tasks.Writer.write``: waits WRITE_S."""
    time.sleep(WRITE_S)


def simulated_radiometry(properties, b10_href, access):
    """Stands in for ``pipeline.job.tasks.radiometry``: the metadata's decision, without reading B10."""
    from pipeline.read.radiometry import decide

    return decide(dict(properties))


def simulated_read(scene, rows, cols, needed, harmonisation, access=None):
    """Stands in for ``pipeline.read.bands.read_block``: waits READ_S, returns the block without pixels."""
    from pipeline.read.bands import NativeBlock

    time.sleep(READ_S)
    return NativeBlock([], rows, cols, needed)


class SimulatedGPU:
    """Stands in for ``pipeline.detect.infer.Predictor`` on one GPU: one block at a time, ``latency`` seconds each."""

    def __init__(self, weights, latency: float) -> None:
        from pipeline.detect.runtime import PredictorStats

        self.meta, self.latency, self.stats = weights.meta, latency, PredictorStats()
        self.gpu = threading.Lock()

    def predict_block(self, block, probabilities: bool = False):
        from pipeline.detect.runtime import Prediction

        (y0, y1), (x0, x1) = block.needed
        with self.gpu:
            start = time.time()
            time.sleep(self.latency)
            BUSY.add(start, time.time())
        self.stats.add(1, self.latency)
        value = (y0 // max(1, y1 - y0) + x0 // max(1, x1 - x0)) % 4
        counts = np.zeros(5, np.int64)
        counts[value] = (y1 - y0) * (x1 - x0)
        return Prediction(classes=np.full((y1 - y0, x1 - x0), value, np.uint8), counts=counts)


async def main(address: str, w: int, threads: int, read_s: float, forward_s: float, tag: str = "0") -> None:
    from distributed import Worker

    from flows import simulated_gpus  # this module as tasks import it (not __main__): one BUSY for both
    from pipeline.detect import detectors
    from pipeline.job import tasks

    simulated_gpus.READ_S = read_s
    simulated_gpus.WRITE_S = measured_write()
    print(f"a block's chunk write: {1000 * simulated_gpus.WRITE_S:.1f} ms of CPU here (waited for)", flush=True)
    tasks.read_block = simulated_gpus.simulated_read
    tasks.Writer.write = simulated_gpus.simulated_write
    tasks.radiometry = simulated_gpus.simulated_radiometry  # tasks are unpickled by name: they find the stand-in
    gpus: dict = {}  # one simulated GPU per worker: predictors are per process, so keyed by the running thread's worker

    def build(weights, spec=None):
        return simulated_gpus._PerWorker(weights, forward_s, gpus)

    detectors.build_predictor = build
    import dask

    dask.config.set({"distributed.worker.profile.interval": "100ms"})  # as every recipe in deploy/clusters sets it
    workers = [
        Worker(
            address,
            nthreads=threads,
            resources={"GPU": 1},
            name=f"sim-gpu-{tag}-{i}",
            host="127.0.0.1",
            dashboard=False,
            memory_limit=0,
        )
        for i in range(w)
    ]
    await asyncio.gather(*workers)
    await asyncio.gather(*(wk.finished() for wk in workers))


class _PerWorker:
    """The process's predictor (``pipeline.detect.detectors`` keeps one per process) dispatching to the simulated GPU of
    the worker whose thread calls it."""

    def __init__(self, weights, latency: float, gpus: dict) -> None:
        from pipeline.detect.runtime import PredictorStats

        self.weights, self.latency, self.gpus, self.stats = weights, latency, gpus, PredictorStats()
        self.meta = weights.meta
        self.lock = threading.Lock()

    def predict_block(self, block, probabilities: bool = False):
        from distributed import get_worker

        name = get_worker().name
        with self.lock:
            if name not in self.gpus:
                self.gpus[name] = SimulatedGPU(self.weights, self.latency)
            gpu = self.gpus[name]
        return gpu.predict_block(block, probabilities)


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1],
            int(sys.argv[2]),
            int(sys.argv[3]),
            float(sys.argv[4]),
            float(sys.argv[5]),
            sys.argv[6] if len(sys.argv) > 6 else "0",
        )
    )
