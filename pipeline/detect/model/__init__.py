"""Torch-only model code: blocks, the assembled MSCloudCAM, its registry, loss and weights format.

Names are resolved on first use (PEP 562), so importing ``pipeline.detect.weights`` or the registry does not import
the model code (and, through it, timm and torchvision)."""

from pipeline.detect.model.registry import create_model, list_models, register_model

__all__ = ["MSCloudCAM", "create_model", "deep_supervision_loss", "list_models", "register_model"]


def __getattr__(name: str):
    if name == "MSCloudCAM":
        from pipeline.detect.model.mscloudcam import MSCloudCAM

        return MSCloudCAM
    if name == "deep_supervision_loss":
        from pipeline.training.loss import deep_supervision_loss

        return deep_supervision_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
