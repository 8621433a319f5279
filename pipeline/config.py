"""Frozen, typed settings per stage: the one description of the job's settings.

Each field a user sets carries a ``Setting`` (``setting(...)``): the kind of value, a help line and an example. The
job file, the command line (``flows/settings.py``) and ``pipeline.run`` take their names, defaults, parsing and
messages from these fields; the dataclasses check the values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.detect.peers import PEER_MODELS
from pipeline.errors import ConfigError

# The block side in pixels, the job's unit of work: a full 10,980 px Sentinel-2 tile is 3 x 3 blocks (4,032 px on the
# starter weights' 224 px stride), so 10 tasks; against 2,048 px blocks (36 blocks) the tiles that blocks share
# with their neighbours cost 8 % of the model's work instead of 25 %, and Dask's overhead a quarter.
BLOCK = 4096
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_GRID_PX = 32768  # a side larger than this is refused unless lifted (Sentinel-2: 10,980; Landsat: about 8,000)
# what a setting holds, as a job file writes it: text, whole/number, switch (true/false), bbox (four numbers),
# patterns (a list of text), mapping (YAML only)
KINDS = ("text", "whole", "number", "switch", "bbox", "patterns", "mapping")


@dataclass(frozen=True)
class Setting:
    """How a field is set by users: ``kind`` (``KINDS``), a ``help`` line, an ``example`` value for messages,
    ``name`` where the option's name is not the field's, ``choices`` and a ``metavar`` for ``--help``."""

    kind: str
    help: str
    example: object = None
    name: str | None = None
    choices: tuple = ()
    metavar: str | None = None


def setting(kind: str, help: str, default=dataclasses.MISSING, **how):
    """A dataclass field users set: ``default`` and the ``Setting(kind, help, **how)`` in its metadata."""
    assert kind in KINDS, kind
    return field(default=default, metadata={"setting": Setting(kind, help, **how)})


def settings_of(spec) -> list[tuple[str, dataclasses.Field, Setting]]:
    """``(user-facing name, field, Setting)`` of every field of dataclass ``spec`` that users set."""
    return [
        (f.metadata["setting"].name or f.name, f, f.metadata["setting"])
        for f in dataclasses.fields(spec)
        if "setting" in f.metadata
    ]


@dataclass(frozen=True)
class InferSpec:
    """How tiles are cut, batched and run.

    ``tile``: tile side in pixels (None: the weights' own tile size). ``overlap``: pixels shared by
    neighbouring tiles (None: an eighth of the tile, 64 px for 512 px tiles); the stride is ``tile - overlap``.
    ``batch_size``: tiles per forward pass (None: 8 on CUDA; on CPU 2 for tiles up to 256 px, else 1). ``precision``: ``auto`` is bf16 autocast on CUDA and on CPUs with native bf16
    (AVX512-BF16, AMX), fp32 on other CPUs. ``threads``: torch CPU threads (None: the Dask worker's thread
    count inside a worker, torch's own choice elsewhere). ``no_overcast_check``: turn off the second, far view of
    full tiles the model calls partly cloud (``pipeline.detect.overcast``).
    """

    tile: int | None = setting("whole", "tile side in pixels (default: the weights' own)", None, example=512)
    overlap: int | None = setting(
        "whole",
        "tile overlap in pixels (default: an eighth of the weights' tile: 32 for the starter weights' 256 px)",
        None,
        example=32,
    )
    batch_size: int | None = setting(
        "whole", "tiles per forward pass (default: 8 on CUDA; on CPU 2 up to 256 px tiles, else 1)", None, example=8
    )
    device: str = setting("text", "auto, cpu, cuda or cuda:N", "auto", example="cuda")
    precision: str = setting(
        "text",
        "model precision (auto = bf16 on GPUs and on CPUs with native bf16, fp32 otherwise)",
        "auto",
        choices=PRECISIONS,
        example="fp32",
    )
    threads: int | None = setting(
        "whole", "torch CPU threads (default: the Dask worker's thread count)", None, example=2
    )
    no_overcast_check: bool = setting(
        "switch",
        "do not look again from afar at full tiles the model calls partly cloud (the overcast check, which "
        "adds the cloud of tiles that cloud fills; pct_overcast_check in the statistics says how much)",
        False,
    )

    def overlap_for(self, tile: int) -> int:
        """The overlap in pixels for tiles of ``tile`` px: ``overlap``, or an eighth of the tile when None."""
        return tile // 8 if self.overlap is None else self.overlap

    def tiles(self, tile_size: int):
        """The ``TileGrid`` for weights built for ``tile_size`` px tiles (``tile`` when set); ``ConfigError`` unless
        the overlap is less than half the tile (the halo rule needs a stride longer than the overlap)."""
        from pipeline.detect.tiles import TileGrid

        tile = self.tile or tile_size
        overlap = self.overlap_for(tile)
        if not 0 <= 2 * overlap < tile:
            raise ConfigError(
                f"overlap={overlap} must be at least 0 and less than half the {tile} px tile; pass a smaller --overlap"
            )
        return TileGrid(tile, overlap)

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile < 16:
            raise ConfigError(f"tile={self.tile} is too small; use the weights' tile size (e.g. 512) or at least 16")
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(
                f"overlap={self.overlap} must be >= 0 (pixels neighbouring tiles share); e.g. --overlap 32"
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

    url: str = setting("text", "STAC API root URL", name="stac_url", example="http://127.0.0.1:8081")
    collection: str = setting("text", "collection id, e.g. sentinel-2-l1c", example="sentinel-2-l1c")
    bbox: tuple[float, float, float, float] | None = setting(
        "bbox",
        "min_lon,min_lat,max_lon,max_lat (write --bbox=-10,35,5,45 when it starts with a minus)",
        None,
        example=[13.0, 52.3, 13.8, 52.7],
    )
    intersects: dict | None = setting(
        "mapping", "a GeoJSON geometry the scenes must intersect (instead of bbox)", None, example={"type": "Polygon"}
    )
    datetime: str | None = setting(
        "text", "RFC 3339 range, e.g. 2023-01-01/2023-06-30", None, example="2023-01-01/2023-06-30"
    )
    max_cloud: float | None = setting("number", "maximum provider eo:cloud_cover (%)", None, example=30)
    limit: int | None = setting("whole", "at most this many scenes", None, example=100)

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


@dataclass(frozen=True)
class JobSpec:
    """Everything a run needs besides the Dask client: the ``search``, the store ``out``, the detector and its
    ``infer`` settings, and how the work is cut and checked."""

    search: SearchSpec
    out: str = setting(
        "text",
        "output Zarr store: a folder, or s3://bucket/prefix.zarr (AWS credentials as usual; AWS_ENDPOINT_URL for "
        "S3-compatible services)",
        example="masks.zarr",
    )
    profile: str | None = setting(
        "text",
        "asset-key override for a catalogue whose assets carry no band metadata (eo:bands/bands); not needed for "
        "Earth Search, Planetary Computer, CDSE, USGS or the demo (profiles: pipeline/catalog/sensors.py)",
        None,
        example="sentinel-2-l1c",
    )
    model: str = setting(
        "text",
        "the detector: mscloudcam (with --weights) or a peer through the same pipeline, its classes mapped to "
        "ours (pipeline/detect/peers.py); compare cubes with `cloudmask compare`",
        "mscloudcam",
        choices=("mscloudcam", *PEER_MODELS),
        example="ukis-csmask",
    )
    weights: str | None = setting(
        "text",
        "MSCloudCAM weights file or URL (default: the shipped starter for the items' level)",
        None,
        example="weights.safetensors",
    )
    infer: InferSpec = field(default_factory=InferSpec)
    chunk: int = setting(
        "whole", "Dask block side in pixels, rounded down to a multiple of the tile stride", BLOCK, example=BLOCK
    )
    in_flight: int | None = setting(
        "whole",
        "scenes computing at once (default: two per GPU, or per worker without GPUs, re-read as workers join "
        "and leave)",
        None,
        example=4,
    )
    strict: bool = setting("switch", "exit 1 if any scene failed (without it: only when every scene failed)", False)
    probabilities: bool = setting(
        "switch", "also store probability (time, class, y, x) uint8, p x 250 (four times the mask's size)", False
    )
    verify: bool = setting(
        "switch",
        "before resuming, read back every scene marked done and redo those whose masks are lost or damaged "
        "(see cloudmask verify)",
        False,
    )
    max_grid: int = setting(
        "whole",
        "largest scene side accepted, in pixels (a Sentinel-2 tile is 10,980): items declaring larger grids fail "
        "with their reason",
        MAX_GRID_PX,
        example=40000,
        metavar="PX",
    )
    allowed_hrefs: tuple[str, ...] | None = setting(
        "patterns",
        "patterns (fnmatch) every asset href must match, e.g. 's3://sentinel-cogs/*,https://sentinel-cogs.s3.*'; "
        "items naming other places fail (default: any href)",
        None,
        example=["s3://sentinel-cogs/*"],
        metavar="PATTERNS",
    )

    def __post_init__(self):
        from pipeline.detect.detectors import detector

        if not detector(self.model).takes_weights and self.weights:
            raise ConfigError(f"model {self.model} brings its own trained model; drop --weights {self.weights}")
        if self.chunk < 1:
            raise ConfigError(
                f"chunk={self.chunk} must be at least 1: the Dask block side in pixels (default {BLOCK}; "
                f"rounded down to a multiple of the tile stride, at least one stride)"
            )
        if self.max_grid < 1:
            raise ConfigError(f"max_grid={self.max_grid} must be at least 1 (pixels a side)")
        if self.in_flight is not None and self.in_flight < 1:
            raise ConfigError(
                f"in_flight={self.in_flight} must be at least 1 (or left out: two scenes per GPU or worker)"
            )
        if self.allowed_hrefs is not None and not self.allowed_hrefs:
            raise ConfigError("allowed_hrefs is empty; give patterns such as 's3://sentinel-cogs/*', or leave it out")
