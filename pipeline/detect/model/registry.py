"""Name -> constructor registry for segmentation models (timm-style)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pipeline.errors import UnknownModelError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: make ``fn(**kwargs) -> nn.Module`` available as ``create_model(name, ...)``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def _registered() -> dict[str, Callable[..., nn.Module]]:
    """The registry, with the package's own variants in it (imported on first use: importing the model code pulls in
    timm and torchvision, which the weights format and the command line do not need)."""
    from pipeline.detect.model import mscloudcam  # noqa: F401  (registers the named variants)

    return _MODELS


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_registered())


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model with random initialisation (load weights with ``pipeline.detect.weights``)."""
    try:
        fn = _registered()[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    return fn(**kwargs)
