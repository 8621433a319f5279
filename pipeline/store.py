"""The Zarr v3 mask cube: one group per pixel grid, template-then-region writes, a manifest, a writer lock.

Layout of a store folder::

    <store>/zarr.json                     the root group (attrs: job, model, weights sha256, code version)
    <store>/<grid>/...                    one xarray Dataset per pixel grid (CRS + transform + shape):
        mask (time, y, x) uint8, fill 255, flags 0..3; per-scene statistics along time; spatial_ref
    <store>/_cloudmask/manifest/<id>.json a scene is done only once this file exists (written last, atomically)
    <store>/_cloudmask/lock.json          present while a job writes; a second job is refused

Writes are region writes of whole Zarr chunks, so a retried write produces the same bytes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
from urllib.parse import quote, unquote
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from . import __version__
from .errors import CloudmaskError, ConfigError
from .sensors import CLASS_NAMES, MASK_NODATA, PROBABILITY_SCALE
from .stats import FRACTIONS, STATUS, SceneStats

STAT_VARS = {  # name: (dtype, fill)
    "valid_pixels": (np.int64, -1), **{f: (np.float32, np.nan) for f in FRACTIONS},
    "cloud_cover": (np.float32, np.nan), "provider_cloud_cover": (np.float32, np.nan),
    "offset_applied": (np.int16, -1), "status": (np.int8, 0), "runtime_s": (np.float32, np.nan),
}


class StoreLockedError(CloudmaskError):
    """Another job is writing this store."""


@dataclass(frozen=True)
class Grid:
    """A pixel grid: ``crs`` (EPSG code or WKT), GDAL-order ``transform`` (x0, dx, 0, y0, 0, dy), ``shape`` (h, w)."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]

    @property
    def name(self) -> str:
        from rasterio.crs import CRS

        epsg = CRS.from_user_input(self.crs).to_epsg()
        x0, dx, _, y0, _, dy = self.transform
        return f"epsg{epsg or 'wkt'}_x{x0:.10g}_y{y0:.10g}_res{abs(dx):.10g}_{self.shape[0]}x{self.shape[1]}"

    def coords(self) -> dict:
        """Pixel-centre coordinates ``y (h,)`` and ``x (w,)`` float64."""
        x0, dx, _, y0, _, dy = self.transform
        h, w = self.shape
        return {"y": y0 + dy * (np.arange(h) + 0.5), "x": x0 + dx * (np.arange(w) + 0.5)}


def store_path(out: str | Path) -> Path:
    """The local folder of ``--out`` (``~`` expanded, ``file://`` accepted), checked before any work: not a file,
    and writable where it would be created. Object-storage URLs are refused, naming what works instead."""
    text = str(out)
    if "://" in text and not text.startswith("file://"):
        raise ConfigError(f"--out {text}: stores on object storage are not supported yet; write to a local path "
                          f"(a bucket mounted as a folder works)")
    path = Path(text.removeprefix("file://")).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {text} is a file, not a store folder; give a new folder or a store to resume")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {text}: cannot write in {existing} (no permission, or a read-only file system); "
                          f"choose another --out")
    return path


# what makes masks comparable: a store holds the output of one set of these, recorded at its root
PROVENANCE = ("model", "weights_sha256", "bands", "classes", "tile", "overlap", "precision", "probabilities")


class MaskStore:
    """A job's output store on a local path."""

    def __init__(self, path: str | Path) -> None:
        self.path = store_path(path)
        self.meta_dir = self.path / "_cloudmask"
        self.manifest_dir = self.meta_dir / "manifest"

    # -- locking --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, job: str = "cloudmask run"):
        """Hold the store's writer lock; refuse (StoreLockedError) while another live job holds it."""
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        lock = self.meta_dir / "lock.json"
        me = {"pid": os.getpid(), "started": _process_start(os.getpid()), "host": socket.gethostname(), "job": job,
              "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        holder = self._acquire(lock, me)
        if holder is not None:
            raise StoreLockedError(
                f"store {str(self.path)!r} is being written by another job (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('since')}); wait for it to finish, or write to "
                f"another --out. If that job is gone, delete {lock}")
        try:
            yield self
        finally:
            lock.unlink(missing_ok=True)

    @staticmethod
    def _acquire(lock: Path, me: dict) -> dict | None:
        """Create ``lock`` holding ``me``; None once held, else the live holder's record. A stale lock is taken
        over by one job only: the one that creates the ``.takeover`` marker re-reads it and atomically replaces
        it with its own while the others, seeing the marker or the new holder, are refused."""
        marker = lock.with_name(lock.name + ".takeover")
        holder: dict = {}
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                return None
            seen = _read_json(lock)
            if not _stale(lock, seen, me):
                return seen if isinstance(seen, dict) else {}
            holder = seen if isinstance(seen, dict) else {}
            try:
                mfd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:  # another job is taking it over now, or one died doing so long ago
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - marker.stat().st_mtime > UNREADABLE_LOCK_S:
                        marker.unlink()
                continue
            try:
                again = _read_json(lock) if lock.exists() else None
                if lock.exists() and (again != seen or not _stale(lock, again, me)):
                    continue  # it changed hands meanwhile: look again
                _write_json(lock, me)  # atomic replace: there is no moment without a lock
                return None
            finally:
                os.close(mfd)
                marker.unlink(missing_ok=True)
        return holder

    # -- provenance -----------------------------------------------------------------------------------
    def provenance(self) -> dict | None:
        """What produced the masks already in the store (``PROVENANCE`` keys), or None for a new store."""
        if not (self.path / "zarr.json").exists():
            return None
        import zarr

        root = zarr.open_group(str(self.path), mode="r")
        recorded = dict(root.attrs.get("cloudmask", {}))
        if not recorded:  # a store of an earlier version: its groups name the model and weights
            for _, group in root.groups():
                if group.attrs.get("weights_sha256"):
                    return {"model": group.attrs.get("model"), "weights_sha256": group.attrs["weights_sha256"]}
        return recorded or None

    def check_provenance(self, wanted: dict) -> None:
        """Refuse (``ConfigError``, naming every difference) a run whose settings would put masks of another
        model or setting into this store."""
        have = self.provenance()
        if not have:
            return
        diffs = [f"{k}: the store has {have[k]!r}, this run {wanted[k]!r}" for k in PROVENANCE
                 if k in have and k in wanted and _plain(have[k]) != _plain(wanted[k])]
        if diffs:
            raise ConfigError(f"store {str(self.path)!r} holds masks made with other settings ({'; '.join(diffs)}); "
                              f"one store holds one model's masks: write this run to another --out")

    def write_provenance(self, wanted: dict) -> None:
        """Record ``wanted`` at the store's root (once; ``check_provenance`` guards later runs)."""
        import zarr

        root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        if not root.attrs.get("cloudmask"):
            root.attrs.update(cloudmask={k: _plain(v) for k, v in wanted.items()}, code_version=__version__)

    def consolidate(self) -> None:
        """Write the hierarchy's consolidated metadata at the root, after every change of layout or attributes
        (scenes' region writes change no metadata): analysts' ``xr.open_zarr``/``xr.open_datatree`` then read
        one document, warn about nothing, and never see the bookkeeping folder ``_cloudmask`` as a broken node."""
        import warnings

        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not part of the Zarr v3 specification" and _cloudmask
            zarr.consolidate_metadata(str(self.path))

    # -- manifest -------------------------------------------------------------------------------------
    def done(self) -> dict[str, dict]:
        """Manifest entries of finished scenes, by item id. An entry that cannot be read (truncated, empty: a
        crash or a full disk while it was written) is left out, so its scene is redone."""
        if not self.manifest_dir.is_dir():
            return {}
        entries = ((unquote(p.stem), _read_json(p)) for p in sorted(self.manifest_dir.glob("*.json")))
        return {item_id: e for item_id, e in entries if isinstance(e, dict) and isinstance(e.get("stats", {}), dict)}

    def forget(self, item_id: str) -> None:
        """Remove a scene's manifest entry: the next run redoes it."""
        (self.manifest_dir / manifest_name(item_id)).unlink(missing_ok=True)

    def mark_done(self, item_id: str, entry: dict) -> None:
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.manifest_dir / manifest_name(item_id), entry)

    # -- groups ---------------------------------------------------------------------------------------
    def ensure_group(self, grid: Grid, times: list, item_ids: list[str], chunks: tuple[int, int],
                     attrs: dict | None = None, probabilities: bool = False) -> str:
        """Write the group's template (metadata and coordinates only) unless it exists; return its name.

        An existing group grows: scenes it does not hold yet are appended along ``time`` (as a template: their
        chunks are written by their scenes' jobs), the scenes it holds keep their places. The time axis is in the
        order scenes were added (sorted within each run); ``ds.sortby("time")`` gives the sorted view.
        """
        group = grid.name
        if (self.path / group / "zarr.json").exists():
            try:
                missing = [v for v in ("mask", "item_id", *STAT_VARS) if not (self.path / group / v / "zarr.json").exists()]
                if missing:
                    raise ValueError(f"arrays {missing} are missing")
                existing = xr.open_zarr(self.path, group=group, consolidated=False)
            except Exception as exc:  # noqa: BLE001 - a layout cut short: missing or unreadable arrays
                if any(e.get("group") == group for e in self.done().values()):
                    raise ConfigError(f"store {str(self.path)!r} group {group} cannot be opened ({exc}) although "
                                      f"scenes in it are done; run cloudmask verify on it") from exc
                import shutil

                shutil.rmtree(self.path / group)  # nothing done in it: a template whose writing was cut short
                return self.ensure_group(grid, times, item_ids, chunks, attrs, probabilities)
            if probabilities and "probability" not in existing:
                raise ConfigError(f"store {str(self.path)!r} group {group} was written without probabilities; "
                                  f"drop --probabilities or write this job to another --out")
            have = set(map(str, existing["item_id"].values))
            new = [(t, i) for t, i in zip(times, item_ids) if i not in have]
            if new:
                template = self._template(grid, [t for t, _ in new], [i for _, i in new], chunks,
                                          "probability" in existing)
                # only what runs along time; encodings are the existing arrays'
                template = template.drop_vars([v for v in template.variables if "time" not in template[v].dims])
                for v in template.variables.values():
                    v.encoding = {}
                template.to_zarr(self.path, group=group, append_dim="time", compute=False, zarr_format=3,
                                 consolidated=False)
            return group
        ds = self._template(grid, times, item_ids, chunks, probabilities, attrs)
        ds.to_zarr(self.path, group=group, mode="w-", compute=False, zarr_format=3, consolidated=False)
        return group

    def scene_index(self, group: str) -> dict[str, int]:
        """``{item id: time index}`` of a group."""
        ids = xr.open_zarr(self.path, group=group, consolidated=False)["item_id"].values
        return {str(i): t for t, i in enumerate(ids)}

    @staticmethod
    def _template(grid: Grid, times: list, item_ids: list[str], chunks: tuple[int, int], probabilities: bool,
                  attrs: dict | None = None) -> xr.Dataset:
        """The lazy Dataset of ``len(times)`` scenes on ``grid``: masks (and probabilities) all nodata, statistics
        at their fill values, coordinates, CRS and encodings."""
        import dask.array as da
        import rioxarray  # noqa: F401  (registers .rio)

        h, w = grid.shape
        n = len(times)
        cy, cx = chunks
        data = {"mask": (("time", "y", "x"), da.full((n, h, w), MASK_NODATA, np.uint8, chunks=(1, cy, cx)))}
        if probabilities:
            data["probability"] = (("time", "class", "y", "x"),
                                   da.full((n, len(CLASS_NAMES), h, w), MASK_NODATA, np.uint8, chunks=(1, len(CLASS_NAMES), cy, cx)))
        for name, (dtype, fill) in STAT_VARS.items():
            data[name] = (("time",), np.full(n, fill, dtype))
        coords = dict(grid.coords(), time=np.asarray(times, dtype="datetime64[ns]"),
                      item_id=("time", np.asarray(item_ids, dtype=object)))
        ds = xr.Dataset(data, coords=coords, attrs=dict(attrs or {}, code_version=__version__))
        ds["mask"].attrs.update(flag_values=[0, 1, 2, 3], flag_meanings=" ".join(CLASS_NAMES),
                                long_name="cloud mask", nodata=MASK_NODATA)
        if probabilities:
            ds["probability"].attrs.update(long_name=f"class probability x {PROBABILITY_SCALE}", nodata=MASK_NODATA)
            ds = ds.assign_coords({"class": np.asarray(CLASS_NAMES, dtype=object)})  # variable-length strings in Zarr v3
        ds["status"].attrs.update(flag_values=list(STATUS.values()), flag_meanings=" ".join(STATUS))
        ds["cloud_cover"].attrs.update(units="%", long_name="thick + thin cloud among valid pixels")
        ds = ds.rio.write_crs(grid.crs).rio.write_transform(_affine(grid.transform))
        # zarr's own fill_value, not a CF _FillValue attribute: xarray then keeps uint8 on reading (no NaN masking)
        ds["mask"].encoding.update(chunks=(1, cy, cx), fill_value=MASK_NODATA, dtype="uint8")
        if probabilities:
            ds["probability"].encoding.update(chunks=(1, len(CLASS_NAMES), cy, cx), fill_value=MASK_NODATA, dtype="uint8")
        # microseconds since the epoch (STAC datetimes carry up to µs): any acquisition appended later encodes exactly
        ds["time"].encoding.update(units="microseconds since 1970-01-01T00:00:00", calendar="proleptic_gregorian",
                                   dtype="int64")
        for name in ds.data_vars:  # so that plain xr.open_zarr(...).rio.crs finds the grid mapping
            ds[name].encoding.update(grid_mapping="spatial_ref",
                                     coordinates=" ".join(c for c in ("item_id", "spatial_ref") if c in ds.coords))
        return ds

    def write_scene(self, group: str, t: int, mask, stats: SceneStats, probability=None) -> None:
        """Region-write scene ``t``: ``mask (y, x)`` uint8 (numpy or dask), its statistics, optionally
        ``probability (class, y, x)`` uint8."""
        vars_ = dict(_stat_vars(stats), mask=(("time", "y", "x"), mask[None]))
        if probability is not None:
            vars_["probability"] = (("time", "class", "y", "x"), probability[None])
        xr.Dataset(vars_).to_zarr(self.path, group=group, region={"time": slice(t, t + 1)}, zarr_format=3,
                                  consolidated=False)

    def write_scene_stats(self, group: str, t: int, stats: SceneStats) -> None:
        """Region-write only scene ``t``'s statistics (its mask is written by the Dask graph)."""
        xr.Dataset(_stat_vars(stats)).to_zarr(self.path, group=group, region={"time": slice(t, t + 1)}, zarr_format=3,
                                  consolidated=False)

    def open(self, group: str) -> xr.Dataset:
        return xr.open_zarr(self.path, group=group, consolidated=False)


def _plain(value):
    """JSON's view of a value (tuples as lists), so recorded and new settings compare alike."""
    return json.loads(json.dumps(value, default=str))


def manifest_name(item_id: str) -> str:
    """The manifest file name of an item id, safe for any id: every character but letters, digits and ``_.-``
    percent-encoded (``a/b`` -> ``a%2Fb``, ``../x`` -> ``..%2Fx``), so ids never name other paths."""
    name = quote(item_id, safe="")
    return ("%2E" + name[1:] if name.startswith(".") else name) + ".json"


def _stat_vars(stats: SceneStats) -> dict:
    """One scene's statistics as length-1 variables along ``time``, in the store's dtypes."""
    row = dict(stats.row(), status=STATUS[stats.status])
    return {name: (("time",), np.asarray([row[name]], dtype=dtype)) for name, (dtype, _) in STAT_VARS.items()}


def _affine(transform):
    from affine import Affine

    x0, dx, rx, y0, ry, dy = transform
    return Affine(dx, rx, x0, ry, dy, y0)


UNREADABLE_LOCK_S = 30  # a lock file still empty or unreadable after this long was left by a failed start


def _stale(lock: Path, holder, me: dict) -> bool:
    """Whether ``lock`` (content ``holder``) was left by a job that is gone: a dead process on this host, a live
    process id that started at another time (the id was reused: a restarted container's job is PID 1 again), or
    a file never completed (empty or unreadable for ``UNREADABLE_LOCK_S``: a crash or a full disk as it was
    written)."""
    if not isinstance(holder, dict):
        try:
            return time.time() - lock.stat().st_mtime > UNREADABLE_LOCK_S
        except FileNotFoundError:
            return True
    if holder.get("host") != me["host"]:
        return False
    if not _alive(holder.get("pid")):
        return True
    started = holder.get("started")
    return started is not None and started != _process_start(holder.get("pid"))


def _process_start(pid) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        return int(Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)
