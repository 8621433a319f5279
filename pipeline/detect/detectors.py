"""The cloud detectors the job can run, in one table: MSCloudCAM with a weights file, and the peers.

``DETECTORS[name]`` (what ``cloudmask run --model`` and ``JobSpec.model`` name) is a ``Detector``: ``source`` gives
what it runs for a product level (MSCloudCAM: the weights file, the shipped starter by default; a peer: its name),
``record`` the ``Weights`` record of such a source (contract + tensors; a peer's has no tensors), ``model_for`` the
model source and bands it runs on a sensor's products, and ``predictor`` the object with ``predict(image, offset=,
needed=, probabilities=)`` that runs it. Planning and the tasks only talk to this interface; ``pipeline.detect.model``
knows nothing of the peers, and the peers nothing of weights files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.catalog.sensors import SENSOR_ALIASES, SENSORS, Sensor
from pipeline.config import InferSpec
from pipeline.detect.peers import PEER_MODELS, PeerPredictor, peer_sensor_bands, peer_source, peer_weights
from pipeline.detect.runtime import Prediction
from pipeline.errors import ConfigError, InputError, WeightsChangedError

if TYPE_CHECKING:  # torch loads with the first weights file, not with this table (the command line reads it)
    from pipeline.detect.infer import Predictor
    from pipeline.detect.weights import Weights


def weights_sensor(weights: Weights) -> Sensor | None:
    """The sensor and level a weights file was trained for (None when it names an unknown one)."""
    name = SENSOR_ALIASES.get(weights.meta.sensor, weights.meta.sensor)
    return SENSORS.get(f"{name}-{weights.meta.level}".lower())


@dataclass(frozen=True)
class MSCloudCAM:
    """MSCloudCAM with a weights file (``pipeline.detect.model``)."""

    name: str = "mscloudcam"
    takes_weights: bool = True

    def source(self, weights: str | None, level: str) -> str:
        from pipeline.detect.weights import default_weights

        return str(weights) if weights else default_weights(level)

    def record(self, source: str) -> Weights:
        from pipeline.detect.weights import cached_weights

        return cached_weights(source)

    def model_for(self, weights: Weights, sensor: Sensor) -> tuple[str, tuple[str, ...]]:
        trained = weights_sensor(weights)
        also = trained is not None and trained.name == sensor.name and sensor.level in weights.meta.also_levels
        if trained is None or (trained.key != sensor.key and not also):
            what = trained.title if trained else f"{weights.meta.sensor} {weights.meta.level}"
            raise InputError(f"the weights {weights.source} were trained on {what}, not {sensor.title}")
        return weights.source, tuple(weights.meta.bands)

    def predictor(self, weights: Weights, spec: InferSpec):
        from pipeline.detect.infer import Predictor

        return Predictor(weights, spec)


@dataclass(frozen=True)
class Peer:
    """A peer detector shipped on PyPI with its trained model (``pipeline.detect.peers``), its classes mapped to ours."""

    name: str
    takes_weights: bool = False

    def source(self, weights: str | None, level: str) -> str:
        return self.name

    def record(self, source: str) -> Weights:
        return peer_weights(source)

    def bands_on(self, sensor: Sensor) -> tuple[str, ...] | None:
        """The bands it takes from ``sensor``'s products; None where it does not run on them."""
        return peer_sensor_bands(self.name, sensor)

    def model_for(self, weights: Weights, sensor: Sensor) -> tuple[str, tuple[str, ...]]:
        bands = self.bands_on(sensor)
        if bands is None:
            raise InputError(f"{self.name} does not run on {sensor.title}")
        return peer_source(self.name, sensor), bands

    def predictor(self, weights: Weights, spec: InferSpec):
        return PeerPredictor(weights)


DETECTORS: dict[str, MSCloudCAM | Peer] = {"mscloudcam": MSCloudCAM(), **{n: Peer(n) for n in PEER_MODELS}}


def detector(name: str) -> MSCloudCAM | Peer:
    """The detector called ``name``; ``ConfigError`` naming the known ones otherwise."""
    if name not in DETECTORS:
        raise ConfigError(f"model {name!r}: expected one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


def detector_of(weights: Weights) -> MSCloudCAM | Peer:
    """The detector that runs a weights record (a peer's record names its peer; every weights file is MSCloudCAM's)."""
    return DETECTORS.get(weights.meta.model.partition("@")[0], DETECTORS["mscloudcam"])


def detector_weights(source: str | Path) -> Weights:
    """The weights record of a model source: a weights path or URL (cached per process and file version), or a
    peer's name, alone or with the sensor it runs on (``ukis-csmask@sentinel-2-l2a``, as ``model_for`` gives)."""
    source = str(source)
    return DETECTORS.get(source.partition("@")[0], DETECTORS["mscloudcam"]).record(source)


def model_for(weights: Weights, sensor: Sensor) -> tuple[str, tuple[str, ...]]:
    """``(model source, bands)`` to run ``weights`` on ``sensor``'s products; ``InputError`` saying why not."""
    return detector_of(weights).model_for(weights, sensor)


def build_predictor(weights: Weights, spec: InferSpec = InferSpec()):
    """The predictor of ``weights``' detector."""
    return detector_of(weights).predictor(weights, spec)


_CACHE: dict[tuple, Predictor | PeerPredictor] = {}
_CACHE_LOCK = threading.Lock()


def get_predictor(
    weights: str | Path | Weights | None = None, spec: InferSpec = InferSpec(), sha256: str | None = None
) -> Predictor | PeerPredictor:
    """The process's predictor for these weights (default: the shipped starter weights) and settings, built
    on first use and reused after. ``sha256``: the content the caller checked; a predictor of exactly that
    content is used (even if the file has been replaced since), and a file that no longer holds it is refused
    (``WeightsChangedError``), so a job never runs other weights than the ones it recorded."""
    if weights is None:
        weights = DETECTORS["mscloudcam"].source(None, "L1C")
    with _CACHE_LOCK:
        if sha256 is not None and (sha256, spec) in _CACHE:
            return _CACHE[(sha256, spec)]
    if isinstance(weights, (str, Path)):
        weights = detector_weights(weights)
    if sha256 is not None and weights.sha256 != sha256:
        raise WeightsChangedError(
            f"the weights at {weights.source} changed after the job checked them (sha256 "
            f"{sha256[:12]}..., now {weights.sha256[:12]}...); the job stops rather than mix "
            f"two models in one store: run it again to check the new file"
        )
    key = (weights.sha256, spec)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build_predictor(weights, spec)
        return _CACHE[key]


def predictor_stats() -> dict:
    """This process's model counters over its cached predictors: ``tiles`` run, ``filler`` (empty tiles
    filling short batches), ``far_views`` (tiles run again by the overcast check), ``forward_s`` and the span
    ``first_start``..``last_end`` (``time.time()``) of its forward passes."""
    with _CACHE_LOCK:
        stats = [p.stats for p in _CACHE.values()]
    return {
        "tiles": sum(s.tiles for s in stats),
        "filler": sum(s.filler for s in stats),
        "far_views": sum(s.far_views for s in stats),
        "forward_s": sum(s.forward_s for s in stats),
        "first_start": min((s.first_start for s in stats), default=float("inf")),
        "last_end": max((s.last_end for s in stats), default=0.0),
    }


def reset_predictor_stats() -> None:
    with _CACHE_LOCK:
        for p in _CACHE.values():
            p.stats.reset()


def predict(
    image: np.ndarray, weights: str | Path | Weights | None = None, spec: InferSpec = InferSpec(), **kwargs
) -> Prediction:
    """Convenience: ``get_predictor(weights, spec).predict(image, **kwargs)``."""
    return get_predictor(weights, spec).predict(image, **kwargs)
