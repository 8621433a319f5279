"""MSCloudCAM on blocks of a scene: tiles cut on the scene's global grid, batched across blocks, blended, argmax.

One model per process and weights file (``pipeline.detect.detectors.get_predictor`` caches it), run by the process's one
model thread (``pipeline.detect.runtime``). Callers (Dask tasks, the Python API) queue *blocks*; the model thread brings
each block onto the model's device (its bands upsampled there from their native resolution, ``pipeline.read.upsample``),
cuts its tiles and fills every forward pass with the next ``batch_size`` tiles of whichever blocks are queued
(empty tiles only when nothing else waits). Batches are always full, so a tile's result never depends on its
neighbours in the batch or on how its scene was cut into blocks. Softmax, blending and argmax stay on the device;
only uint8 classes (and probabilities when asked) come back. A full tile its own view calls partly cloud is looked
at again from afar (``pipeline.detect.overcast``): those tiles wait for a full batch of far views (or for nothing
else to be queued, when the last far batch runs padded) before they blend.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.catalog.sensors import MASK_NODATA, PROBABILITY_SCALE
from pipeline.config import InferSpec
from pipeline.detect import overcast
from pipeline.detect.runtime import (
    Prediction,
    PredictorStats,
    dask_worker_threads,
    heap_for_activations,
    on_model_thread,
    submit_on_model_thread,
)
from pipeline.detect.weights import Weights
from pipeline.errors import ConfigError, InputError
from pipeline.read.bands import NativeBlock, assemble


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


@dataclass(eq=False)
class _Job:
    """One block queued for the model: how to bring it onto the device, its tiles and its canvas."""

    prepare: object  # () -> (image (C, H, W) on the device, valid (H, W) bool), on the model thread
    offset: tuple[int, int]  # scene position of image[:, 0, 0]
    shape: tuple[int, int]  # the image's (H, W)
    needed: tuple[slice, slice]  # local window whose classes are wanted
    origins: list
    probabilities: str | None  # None, "float" (float32 out) or "scaled" (uint8 p x 250 out)
    mask_nodata: bool
    future: Future = field(default_factory=Future)
    image: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    acc: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    far: torch.Tensor | None = None  # (y, x) blend weight of the tiles' pixels the overcast check made cloud
    queued: int = 0  # tiles put into batches so far
    blended: int = 0


class Predictor:
    """A model on a device with its weights' contract, predicting class maps for blocks and arrays of any size."""

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
        self.grid = spec.tiles(tile)
        self.divisor = float(self.meta.normalisation["divisor"])
        # CPU: batch 2 ran 20 % faster per tile than batch 1 on 256 px tiles and tied on 512 px ones
        self.batch_size = spec.batch_size or (
            8 if self.device.type == "cuda" else min(4, max(1, 2 * 256**2 // tile**2))
        )
        if self.device.type == "cpu":
            threads = spec.threads or dask_worker_threads()
            if threads:  # on the thread that runs the model: OpenMP keeps the thread count per calling thread
                on_model_thread(torch.set_num_threads, threads)
        heap_for_activations()
        self.model = on_model_thread(self._build, weights, model)
        self.window = on_model_thread(lambda: torch.from_numpy(self.grid.window()).to(self.device))
        self.codes = on_model_thread(lambda: torch.tensor(self.meta.class_codes, dtype=torch.uint8, device=self.device))
        self.stats = PredictorStats()
        self._queue: collections.deque[_Job] = collections.deque()
        classes = self.meta.classes
        self._clear = classes.index("clear") if "clear" in classes else None
        self._cloud = [classes.index(c) for c in ("thick_cloud", "thin_cloud") if c in classes]
        self._checked = (  # the overcast check's bands (B03, B11); None: the check is off
            tuple(self.meta.bands.index(b) for b in overcast.BANDS)
            if overcast.overcast_check_runs(self.meta, spec.no_overcast_check)
            else None
        )
        self._far: list[tuple[_Job, tuple[int, int], torch.Tensor, torch.Tensor]] = []  # (job, origin, own, tile)
        self._lock = threading.RLock()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _build(self, weights: Weights, model: torch.nn.Module | None) -> torch.nn.Module:
        if model is not None:  # a model being trained: used as it is (inputs still go channels_last)
            return model.eval().to(self.device)
        # channels_last measured faster on CPU too: `cloudmask benchmark model --variants default,contiguous`
        return weights.build_model().eval().to(self.device).to(memory_format=torch.channels_last)

    # -- what callers use ----------------------------------------------------------------------------------
    def predict(
        self,
        image: np.ndarray,
        *,
        offset: tuple[int, int] = (0, 0),
        needed: tuple[slice, slice] | None = None,
        probabilities: bool = False,
        mask_nodata: bool = True,
    ) -> Prediction:
        """Classes of ``image (band, y, x)`` (integer DN or float, in the weights' band order, on the model's grid).

        ``offset``: global pixel position of ``image[:, 0, 0]`` on the scene grid the tiles are anchored to.
        ``needed``: the local window whose pixels are wanted (default: all); only tiles touching it run, and the
        pixels outside it are 255 (probabilities NaN). A pixel that is 0 (or NaN) in any band is nodata: class 255,
        probabilities NaN -- unless ``mask_nodata=False`` (the paper's evaluation protocol, which scores zero
        padding too). Returns classes ``(y, x)`` uint8 and, with ``probabilities``, ``(class, y, x)`` float32.
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
        host = self._host(image)
        prepare = lambda: self._image_on_device(host)  # noqa: E731
        return self._run(prepare, offset, (h, w), (ys, xs), "float" if probabilities else None, mask_nodata)

    def predict_block(self, block: NativeBlock, probabilities: bool = False) -> Prediction:
        """Classes ``(y, x)`` uint8 of a block's interior (``block.needed``), its bands upsampled on the device;
        with ``probabilities``, ``(class, y, x)`` uint8 as stored (p x 250, 255 for nodata)."""
        if len(block.bands) != len(self.meta.bands):
            raise InputError(f"block has {len(block.bands)} bands; the weights take {len(self.meta.bands)}")
        (r0, r1), (c0, c1) = block.rows, block.cols
        (y0, y1), (x0, x1) = block.needed
        host = [self._host(b.data) for b in block.bands]
        prepare = lambda: assemble(block, self.device, host)  # noqa: E731
        pred = self._run(
            prepare,
            (r0, c0),
            (r1 - r0, c1 - c0),
            (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0)),
            "scaled" if probabilities else None,
            True,
        )
        inner = (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))
        return Prediction(
            pred.classes[inner],
            None if pred.probabilities is None else pred.probabilities[(slice(None), *inner)],
            pred.counts,
        )

    # -- the queue ------------------------------------------------------------------------------------------
    def _run(self, prepare, offset, shape, needed, probabilities, mask_nodata) -> Prediction:
        ys, xs = needed
        gy, gx = offset
        origins = self.grid.origins((gy + ys.start, gy + ys.stop), (gx + xs.start, gx + xs.stop))
        job = _Job(prepare, offset, shape, needed, origins, probabilities, mask_nodata)
        with self._lock:
            self._queue.append(job)
        submit_on_model_thread(self._pump)
        return job.future.result()

    def _host(self, array: np.ndarray) -> torch.Tensor:
        """``array`` as a host tensor ready to go to the device (pinned for CUDA, so the copy runs asynchronously)."""
        if array.dtype == np.uint16:
            array = array.astype(np.int32)  # torch's uint16 has few kernels; DN fit in int32 exactly
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.pin_memory() if self.device.type == "cuda" else t

    def _image_on_device(self, host: torch.Tensor):
        image = host.to(self.device, non_blocking=True)
        if image.is_floating_point():
            valid = ~((image == 0) | torch.isnan(image)).any(dim=0)
            image = torch.nan_to_num(image, nan=0.0)
        else:
            valid = (image != 0).all(dim=0)
        return image, valid

    def _pump(self) -> None:
        """On the model thread: run full batches of the queued blocks' tiles until none is left."""
        while True:
            with self._lock:
                jobs = [j for j in self._queue if j.queued < len(j.origins)]
                for j in [j for j in self._queue if not j.origins]:  # nothing to run: an empty window
                    self._queue.remove(j)
                    self._finish(j)
            if not jobs and self._far:  # nothing left to run: the tiles waiting for their far view
                self._far_views()
                continue
            if not jobs:
                if self.device.type == "cuda":  # idle: hand PyTorch's cached memory back to the driver
                    release_gpu_memory()
                return
            batch: list[tuple[_Job, tuple[int, int]]] = []
            for job in jobs:
                if job.image is None:
                    try:
                        self._open(job)
                    except BaseException as exc:  # noqa: BLE001 - the block's caller gets it
                        self._fail([job], exc)
                        continue
                take = job.origins[job.queued : job.queued + self.batch_size - len(batch)]
                batch += [(job, o) for o in take]
                job.queued += len(take)
                if len(batch) == self.batch_size:
                    break
            if not batch:
                continue
            try:
                tiles = self._tiles(batch)
                probs = self._probabilities(tiles, len(batch))
                again = self._needs_far_view(tiles, probs)
                for n, (job, origin) in enumerate(batch):
                    if again[n]:  # copies: a waiting tile must not hold its whole batch
                        self._far.append((job, origin, probs[n].clone(), tiles[n].clone()))
                    else:
                        self._blend(job, probs[n], origin)
                self._finish_blended({j for j, _ in batch})
            except BaseException as exc:  # noqa: BLE001
                self._fail({j for j, _ in batch}, exc)
            if len(self._far) >= self.batch_size:
                self._far_views()

    def _open(self, job: _Job) -> None:
        job.image, job.valid = job.prepare()
        if not job.mask_nodata:
            job.valid = torch.ones_like(job.valid)
        else:  # nodata is no data: every band zero there, as a pixel outside the swath is
            job.image *= job.valid
        if job.image.dtype == torch.int32:  # DN kept as their 16 bits until tiles are cut: half the memory
            job.image = job.image.to(torch.int16)
        ys, xs = job.needed
        k = len(self.meta.classes)
        job.acc = torch.zeros((k, ys.stop - ys.start, xs.stop - xs.start), dtype=torch.float32, device=self.device)
        job.weight = torch.zeros(job.acc.shape[1:], dtype=torch.float32, device=self.device)

    def _tiles(self, batch: list) -> torch.Tensor:
        """The model's input ``(batch_size, band, T, T)`` float32 (DN / divisor) of the batch's tiles, empty tiles
        (zeros) filling it up."""
        t = self.grid.tile
        x = torch.zeros((self.batch_size, len(self.meta.bands), t, t), dtype=torch.float32, device=self.device)
        for n, (job, (oy, ox)) in enumerate(batch):
            y0, x0 = oy - job.offset[0], ox - job.offset[1]
            h, w = job.image.shape[1:]
            sy0, sx0, sy1, sx1 = max(0, y0), max(0, x0), min(h, y0 + t), min(w, x0 + t)
            if sy1 > sy0 and sx1 > sx0:
                part = job.image[:, sy0:sy1, sx0:sx1]
                if part.dtype == torch.int16:
                    part = part.to(torch.int32) & 0xFFFF
                x[n, :, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = part
        x /= self.divisor
        return x

    def _probabilities(self, x: torch.Tensor, tiles: int, far: bool = False) -> torch.Tensor:
        """Softmax probabilities ``(batch_size, K, T, T)`` float32 of a full batch ``x`` holding ``tiles`` tiles."""
        start = time.perf_counter()
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            probs = torch.softmax(self.model(x).float(), dim=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so forward_s is the forward's time
        self.stats.add(tiles, time.perf_counter() - start, filler=self.batch_size - tiles, far=far)
        return probs

    # -- the overcast check (pipeline.detect.overcast) ----------------------------------------------------------
    def _needs_far_view(self, tiles: torch.Tensor, probs: torch.Tensor) -> list[bool]:
        if self._checked is None:
            return [False] * len(tiles)
        with torch.inference_mode():
            return overcast.needs_far_view(tiles, probs, self._checked, self._cloud).tolist()

    def _far_views(self) -> None:
        """Run one batch of the waiting tiles' far views (padded with empty tiles when fewer wait); blend those
        tiles with the check's result."""
        pending, self._far = self._far[: self.batch_size], self._far[self.batch_size :]
        jobs = {job for job, *_ in pending}
        try:
            with torch.inference_mode():
                canvas, window = overcast.far_view_input(torch.stack([tile for *_, tile in pending]))
                full = torch.zeros((self.batch_size, *canvas.shape[1:]), dtype=canvas.dtype, device=canvas.device)
                full[: len(pending)] = canvas
                far = self._probabilities(full, len(pending), far=True)[: len(pending)]
                own = torch.stack([p for _, _, p, _ in pending])
                probs, took = overcast.overcast_merge(own, far, window, self._clear, self._cloud)
            for n, (job, origin, _, _) in enumerate(pending):
                self._blend(job, probs[n], origin, took[n])
            self._finish_blended(jobs)
        except BaseException as exc:  # noqa: BLE001
            self._fail(jobs, exc)

    def _blend(self, job: _Job, probs: torch.Tensor, origin: tuple[int, int], took: torch.Tensor | None = None) -> None:
        """Add one tile's probabilities ``(K, T, T)`` to its job's canvas with the tile grid's blend window;
        ``took`` ``(T, T)`` bool: the tile's pixels the overcast check made cloud."""
        ys, xs = job.needed
        t = self.grid.tile
        y0, x0 = origin[0] - job.offset[0] - ys.start, origin[1] - job.offset[1] - xs.start
        h, w = job.weight.shape
        cy0, cx0, cy1, cx1 = max(0, y0), max(0, x0), min(h, y0 + t), min(w, x0 + t)
        if cy1 > cy0 and cx1 > cx0:
            ty, tx = slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)
            win = self.window[ty, tx]
            job.acc[:, cy0:cy1, cx0:cx1] += probs[:, ty, tx] * win
            job.weight[cy0:cy1, cx0:cx1] += win
            if took is not None and bool(took.any()):
                if job.far is None:
                    job.far = torch.zeros_like(job.weight)
                job.far[cy0:cy1, cx0:cx1] += took[ty, tx] * win
        job.blended += 1

    def _finish_blended(self, jobs) -> None:
        for job in jobs:
            if job.blended == len(job.origins) and not job.future.done():
                self._finish(job)

    def _finish(self, job: _Job) -> None:
        """The job's classes (and probabilities) from its canvas, back on the host; its future resolved."""
        with self._lock:
            if job in self._queue:
                self._queue.remove(job)
        try:
            h, w = job.shape
            ys, xs = job.needed
            classes = np.full((h, w), MASK_NODATA, np.uint8)
            checking = self._checked is not None  # then counts carry the cloud the check made, last
            counts = np.zeros(len(self.meta.classes) + 1 + checking, np.int64)
            counts[len(self.meta.classes)] = (ys.stop - ys.start) * (xs.stop - xs.start)
            probs = None
            if job.probabilities:
                probs = np.full(
                    (len(self.meta.classes), h, w),
                    np.nan if job.probabilities == "float" else MASK_NODATA,
                    np.float32 if job.probabilities == "float" else np.uint8,
                )
            if job.acc is not None and job.acc.numel():
                p = job.acc / job.weight
                valid = job.valid[ys, xs]
                c = self.codes[p.argmax(dim=0)]
                c[~valid] = MASK_NODATA
                classes[ys, xs] = c.cpu().numpy()
                counted = torch.bincount(c.flatten().to(torch.int32), minlength=256).cpu().numpy()
                checked = 0
                if job.far is not None:  # cloud that the overcast check gave most of its blend weight
                    made = valid & (job.far * 2 > job.weight) & torch.isin(c, self.codes[self._cloud])
                    checked = int(made.sum())
                counts = np.append(counted[: len(self.meta.classes)], [counted[MASK_NODATA], checked][: 1 + checking])
                counts = counts.astype(np.int64)
                if job.probabilities == "float":
                    probs[:, ys, xs] = torch.where(valid, p, torch.nan).cpu().numpy()
                elif job.probabilities == "scaled":
                    scaled = torch.round(p * PROBABILITY_SCALE).to(torch.uint8)
                    probs[:, ys, xs] = torch.where(valid, scaled, MASK_NODATA).cpu().numpy()
            job.future.set_result(Prediction(classes=classes, probabilities=probs, counts=counts))
        except BaseException as exc:  # noqa: BLE001
            job.future.set_exception(exc)
        finally:
            job.image = job.valid = job.acc = job.weight = job.far = None

    def _fail(self, jobs, exc: BaseException) -> None:
        with self._lock:
            for job in jobs:
                if job in self._queue:
                    self._queue.remove(job)
        self._far = [p for p in self._far if p[0] not in jobs]
        for job in jobs:
            job.image = job.valid = job.acc = job.weight = job.far = None
            if not job.future.done():
                job.future.set_exception(exc)


def release_gpu_memory() -> int:
    """Return PyTorch's cached CUDA memory to the driver (the model stays loaded); bytes still reserved."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved()
