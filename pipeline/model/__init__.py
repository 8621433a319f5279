"""Torch-only model code: blocks, the assembled MSCloudCAM, its registry, loss and weights format."""

from . import mscloudcam as _variants  # noqa: F401  (registers the named variants)
from .loss import deep_supervision_loss
from .mscloudcam import MSCloudCAM
from .registry import create_model, list_models, register_model

__all__ = ["MSCloudCAM", "create_model", "deep_supervision_loss", "list_models", "register_model"]
