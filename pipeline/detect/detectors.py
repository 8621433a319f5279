"""The cloud detectors the job can run, behind one interface: MSCloudCAM with a weights file, and the peers.

``detector_weights(source)`` gives the ``Weights`` record (contract + tensors) of a weights path or URL, or of
a peer's name (``s2cloudless``, ``ukis-csmask``: a record without tensors); ``build_predictor(weights, spec)``
gives the object with ``predict(image, offset=, needed=, probabilities=)`` that runs it. ``pipeline.detect.model``
knows nothing of the peers; the peers know nothing of weights files.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from pipeline.config import InferSpec
from pipeline.detect.infer import Predictor
from pipeline.detect.peers import DETECTORS, PEER_MODELS, PeerPredictor, peer_weights  # noqa: F401 (DETECTORS: re-exported)
from pipeline.detect.runtime import Prediction
from pipeline.detect.weights import Weights, cached_weights, default_weights
from pipeline.errors import WeightsChangedError


def is_peer(source: str | Path) -> bool:
    """A peer's name, alone or with the sensor it runs on (``ukis-csmask@sentinel-2-l2a``)."""
    return str(source).partition("@")[0] in PEER_MODELS


def detector_weights(source: str | Path) -> Weights:
    """The weights record of a weights file (cached per process and file version) or of a peer's name."""
    source = str(source)
    return peer_weights(source) if is_peer(source) else cached_weights(source)


def build_predictor(weights: Weights, spec: InferSpec = InferSpec()):
    """A predictor for ``weights``: a ``PeerPredictor`` for a peer's record, else MSCloudCAM's ``Predictor``."""
    return PeerPredictor(weights) if weights.meta.model in PEER_MODELS else Predictor(weights, spec)


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
        weights = default_weights()
    with _CACHE_LOCK:
        if sha256 is not None and (sha256, spec) in _CACHE:
            return _CACHE[(sha256, spec)]
    if not isinstance(weights, Weights):
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
    filling short batches), ``forward_s`` and the span
    ``first_start``..``last_end`` (``time.time()``) of its forward passes."""
    with _CACHE_LOCK:
        stats = [p.stats for p in _CACHE.values()]
    return {
        "tiles": sum(s.tiles for s in stats),
        "filler": sum(s.filler for s in stats),
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
