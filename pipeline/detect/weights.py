"""The project's weights format: safetensors tensors plus a JSON contract in the file's metadata.

A weights file says what it needs and what it produces: model name and options, band names in order,
sensor and level, normalisation, class codes and names, tile size and provenance. Files are identified by
their sha256. Pickle checkpoints are never loaded by the pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
from safetensors import SafetensorError, safe_open

from pipeline.errors import WeightsChangedError, WeightsError, WeightsMismatchError

if TYPE_CHECKING:  # torch is imported where tensors are used: reading a file's contract needs none
    import torch
    from torch import nn

METADATA_KEY = "cloudmask"
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = {".pth", ".pt", ".ckpt", ".pkl", ".pickle", ".bin", ".tar"}


@dataclass(frozen=True)
class WeightsMeta:
    """The contract a weights file carries.

    ``normalisation``: ``{"kind": "scale", "divisor": 3000.0}`` means model input = DN / 3000.
    ``class_codes[i]`` is the mask value written for model output channel ``i``.
    """

    model: str
    bands: tuple[str, ...]
    classes: tuple[str, ...]
    class_codes: tuple[int, ...]
    model_kwargs: dict = field(default_factory=dict)
    sensor: str = "sentinel-2"
    level: str = "L1C"
    normalisation: dict = field(default_factory=lambda: {"kind": "scale", "divisor": 3000.0})
    tile_size: int = 512
    provenance: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    also_levels: tuple[str, ...] = ()  # other levels of the sensor it suits (its bands among theirs), e.g. L1C

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.class_codes):
            raise WeightsError(f"weights list {len(self.classes)} classes but {len(self.class_codes)} class codes")
        if self.normalisation.get("kind") != "scale" or float(self.normalisation.get("divisor", 0)) <= 0:
            raise WeightsError(
                f"unsupported normalisation {self.normalisation!r}; expected kind 'scale' with divisor > 0"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WeightsMeta:
        d = json.loads(text)
        for key in ("bands", "classes", "class_codes", "also_levels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def model_args(self) -> dict:
        """Arguments to build the model: its options, band and class counts, and the tile size as input size."""
        return dict(
            {"img_size": self.tile_size}, **self.model_kwargs, in_chans=len(self.bands), num_classes=len(self.classes)
        )


@dataclass(frozen=True)
class Weights:
    """A weights file: its ``meta`` contract, ``sha256``, ``source`` and ``shapes`` (tensor name -> shape);
    ``state`` (its tensors) is read from ``path`` when first used, so a client that only checks a file's contract
    never imports torch nor holds the tensors. ``tensors``: given instead of a file (in-memory weights)."""

    meta: WeightsMeta
    sha256: str
    source: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    path: Path | None = None

    @functools.cached_property
    def state(self) -> dict[str, torch.Tensor]:
        """The tensors (name -> torch.Tensor), read once; ``WeightsChangedError`` where the file no longer holds
        the content this record was made of."""
        if self.tensors is not None or self.path is None:
            return self.tensors or {}
        from safetensors.torch import load

        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise WeightsChangedError(
                f"{self.source} changed since it was loaded (sha256 {self.sha256[:12]}... expected); "
                f"a job runs only the weights it checked: load the file again"
            )
        return load(data)

    def build_model(self) -> nn.Module:
        """A fresh model in eval mode with these weights, in float32 on the CPU."""
        from pipeline.detect.model.registry import create_model

        model = create_model(self.meta.model, **self.meta.model_args())
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state.items()}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise WeightsError(f"{self.source}: tensors do not fit model {self.meta.model!r}: {exc}") from None
        if missing or unexpected:
            raise WeightsError(
                f"{self.source}: tensors do not fit model {self.meta.model!r}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return model.eval()

    def check(
        self, bands: list[str] | tuple[str, ...] | None = None, classes: list[str] | tuple[str, ...] | None = None
    ) -> None:
        """Refuse weights whose bands or classes differ from what the caller has or needs."""
        for what, have, want in (("bands", self.meta.bands, bands), ("classes", self.meta.classes, classes)):
            if want is not None and tuple(want) != tuple(have):
                raise WeightsMismatchError(
                    f"{self.source}: the weights' {what} do not match: the weights have {list(have)}, "
                    f"the data/request has {list(want)}; use weights trained for these {what} "
                    f"(cloudmask weights info FILE shows a file's contract)"
                )


def _cast(v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``v`` in ``dtype`` when it is floating and survives the cast (BatchNorm running variances can exceed
    float16's 65504 and would turn into inf), else unchanged."""
    import torch

    if dtype is None or not v.is_floating_point():
        return v
    cast = v.to(dtype)
    return cast if torch.isfinite(cast).all() or not torch.isfinite(v).all() else v


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(
    path: str | Path, state: dict[str, torch.Tensor] | nn.Module, meta: WeightsMeta, dtype: torch.dtype | None = None
) -> str:
    """Write ``state`` (or a model's state dict) and ``meta`` to ``path``; return the file's sha256.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors to keep files small; loading casts back.
    """
    from safetensors.torch import save_file
    from torch import nn

    if isinstance(state, nn.Module):
        state = state.state_dict()
    tensors = {k: _cast(v, dtype).detach().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: meta.to_json()})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # never leave a half-written weights file under the real name
    return file_sha256(path)


def blend_weights(a: Weights, b: Weights, alpha: float) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Weight-space interpolation of two files of one contract (WiSE-FT, Wortsman et al., CVPR 2022): each
    floating tensor becomes ``(1 - alpha) * a + alpha * b`` (float32), e.g. ``a`` a model and ``b`` one fine-tuned
    from it, so ``alpha`` trades what ``b`` learnt against what ``a`` kept; ``alpha`` 0 gives ``a``'s values
    exactly, 1 ``b``'s. Integer tensors (counters such as BatchNorm's ``num_batches_tracked``) are ``b``'s.

    Returns the state and ``b``'s contract, its provenance recording both files' sha256 and ``alpha``; where ``b``
    is itself a blend, its record is kept inside (``b_blend``), so a blend of blends says how it was made.
    """
    import torch

    if not 0.0 <= alpha <= 1.0:
        raise WeightsError(f"alpha={alpha}; expected the share of the second file, 0 to 1")
    ours, theirs = json.loads(a.meta.to_json()), json.loads(b.meta.to_json())
    for key in (
        "model",
        "model_kwargs",
        "bands",
        "classes",
        "class_codes",
        "normalisation",
        "tile_size",
        "sensor",
        "level",
        "also_levels",
        "format_version",
    ):
        if ours.get(key) != theirs.get(key):
            raise WeightsMismatchError(
                f"{a.source} and {b.source} differ in {key} ({ours.get(key)!r} vs "
                f"{theirs.get(key)!r}); only files of one contract can be blended"
            )
    if a.state.keys() != b.state.keys():
        odd = sorted(a.state.keys() ^ b.state.keys())
        raise WeightsMismatchError(
            f"{a.source} and {b.source} hold different tensors ({odd[:3]}...); only files of one model can be blended"
        )
    state = {}
    for key, x in a.state.items():
        y = b.state[key]
        if x.shape != y.shape:
            raise WeightsMismatchError(
                f"tensor {key} has shape {tuple(x.shape)} in {a.source} but {tuple(y.shape)} "
                f"in {b.source}; only files of one model can be blended"
            )
        state[key] = torch.lerp(x.float(), y.float(), alpha) if x.is_floating_point() else y
    blend = {"alpha": alpha, "a_sha256": a.sha256, "b_sha256": b.sha256}
    if "blend" in b.meta.provenance:
        blend["b_blend"] = b.meta.provenance["blend"]
    return state, replace(b.meta, provenance=dict(b.meta.provenance, blend=blend))


def _local_copy(source: str, cache_dir: str | Path | None) -> Path:
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file {source!r} does not exist; give a local path or an fsspec URL of a .safetensors file"
            )
        return path
    cache = Path(cache_dir or Path(cache_root() or Path.home() / ".cache" / "cloudmask") / "weights")
    try:
        local = fsspec.open_local(f"filecache::{source}", filecache={"cache_storage": str(cache)})
    except Exception as exc:  # fsspec raises many types: HTTP, auth, unknown protocol
        raise WeightsError(f"could not fetch weights from {source!r}: {exc}") from exc
    return Path(local)


def _refuse_pickle(path: Path, source: str) -> None:
    with open(path, "rb") as f:
        head = f.read(9)
    # a safetensors file opens with its header's length (u64, little-endian) and then the JSON header's "{"
    looks_safetensors = len(head) == 9 and head[8:9] == b"{"
    looks_pickle = head[:2] == b"PK" or head[:1] == b"\x80"  # torch.save's zip, or a bare pickle stream
    if path.suffix.lower() in _PICKLE_SUFFIXES or (looks_pickle and not looks_safetensors):
        raise WeightsError(
            f"{source} looks like a PyTorch pickle checkpoint; cloudmask never unpickles files because "
            f"unpickling can run arbitrary code. Convert it once, in an environment you trust, with "
            f"'cloudmask weights convert {path.name} OUT.safetensors --model mscloudcam --bands B01,B02,...' "
            f"and pass OUT.safetensors"
        )


def load_weights(
    source: str | Path, *, bands=None, classes=None, cache_dir=None, expected_sha256: str | None = None
) -> Weights:
    """Load a weights file from a local path or an fsspec URL (``http://``, ``s3://``, ``file://``, ...).

    ``bands``/``classes``, when given, must equal the file's lists (in order) or the file is refused.
    """
    source = str(source)
    path = _local_copy(source, cache_dir)
    _refuse_pickle(path, source)
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256.lower():
        raise WeightsError(
            f"{source}: sha256 {sha} differs from the expected {expected_sha256}; the file is corrupt or another version"
        )
    try:
        with safe_open(str(path), framework="np") as f:  # the header only: no tensor is read, torch is not needed
            raw = (f.metadata() or {}).get(METADATA_KEY)
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"{source} is not a readable safetensors file ({exc}); the file may be truncated or corrupt"
        ) from exc
    if raw is None:
        raise WeightsError(
            f"{source} has no '{METADATA_KEY}' metadata (bands, classes, normalisation); re-save it with "
            f"'cloudmask weights convert' or pipeline.detect.weights.save_weights"
        )
    try:
        meta = WeightsMeta.from_json(raw)
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{source}: malformed '{METADATA_KEY}' metadata: {exc}") from exc
    weights = Weights(meta=meta, sha256=sha, source=source, shapes=shapes, path=path)
    check_architecture(weights)
    weights.check(bands=bands, classes=classes)
    return weights


# model arguments a file may set without its model being rebuilt to check it: they change no tensor's size
SWITCHES = {"norm": ("batch", "group"), "cam_bypass": (True, False)}
MAX_PARAMETERS = 500_000_000  # a model this large is refused unless its file holds every tensor of it


def check_architecture(weights: Weights) -> None:
    """Refuse (``WeightsError``, naming the arguments) a file whose declared model does not match its own tensors,
    before anything is built at full size: a small file declaring a huge model (``context_channels=4096``) would
    otherwise allocate gigabytes wherever it is loaded. A registered model with the arguments of ``SWITCHES`` is
    taken as declared; other arguments are checked by building the model on PyTorch's ``meta`` device (no memory)
    and comparing every tensor's shape."""
    meta = weights.meta
    if all(k in SWITCHES and v in SWITCHES[k] for k, v in meta.model_kwargs.items()):
        return
    checked = _checked_mark(weights)
    if checked is not None and checked.is_file():
        return  # this file passed with this model code before: building the model imports timm (seconds)
    import torch

    from pipeline.detect.model.registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(meta.model, **meta.model_args())
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad arguments: one line naming them
        raise WeightsError(
            f"{weights.source}: model {meta.model!r} cannot be built with its arguments "
            f"{meta.model_kwargs}: {type(exc).__name__}: {exc}"
        ) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = weights.shapes
    if expected != have:
        odd = sorted(k for k in expected.keys() | have.keys() if expected.get(k) != have.get(k))
        raise WeightsError(
            f"{weights.source}: its model arguments {meta.model_kwargs} describe another model than "
            f"its tensors ({len(odd)} differ, e.g. {odd[0]}: declared {expected.get(odd[0])}, in the "
            f"file {have.get(odd[0])}); the file is corrupt or its metadata was edited"
        )
    count = sum(v.numel() for v in model.state_dict().values())
    if count > MAX_PARAMETERS:
        raise WeightsError(
            f"{weights.source}: model {meta.model!r} with {meta.model_kwargs} has {count:,} "
            f"parameters, over the {MAX_PARAMETERS:,} this pipeline runs"
        )
    if checked is not None:
        try:
            checked.parent.mkdir(parents=True, exist_ok=True)
            checked.touch()
        except OSError:
            pass  # a read-only cache: checked again next time


def cache_root() -> Path | None:
    """The project's cache folder: ``$CLOUDMASK_CACHE``, else ``~/.cache/cloudmask``; None where the variable is
    set empty (no cache)."""
    root = os.environ.get("CLOUDMASK_CACHE", str(Path.home() / ".cache" / "cloudmask"))
    return Path(root) if root else None


def _checked_mark(weights: Weights) -> Path | None:
    """Where a passed ``check_architecture`` of this file is remembered: named by the file's sha256, its contract
    and the model code's (the model package's sources, torch's and timm's versions), so any change checks again;
    None where there is no cache folder (``CLOUDMASK_CACHE`` empty)."""
    root = cache_root()
    if root is None:
        return None
    key = hashlib.sha256(f"{weights.sha256}\n{weights.meta.to_json()}\n{_model_code()}".encode()).hexdigest()
    return root / "checked-architectures" / key


@functools.cache
def _model_code() -> str:
    """A digest of what builds the models: the model package's sources and the torch and timm versions."""
    from importlib.metadata import version

    digest = hashlib.sha256(f"torch {version('torch')} timm {version('timm')}".encode())
    for path in sorted((Path(__file__).parent / "model").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


_CACHE: dict[tuple, Weights] = {}


def cached_weights(source: str | Path) -> Weights:
    """``load_weights(source)`` once per process and file version (path, mtime, size): workers and the job's
    per-scene planning reuse it instead of re-reading and re-hashing the file (peers' names are resolved
    by ``pipeline.detect.detectors``)."""
    source = str(source)
    path = Path(source)
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None
    key = (source, stamp)
    if key not in _CACHE:
        _CACHE[key] = load_weights(source)
    return _CACHE[key]


# the shipped starter weights per Sentinel-2 processing level (weights/README.md)
STARTERS = {"L1C": "mscloudcam_s2l1c_starter.safetensors", "L2A": "mscloudcam_s2l2a_starter.safetensors"}
STARTER_WEIGHTS = STARTERS["L1C"]


def default_weights(level: str = "L1C") -> str:
    """The weights used when none are given: ``$CLOUDMASK_WEIGHTS``, else the starter weights shipped with
    the package for ``level`` (``L1C``: 13 bands; ``L2A``: 12, no B10; the repository's ``weights/`` folder;
    see ``weights/README.md``). Other levels get the L1C starter (which then says what it cannot run)."""
    env = os.environ.get("CLOUDMASK_WEIGHTS")
    if env:
        return env
    from pipeline.shipped import shipped_dir

    path = shipped_dir("weights") / STARTERS.get(str(level).upper(), STARTER_WEIGHTS)
    if not path.is_file():
        raise WeightsError(
            f"no weights given, and no starter weights are shipped yet ({str(path)!r} is missing); pass "
            f"--weights PATH_OR_URL (e.g. best.safetensors of a 'cloudmask train' run) or set CLOUDMASK_WEIGHTS"
        )
    return str(path)
