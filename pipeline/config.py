"""Frozen, typed settings per stage. YAML and CLI parsing live at the edge, in ``flows/``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError

# The block side in pixels, the job's unit of work: a full 10,980 px Sentinel-2 tile is 3 x 3 blocks (4,032 px on the
# starter weights' 224 px stride), so 10 tasks; against 2,048 px blocks (36 blocks) the tiles that blocks share
# with their neighbours cost 8 % of the model's work instead of 25 %, and Dask's overhead a quarter.
BLOCK = 4096
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class InferSpec:
    """How tiles are cut, batched and run.

    ``tile``: tile side in pixels (None: the weights' own tile size). ``overlap``: pixels shared by
    neighbouring tiles (None: an eighth of the tile, 64 px for 512 px tiles); the stride is ``tile - overlap``.
    ``batch_size``: tiles per forward pass (None: 8 on CUDA; on CPU 2 for tiles up to 256 px, else 1). ``precision``: ``auto`` is bf16 autocast on CUDA and on CPUs with native bf16
    (AVX512-BF16, AMX), fp32 on other CPUs. ``threads``: torch CPU threads (None: the Dask worker's thread
    count inside a worker, torch's own choice elsewhere).
    """

    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None

    def overlap_for(self, tile: int) -> int:
        """The overlap in pixels for tiles of ``tile`` px: ``overlap``, or an eighth of the tile when None."""
        return tile // 8 if self.overlap is None else self.overlap

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile < 16:
            raise ConfigError(f"tile={self.tile} is too small; use the weights' tile size (e.g. 512) or at least 16")
        if self.overlap is not None and (self.overlap < 0 or (self.tile is not None and 2 * self.overlap >= self.tile)):
            raise ConfigError(
                f"overlap={self.overlap} must be >= 0 and less than half the tile"
                f"{f' ({self.tile} px)' if self.tile else ''}; pass e.g. --overlap 32"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads} must be at least 1")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}; expected one of {', '.join(DEVICES)} or cuda:N")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; expected one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class SearchSpec:
    """A STAC search: API ``url``, ``collection``, an area (``bbox`` lon/lat or GeoJSON ``intersects``), a
    ``datetime`` range (RFC 3339 ``start/end``, ``..`` for open), ``max_cloud`` (provider eo:cloud_cover, %)
    and an item ``limit``."""

    url: str
    collection: str
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict | None = None
    datetime: str | None = None
    max_cloud: float | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"STAC API url {self.url!r} must start with http:// or https://")
        if self.bbox is not None:
            b = tuple(self.bbox)
            if len(b) != 4 or not (-180 <= b[0] < b[2] <= 180 and -90 <= b[1] < b[3] <= 90):
                raise ConfigError(
                    f"bbox {list(b)} must be min_lon,min_lat,max_lon,max_lat within -180..180, -90..90 with min < max"
                )
        if self.bbox is not None and self.intersects is not None:
            raise ConfigError("give either bbox or intersects, not both")
        if self.datetime is not None:
            _check_datetime(self.datetime)
        if self.max_cloud is not None and not 0 <= self.max_cloud <= 100:
            raise ConfigError(f"max_cloud={self.max_cloud} must be a percentage 0..100")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit={self.limit} must be at least 1")


def _check_datetime(text: str) -> None:
    import datetime as dt

    for part in text.split("/"):
        if part in ("..", ""):
            continue
        try:
            dt.datetime.fromisoformat(part.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"datetime {text!r}: {part!r} is not an RFC 3339 date or date-time "
                f"(e.g. 2023-01-01 or 2023-01-01T00:00:00Z/2023-06-30)"
            ) from None
