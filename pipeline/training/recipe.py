"""Training settings (a :class:`Recipe`), free of torch so that the command line can list and check them fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError

# Cross-entropy class weights (median frequency / class frequency) ** power: the square root, or the milder fourth
# root (rare classes still weigh more, but the common clear class is not made cheap to give up).
CLASS_WEIGHT_POWERS = {"sqrt-inverse": 0.5, "root4-inverse": 0.25}


@dataclass(frozen=True)
class Recipe:
    """Training settings; the defaults are the paper's (Adam 1e-4, batch 8, 100 epochs, seed 42, fp32)."""

    name: str = "paper"
    model: str = "mscloudcam"
    model_kwargs: dict = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    aux_weight: float = 0.4
    seed: int = 42
    bf16: bool = False
    workers: int = 0
    device: str = "auto"
    save_dtype: str = "fp32"
    train_size: int | None = None  # chip side when training on smaller chips than the deployed tile
    warmup_steps: int = 0  # linear learning-rate warm-up from lr/warmup_steps (0: none, as in the paper)
    grad_clip: float | None = None  # clip the gradients' global norm (None: no clipping, as in the paper)
    class_weights: str | None = None  # CE weights (median frequency / class frequency) ** power (CLASS_WEIGHT_POWERS)
    brightness: tuple[float, float] | None = None  # starter: chips scaled by a gain in this range, thick/thin re-split
    shadows: float | None = (
        None  # starter: share of cloudy chips whose cloud casts a synthetic shadow (datasets/shadows.py)
    )
    real_l2a: float | None = None  # starter-l2a: share of chips drawn from real L2A land (datasets/reben.py)
    translucent: bool = (
        False  # starter-l2a with real_l2a: clouds over real land fade at their edges (datasets/translucent.py)
    )
    land_gain: tuple[float, float] | None = (
        None  # starter-l2a with real_l2a: real land chips scaled by a gain in this range
    )
    overcast: float | None = (
        None  # starter(-l2a): share of chips under a tile-filling cloud or haze (datasets/overcast.py)
    )
    snow: float | None = (
        None  # starter-l2a with real_l2a: share of real land chips under synthetic snow (datasets/snow.py)
    )
    init: str | None = None  # start from these weights (path or URL; same model and classes, bands matched by name)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2: the PSP's 1x1 pooled BatchNorm needs 2 samples")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.warmup_steps < 0 or (self.grad_clip is not None and not self.grad_clip > 0):
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be >= 0 and grad_clip={self.grad_clip} > 0")
        if self.class_weights not in (None, *CLASS_WEIGHT_POWERS):
            raise ConfigError(
                f"class_weights={self.class_weights!r}; expected None or one of {', '.join(CLASS_WEIGHT_POWERS)}"
            )
        for name in ("brightness", "land_gain"):
            gains = getattr(self, name)
            if gains is not None and not 0 < gains[0] <= gains[1]:
                raise ConfigError(f"{name}={gains}; expected (low, high) gains with 0 < low <= high")
        if self.shadows is not None and not 0 <= self.shadows <= 1:
            raise ConfigError(f"shadows={self.shadows}; expected the share of chips given a synthetic shadow, 0 to 1")
        if self.real_l2a is not None and not 0 <= self.real_l2a <= 1:
            raise ConfigError(f"real_l2a={self.real_l2a}; expected the share of chips drawn from real L2A land, 0 to 1")
        if self.overcast is not None and not 0 <= self.overcast <= 1:
            raise ConfigError(
                f"overcast={self.overcast}; expected the share of chips under a tile-filling cloud or haze layer, 0 to 1"
            )
        if self.snow is not None and not 0 <= self.snow <= 1:
            raise ConfigError(f"snow={self.snow}; expected the share of real L2A land chips given a snow cover, 0 to 1")
        if self.save_dtype not in ("fp32", "fp16"):
            raise ConfigError(f"save_dtype={self.save_dtype!r}; expected fp32 or fp16")
