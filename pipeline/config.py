"""Frozen, typed settings per stage. YAML and CLI parsing live at the edge, in ``flows/``."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class InferSpec:
    """How tiles are cut, batched and run.

    ``tile``: tile side in pixels (None: the weights' own tile size). ``overlap``: pixels shared by
    neighbouring tiles; the stride is ``tile - overlap``. ``batch_size``: tiles per forward pass (None: 8 on
    CUDA, 1 on CPU, where batch 1 measured fastest per tile). ``precision``: ``auto`` is bf16 autocast on
    CUDA and fp32 on CPU.
    """

    tile: int | None = None
    overlap: int = 64
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile < 16:
            raise ConfigError(f"tile={self.tile} is too small; use the weights' tile size (e.g. 512) or at least 16")
        if self.overlap < 0 or (self.tile is not None and 2 * self.overlap >= self.tile):
            raise ConfigError(f"overlap={self.overlap} must be >= 0 and less than half the tile ({self.tile})")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be at least 1")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}; expected one of {', '.join(DEVICES)} or cuda:N")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; expected one of {', '.join(PRECISIONS)}")
