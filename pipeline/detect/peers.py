"""Peer cloud detectors shipped on PyPI with their trained models: s2cloudless and ukis-csmask.

s2cloudless takes Sentinel-2 L1C TOA reflectance (13 bands; DN / 10000, pre-04.00 convention). ukis-csmask
takes six bands (blue, green, red, nir, swir16, swir22) of Sentinel-2 L1C or L2A, or Landsat 8/9 Collection 2
Level-1 or Level-2, as reflectance. Used as teachers for the starter weights and side by side with MSCloudCAM.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from pipeline.catalog.sensors import SENSORS, SENTINEL2_L1C, Sensor
from pipeline.detect.runtime import Prediction, PredictorStats, dask_worker_threads, on_model_thread
from pipeline.errors import ConfigError, InputError

S2_BANDS = SENTINEL2_L1C.bands


def _reflectance(dn: np.ndarray) -> np.ndarray:
    if dn.ndim != 3 or dn.shape[0] != len(S2_BANDS):
        raise InputError(f"expected (band=13, y, x) Sentinel-2 L1C DN in order {list(S2_BANDS)}; got shape {dn.shape}")
    return dn.astype(np.float32) / 10000.0


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{module} is not installed; install it with: pip install 'cloudmask-pipeline[{extra}]'"
        ) from exc


def s2cloudless_probability(dn: np.ndarray, threads: int = 0) -> np.ndarray:
    """s2cloudless (LightGBM, 10 of 13 bands) cloud probability ``(y, x)`` float32 in [0, 1], per pixel.
    ``threads``: LightGBM threads (0: its default, OpenMP's thread count)."""
    s2c = _require("s2cloudless", "peers")
    refl = _reflectance(dn)
    detector = s2c.S2PixelCloudDetector(all_bands=True, average_over=None, dilation_size=None)
    kwargs = {"num_threads": threads} if threads else {}
    return detector.get_cloud_probability_maps(np.moveaxis(refl, 0, -1)[None], **kwargs)[0]


UKIS_BANDS = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12"}
# ukis-csmask's six bands in each sensor's names, its product level, and the sensor's pixel size (m)
UKIS_SENSORS = {
    "sentinel-2-l1c": (tuple(UKIS_BANDS.values()), "l1c", 10.0),
    "sentinel-2-l2a": (tuple(UKIS_BANDS.values()), "l2a", 10.0),
    "landsat-oli-tirs-l1": (("B2", "B3", "B4", "B5", "B6", "B7"), "l1c", 30.0),
    "landsat-oli-tirs-l2": (("B2", "B3", "B4", "B5", "B6", "B7"), "l2a", 30.0),
}


def ukis_probabilities(
    dn: np.ndarray, resolution_m: float = 10.0, threads: int = 0, product_level: str = "l1c"
) -> np.ndarray:
    """ukis-csmask (ONNX U-Net) softmax ``(3, y, x)`` float32: background, cloud, shadow, of ``dn``: the 13
    Sentinel-2 L1C bands, or exactly its six bands (blue, green, red, nir, swir16, swir22) as reflectance x
    10000 of any sensor it knows. ``product_level``: ``l1c`` (top of atmosphere) or ``l2a`` (surface).

    The model was trained near 30 m: finer inputs are block-averaged to about 30 m first and the
    probabilities brought back to the input grid (bilinear).
    """
    from scipy.ndimage import zoom

    _require("ukis_csmask", "peers")
    from ukis_csmask.mask import CSmask

    if dn.ndim == 3 and dn.shape[0] == 6:
        six = dn.astype(np.float32) / 10000.0
    else:
        six = _reflectance(dn)[[S2_BANDS.index(b) for b in UKIS_BANDS.values()]]
    factor = max(1, int(round(30.0 / resolution_m)))
    h, w = six.shape[1:]
    if factor > 1:
        hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
        padded = np.pad(six, ((0, 0), (0, hp - h), (0, wp - w)), mode="edge")
        six = padded.reshape(6, hp // factor, factor, wp // factor, factor).mean(axis=(2, 4))
    # CSmask computes its own softmax but keeps only the argmax; run its session for the probabilities.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inputs under 256 px: it pads, which is fine
        cs = CSmask(
            np.ascontiguousarray(np.moveaxis(six, 0, -1)),
            band_order=list(UKIS_BANDS),
            product_level=product_level,
            intra_op_num_threads=threads,
        )
    probs = _ukis_softmax(cs)
    if factor > 1:
        probs = zoom(probs, (1, factor, factor), order=1)[:, :h, :w]
    return probs.astype(np.float32)


def _ukis_softmax(cs) -> np.ndarray:
    from ukis_csmask.utils import tile_array, untile_array

    x = np.moveaxis(tile_array(cs.img, xsize=cs.target_size[0], ysize=cs.target_size[1], overlap=0.2), -1, 1)
    probs = np.concatenate([cs.softmax(cs.session.run(None, {cs.input_names: b})[0]) for b in cs.batch(x, 1)])
    probs = untile_array(
        np.moveaxis(probs, 1, -1), (cs.img.shape[0], cs.img.shape[1], probs.shape[1]), overlap=0.2, smooth_blending=True
    )
    return np.moveaxis(probs, -1, 0)


# Crosswalk of the peers' classes to ours (0 clear, 1 thick, 2 thin, 3 shadow). Neither peer separates thick
# from thin cloud and s2cloudless has no shadow, so comparisons with them are made in their coarser classes:
#   s2cloudless: clear = {0, 3}, cloud = {1, 2}            (its default threshold: p >= 0.4)
#   ukis-csmask: clear = {0},    cloud = {1, 2}, shadow = {3}
S2CLOUDLESS_THRESHOLD = 0.4
TO_S2CLOUDLESS = np.array([0, 1, 1, 0], np.uint8)
TO_UKIS = np.array([0, 1, 1, 2], np.uint8)


def coarse(classes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map our class codes ``(y, x)`` uint8 through a crosswalk table; 255 stays 255."""
    out = np.full(classes.shape, 255, np.uint8)
    valid = classes < len(table)
    out[valid] = table[classes[valid]]
    return out


# -- the peers behind the pipeline's model interface --------------------------------------------------------
# `cloudmask run --model s2cloudless|ukis-csmask` stores their masks in our codes:
#   s2cloudless: p >= 0.4 -> 1 (cloud, written as thick_cloud), else 0 (clear); never 2 or 3
#   ukis-csmask: cloud -> 1 (written as thick_cloud), shadow -> 3, background -> 0; never 2
# Probabilities (class, y, x) in our class order: s2cloudless [1 - p, p, 0, 0]; ukis [clear, cloud, 0, shadow].
# Compare such cubes with MSCloudCAM's in the peer's coarser classes (TO_S2CLOUDLESS, TO_UKIS above).
PEER_MODELS = ("s2cloudless", "ukis-csmask")  # pipeline.detect.detectors.DETECTORS runs each
COARSE = {"s2cloudless": (TO_S2CLOUDLESS, ("clear", "cloud")), "ukis-csmask": (TO_UKIS, ("clear", "cloud", "shadow"))}


def peer_sensor_bands(name: str, sensor: Sensor) -> tuple[str, ...] | None:
    """The bands peer ``name`` takes from ``sensor``'s products, or None when it cannot run on them."""
    if name == "s2cloudless":
        return S2_BANDS if sensor.key == SENTINEL2_L1C.key else None
    if name == "ukis-csmask":
        return UKIS_SENSORS[sensor.key][0] if sensor.key in UKIS_SENSORS else None
    raise ConfigError(f"unknown peer {name!r}; expected one of {', '.join(PEER_MODELS)}")


def peer_source(name: str, sensor: Sensor) -> str:
    """The name the job hands to its tasks for peer ``name`` on ``sensor``: ``ukis-csmask@landsat-oli-tirs-l2``."""
    return name if sensor.key == SENTINEL2_L1C.key else f"{name}@{sensor.key}"


def peer_weights(source: str):
    """A ``Weights`` record (no tensors) standing for a peer (``name`` or ``name@sensor-key``), so the job
    handles it like a weights file."""
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.catalog.sensors import CLASS_CODES, CLASS_NAMES
    from pipeline.detect.weights import Weights, WeightsMeta

    name, _, key = source.partition("@")
    if name not in PEER_MODELS:
        raise ConfigError(f"unknown peer {name!r}; expected one of {', '.join(PEER_MODELS)}")
    sensor = SENSORS.get(key or SENTINEL2_L1C.key)
    bands = peer_sensor_bands(name, sensor) if sensor else None
    if bands is None:
        raise ConfigError(f"peer {name} cannot run on {key!r}")
    package = "s2cloudless" if name == "s2cloudless" else "ukis-csmask"
    try:
        release = version(package)
    except PackageNotFoundError:
        raise ConfigError(
            f"{package} is not installed; install it with: pip install 'cloudmask-pipeline[peers]'"
        ) from None
    meta = WeightsMeta(
        model=name,
        bands=bands,
        classes=CLASS_NAMES,
        class_codes=CLASS_CODES,
        normalisation={"kind": "scale", "divisor": 10000.0},
        tile_size=512,
        sensor=sensor.name,
        level=sensor.level,
        provenance={"peer": f"{package}=={release}", "crosswalk": "pipeline/detect/peers.py"},
    )
    return Weights(meta=meta, tensors={}, sha256=f"{package}=={release}@{sensor.key}", source=source)


class PeerPredictor:
    """A peer with ``Predictor.predict``'s interface: ``image (band, y, x)`` harmonised DN in the bands of its
    record (``meta.bands``) -> classes and
    probabilities in our codes. Peers classify pixels (s2cloudless) or tile internally (ukis-csmask), so
    ``offset``/``needed`` only trim the work; the halo the job gives each block is context for ukis."""

    def __init__(self, weights) -> None:
        self.meta, self.sha256, self.name = weights.meta, weights.sha256, weights.meta.model
        _, self.product_level, self.resolution_m = UKIS_SENSORS.get(
            f"{self.meta.sensor}-{self.meta.level}".lower(), (None, "l1c", 10.0)
        )
        self.stats = PredictorStats()
        self.threads = dask_worker_threads() or 0  # 0: onnxruntime's choice (all cores)

    def _timed(self, fn, image: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = fn(image, threads=self.threads)
        self.stats.add(1, time.perf_counter() - start)
        return out

    def predict_block(self, block, probabilities: bool = False):
        """Classes (and stored probabilities, uint8 p x 250) of a block's interior (``pipeline.read.bands.NativeBlock``),
        its bands brought onto the scene grid on the CPU."""
        from pipeline.catalog.sensors import MASK_NODATA, PROBABILITY_SCALE
        from pipeline.read.bands import block_image

        (r0, _), (c0, _) = block.rows, block.cols
        (y0, y1), (x0, x1) = block.needed
        pred = self.predict(block_image(block), offset=(r0, c0), probabilities=probabilities)
        inner = (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))
        probs = None
        if probabilities:
            p = pred.probabilities[(slice(None), *inner)]
            probs = np.where(np.isfinite(p), np.round(np.nan_to_num(p) * PROBABILITY_SCALE), MASK_NODATA).astype(
                np.uint8
            )
        return Prediction(classes=pred.classes[inner], probabilities=probs)

    def predict(
        self, image: np.ndarray, *, offset=(0, 0), needed=None, probabilities: bool = False, mask_nodata: bool = True
    ):
        from pipeline.catalog.sensors import MASK_NODATA

        image = np.asarray(image)
        nodata = np.any(image == 0, axis=0) if mask_nodata else np.zeros(image.shape[1:], bool)
        probs = np.zeros((4, *image.shape[1:]), np.float32)
        # like MSCloudCAM: one model call at a time per process, on all the worker's threads
        if self.name == "s2cloudless":
            p = on_model_thread(self._timed, s2cloudless_probability, image)
        else:
            ukis = functools.partial(
                ukis_probabilities, resolution_m=self.resolution_m, product_level=self.product_level
            )
            u = on_model_thread(self._timed, ukis, image)
        if self.name == "s2cloudless":
            probs[0], probs[1] = 1 - p, p
            classes = np.where(p >= S2CLOUDLESS_THRESHOLD, 1, 0).astype(np.uint8)
        else:
            probs[0], probs[1], probs[3] = u
            classes = np.array([0, 1, 3], np.uint8)[u.argmax(axis=0)]
        classes[nodata] = MASK_NODATA
        probs[:, nodata] = np.nan
        return Prediction(classes=classes, probabilities=probs if probabilities else None)
