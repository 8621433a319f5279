"""The Zarr v3 mask cube: one group per pixel grid, template-then-region writes, a manifest, a writer lock.

A store is a local folder or an object-storage prefix (``pipeline.store.locations``); the layout is the same::

    <store>/zarr.json                     the root group (attrs: what produced the masks, code version;
                                          consolidated metadata of the whole hierarchy)
    <store>/<grid>/...                    one xarray Dataset per pixel grid (CRS + transform + shape):
        mask (time, y, x) uint8, fill 255, flags 0..3; per-scene statistics along time; spatial_ref
    <store>/_cloudmask/manifest/<id>.json a scene is done only once this file exists (written last, atomically)
    <store>/_cloudmask/lock.json          present while a job writes; a second job is refused (pipeline.store.locks)
    <store>/_cloudmask/scenes.csv         the per-scene statistics table, written when a job ends

Writes are region writes of whole Zarr chunks, so a retried write produces the same bytes.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import xarray as xr

from pipeline import __version__
from pipeline.catalog.sensors import CLASS_NAMES, MASK_NODATA, PROBABILITY_SCALE
from pipeline.errors import ConfigError
from pipeline.read.grids import grid_name
from pipeline.store.locations import Location, location_of
from pipeline.store.locks import LOCK, StoreLockedError, lock_for, refusal  # noqa: F401  (StoreLockedError: the store's error)
from pipeline.store.stats import SHARES, STATUS, SceneStats

MANIFEST = ("_cloudmask", "manifest")
TABLE = ("_cloudmask", "scenes.csv")
STAT_VARS = {  # name: (dtype, fill)
    "valid_pixels": (np.int64, -1),
    **{f: (np.float32, np.nan) for f in SHARES},
    "cloud_cover": (np.float32, np.nan),
    "provider_cloud_cover": (np.float32, np.nan),
    "offset_applied": (np.int16, -1),
    "status": (np.int8, 0),
    "runtime_s": (np.float32, np.nan),
}


def store_path(out: str | Path) -> str:
    """The store URL of ``--out`` (a local folder's absolute path, or an object-storage URL), checked before any
    work (``locations.location_of``)."""
    return location_of(out).url


# what makes masks comparable: a store holds the output of one set of these, recorded at its root
PROVENANCE = (
    "model",
    "weights_sha256",
    "bands",
    "classes",
    "tile",
    "overlap",
    "precision",
    "probabilities",
    "overcast_check",
)
ADDED_LATER = {"overcast_check": False}  # what a store recorded before the setting existed was made with


class MaskStore:
    """A job's output store (``out``: a local path or an object-storage URL, see ``pipeline.store.locations``, or a
    ``Location`` already resolved)."""

    def __init__(self, out: str | Path | Location, label: str = "--out", writable: bool = True) -> None:
        """``writable`` False: a store only read (``stats``, ``verify`` without repair, ``export``), read-only too."""
        self.location = out if isinstance(out, Location) else location_of(out, label, writable)
        self.url = self.location.url
        self.path = Path(self.location.root) if self.location.local else None  # a local store's folder
        self._held = None
        self._stats: dict[str, dict[int, SceneStats]] = {}  # queued statistics by group and time index
        if self.path is not None:
            self.meta_dir = self.path / "_cloudmask"
            self.manifest_dir = self.meta_dir / "manifest"

    # -- locking --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, job: str = "cloudmask run"):
        """Hold the store's writer lock; refuse (StoreLockedError) while another live job holds it. On object
        storage the lock is a lease renewed in the background; ``mark_done`` stops (LeaseLostError) once it
        was lost."""
        held = lock_for(self.location, job)
        holder = held.acquire()
        if holder is not None:
            raise refusal(
                self.url, holder, self.location.key(*LOCK) if self.location.local else f"{self.url}/{'/'.join(LOCK)}"
            )
        self._held = held
        try:
            yield self
        finally:
            self._held = None
            held.release()

    def lease(self) -> tuple[str, str] | None:
        """``(lock object key, this job's token)`` while this job holds an object-storage store's lease (workers
        check it before writing), None otherwise."""
        if self._held is None or self.location.local:
            return None
        return self.location.key(*LOCK), self._held.me["token"]

    def _confirm(self) -> None:
        """Before a record is written: the lock is still this job's (on object storage, renewed now with a
        conditional write); ``LeaseLostError`` otherwise."""
        if self._held is not None:
            self._held.check()

    def check_free(self, job: str = "cloudmask run") -> None:
        """Refuse (StoreLockedError) now, before any cluster starts, when a live job holds the store's lock (the
        lock, where there is one, is taken and given back: ``lock`` takes it for the run). Writes nothing to a
        store without a lock."""
        if self.location.exists(*LOCK):
            with self.lock(job):
                pass

    # -- provenance -----------------------------------------------------------------------------------
    def provenance(self) -> dict | None:
        """What produced the masks already in the store (``PROVENANCE`` keys), or None for a new store."""
        if not self.location.exists("zarr.json"):
            return None
        import zarr

        root = zarr.open_group(**self.location.zarr_args(), mode="r")
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
        have = {**ADDED_LATER, **have}
        diffs = [
            f"{k}: the store has {have[k]!r}, this run {wanted[k]!r}"
            for k in PROVENANCE
            if k in have and k in wanted and _plain(have[k]) != _plain(wanted[k])
        ]
        if diffs:
            raise ConfigError(
                f"store {self.url!r} holds masks made with other settings ({'; '.join(diffs)}); "
                f"one store holds one model's masks: write this run to another --out"
            )

    def write_provenance(self, wanted: dict) -> None:
        """Record ``wanted`` at the store's root (once; ``check_provenance`` guards later runs)."""
        import zarr

        root = zarr.open_group(**self.location.zarr_args(), mode="a", zarr_format=3)
        if not root.attrs.get("cloudmask"):
            root.attrs.update(cloudmask={k: _plain(v) for k, v in wanted.items()}, code_version=__version__)

    def describe(self) -> None:
        """Say at the root how to open the store (its grid groups, and the calls that open them): ``xr.open_zarr``
        without a group shows these attributes rather than an empty Dataset with no hint."""
        import zarr

        root = zarr.open_group(**self.location.zarr_args(), mode="a", zarr_format=3)
        groups = self.groups()
        root.attrs.update(
            groups=groups,
            how_to_open=(
                "one Dataset per pixel grid: xarray.open_zarr(STORE, group=NAME) with NAME one of the groups; all of "
                "them: xarray.open_datatree(STORE, engine='zarr'); a scene as GeoTIFF: cloudmask export STORE --item ID"
            ),
        )

    def consolidate(self) -> None:
        """Write the hierarchy's consolidated metadata at the root, after every change of layout or attributes
        (scenes' region writes change no metadata): analysts' ``xr.open_zarr``/``xr.open_datatree`` then read
        one document, warn about nothing, and never see the bookkeeping folder ``_cloudmask`` as a broken node."""
        import warnings

        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not part of the Zarr v3 specification" and _cloudmask
            zarr.consolidate_metadata(self.location.zarr_store())

    # -- manifest -------------------------------------------------------------------------------------
    def done(self) -> dict[str, dict]:
        """Manifest entries of finished scenes, by item id. An entry that cannot be read (truncated, empty: a
        crash or a full disk while it was written) is left out, so its scene is redone."""
        names = [n for n in self.location.names(*MANIFEST) if n.endswith(".json")]
        entries = ((n, _parse_json(self.location.read(*MANIFEST, n))) for n in names)
        return {
            str(e.get("item_id") or unquote(n[:-5])): e
            for n, e in entries
            if isinstance(e, dict) and isinstance(e.get("stats", {}), dict)
        }

    def has_manifest(self) -> bool:
        return bool(self.location.names(*MANIFEST)) or self.location.exists(*TABLE)

    def read_table(self):
        """The statistics table the last job wrote (``pandas.DataFrame`` by item id), None where there is none."""
        import io

        import pandas as pd

        data = self.location.read(*TABLE)
        if data is None:
            return None
        text = {
            "item_id": str,
            "datetime": str,
            "status": str,
            "reason": str,
            "processing_baseline": str,
            "radiometry": str,
        }  # "02.04" is a baseline, not the number 2.04
        return pd.read_csv(io.BytesIO(data), index_col="item_id", keep_default_na=False, na_values=[""], dtype=text)

    def write_table(self, frame) -> str:
        """Write the statistics table (CSV) into the store; its URL."""
        self._confirm()
        self.location.write(frame.to_csv().encode(), *TABLE)
        return self.location.key(*TABLE) if self.location.local else f"{self.url}/{'/'.join(TABLE)}"

    def forget(self, item_id: str) -> None:
        """Remove a scene's manifest entry: the next run redoes it."""
        self.location.delete(*MANIFEST, manifest_name(item_id))

    def mark_done(self, item_id: str, entry: dict) -> None:
        """Record scene ``item_id`` as done (written last, whole), once the lock is confirmed to be this job's
        (``LeaseLostError`` otherwise)."""
        self._confirm()
        entry = dict(entry, item_id=item_id)  # the file name may be shortened: the entry names its item
        self.location.write(json.dumps(entry, indent=1, default=str).encode(), *MANIFEST, manifest_name(item_id))

    # -- groups ---------------------------------------------------------------------------------------
    def ensure_group(
        self,
        grid,
        times: list,
        item_ids: list[str],
        chunks: tuple[int, int],
        attrs: dict | None = None,
        probabilities: bool = False,
    ) -> str:
        """Write the group's template (metadata and coordinates only) unless it exists; return its name.

        An existing group grows: scenes it does not hold yet are appended along ``time`` (as a template: their
        chunks are written by their scenes' jobs), the scenes it holds keep their places. The time axis is in the
        order scenes were added (sorted within each run); ``ds.sortby("time")`` gives the sorted view.
        """
        group = grid_name(grid)
        if self.location.exists(group, "zarr.json"):
            try:
                have = set(self.location.names(group))
                missing = [
                    v
                    for v in ("mask", "item_id", *STAT_VARS)
                    if v not in have or not self.location.exists(group, v, "zarr.json")
                ]
                if missing:
                    raise ValueError(f"arrays {missing} are missing")
                existing = self.open(group)
            except Exception as exc:  # noqa: BLE001 - a layout cut short: missing or unreadable arrays
                if any(e.get("group") == group for e in self.done().values()):
                    raise ConfigError(
                        f"store {self.url!r} group {group} cannot be opened ({exc}) although "
                        f"scenes in it are done; run cloudmask verify on it"
                    ) from exc
                self.location.remove_tree(group)  # nothing done in it: a template whose writing was cut short
                return self.ensure_group(grid, times, item_ids, chunks, attrs, probabilities)
            if probabilities and "probability" not in existing:
                raise ConfigError(
                    f"store {self.url!r} group {group} was written without probabilities; "
                    f"drop --probabilities or write this job to another --out"
                )
            have = set(map(str, existing["item_id"].values))
            new = [(t, i) for t, i in zip(times, item_ids) if i not in have]
            if new:
                template = self._template(
                    grid, [t for t, _ in new], [i for _, i in new], chunks, "probability" in existing
                )
                # only what runs along time; encodings are the existing arrays'
                template = template.drop_vars([v for v in template.variables if "time" not in template[v].dims])
                for v in template.variables.values():
                    v.encoding = {}
                template.to_zarr(
                    **self.location.zarr_args(),
                    group=group,
                    append_dim="time",
                    compute=False,
                    zarr_format=3,
                    consolidated=False,
                )
            return group
        ds = self._template(grid, times, item_ids, chunks, probabilities, attrs)
        ds.to_zarr(
            **self.location.zarr_args(), group=group, mode="w-", compute=False, zarr_format=3, consolidated=False
        )
        return group

    def groups(self) -> list[str]:
        """The names of the store's grid groups."""
        return [n for n in self.location.names() if not n.startswith("_") and self.location.exists(n, "zarr.json")]

    def scene_index(self, group: str) -> dict[str, int]:
        """``{item id: time index}`` of a group."""
        ids = self.open(group)["item_id"].values
        return {str(i): t for t, i in enumerate(ids)}

    @staticmethod
    def _template(
        grid, times: list, item_ids: list[str], chunks: tuple[int, int], probabilities: bool, attrs: dict | None = None
    ) -> xr.Dataset:
        """The lazy Dataset of ``len(times)`` scenes on ``grid`` (a GeoBox): masks (and probabilities) all nodata, statistics
        at their fill values, coordinates, CRS and encodings."""
        import dask.array as da
        import rioxarray  # noqa: F401  (registers .rio)

        h, w = grid.shape
        n = len(times)
        cy, cx = chunks
        # one Dask chunk per array: the template is never computed (``compute=False``), and a graph of one task
        # per Zarr chunk cost seconds to build for a job's layout; the Zarr chunks are the encoding's below
        data = {"mask": (("time", "y", "x"), da.full((n, h, w), MASK_NODATA, np.uint8, chunks=-1))}
        if probabilities:
            data["probability"] = (
                ("time", "class", "y", "x"),
                da.full((n, len(CLASS_NAMES), h, w), MASK_NODATA, np.uint8, chunks=-1),
            )
        for name, (dtype, fill) in STAT_VARS.items():
            data[name] = (("time",), np.full(n, fill, dtype))
        coords = dict(
            {k: c.values for k, c in grid.coords.items()},
            time=np.asarray(times, dtype="datetime64[ns]"),
            item_id=("time", np.asarray(item_ids, dtype=object)),
        )
        ds = xr.Dataset(data, coords=coords, attrs=dict(attrs or {}, code_version=__version__))
        ds["mask"].attrs.update(
            flag_values=[0, 1, 2, 3], flag_meanings=" ".join(CLASS_NAMES), long_name="cloud mask", nodata=MASK_NODATA
        )
        if probabilities:
            ds["probability"].attrs.update(long_name=f"class probability x {PROBABILITY_SCALE}", nodata=MASK_NODATA)
            ds = ds.assign_coords(
                {"class": np.asarray(CLASS_NAMES, dtype=object)}
            )  # variable-length strings in Zarr v3
        _statistics_attrs(ds)
        ds = ds.rio.write_crs(str(grid.crs)).rio.write_transform(grid.affine)
        # zarr's own fill_value, not a CF _FillValue attribute: xarray then keeps uint8 on reading (no NaN masking)
        ds["mask"].encoding.update(chunks=(1, cy, cx), fill_value=MASK_NODATA, dtype="uint8")
        if probabilities:
            ds["probability"].encoding.update(
                chunks=(1, len(CLASS_NAMES), cy, cx), fill_value=MASK_NODATA, dtype="uint8"
            )
        # microseconds since the epoch (STAC datetimes carry up to µs): any acquisition appended later encodes exactly
        ds["time"].encoding.update(
            units="microseconds since 1970-01-01T00:00:00", calendar="proleptic_gregorian", dtype="int64"
        )
        for name in ds.data_vars:  # so that plain xr.open_zarr(...).rio.crs finds the grid mapping
            ds[name].encoding.update(
                grid_mapping="spatial_ref",
                coordinates=" ".join(c for c in ("item_id", "spatial_ref") if c in ds.coords),
            )
        return ds

    def write_scene_stats(self, group: str, t: int, stats: SceneStats) -> None:
        """Queue scene ``t``'s statistics for the per-scene variables (its mask is written by the Dask graph);
        ``flush_stats`` writes what is queued. The manifest entry, written at once, is what counts: statistics
        not flushed before a crash are written again from it (``sync_stats``)."""
        self._stats.setdefault(group, {})[t] = stats

    def flush_stats(self) -> int:
        """Write the queued statistics: one coordinate write per variable and group; the number of scenes."""
        import zarr

        if self._stats:
            self._confirm()
        written = 0
        for group in list(self._stats):  # a group's rows are dropped once written: a failed flush can be retried
            rows = self._stats[group]
            g = zarr.open_group(**self.location.zarr_args(), path=group, mode="r+")
            index = np.asarray(sorted(rows))
            values = [_stat_vars(rows[t]) for t in index]
            for name in STAT_VARS:
                g[name].set_coordinate_selection((index,), np.concatenate([v[name][1] for v in values]))
            written += len(self._stats.pop(group))
        return written

    def sync_stats(self, done: dict[str, dict], force: bool = False) -> int:
        """Queue and write the statistics of done scenes (manifest ``done``) whose variables do not say ``ok`` (a
        job stopped between a scene's manifest entry and the next flush), or of all of them with ``force``. The
        number of scenes written."""
        import zarr

        by_group: dict[str, list[dict]] = {}
        for entry in done.values():
            if entry.get("status") == "ok" and entry.get("group") and entry.get("stats"):
                by_group.setdefault(entry["group"], []).append(entry)
        for group, entries in by_group.items():
            try:
                status = zarr.open_group(**self.location.zarr_args(), path=group, mode="r")["status"][:]
            except (KeyError, FileNotFoundError):
                continue
            for e in entries:
                t = e.get("time_index")
                if isinstance(t, int) and 0 <= t < len(status) and (force or status[t] != STATUS["ok"]):
                    self.write_scene_stats(group, t, SceneStats.from_row(e["stats"]))
        return self.flush_stats()

    def rebuild_statistics(self, group: str, names: list[str], done: dict[str, dict]) -> None:
        """Re-create the lost statistics variables ``names`` of ``group`` (as its template has them, at their fill
        values) and fill them from the manifest entries ``done`` of the group's scenes."""
        n = self.open(group).sizes["time"]
        ds = xr.Dataset({name: (("time",), np.full(n, STAT_VARS[name][1], STAT_VARS[name][0])) for name in names})
        _statistics_attrs(ds)
        for name in names:
            ds[name].encoding.update(grid_mapping="spatial_ref", coordinates="item_id spatial_ref")
        ds.to_zarr(**self.location.zarr_args(), group=group, mode="a", zarr_format=3, consolidated=False)
        self.sync_stats({i: e for i, e in done.items() if e.get("group") == group}, force=True)

    def open(self, group: str) -> xr.Dataset:
        return xr.open_zarr(**self.location.zarr_args(), group=group, consolidated=False)


def _statistics_attrs(ds: xr.Dataset) -> None:
    """The attributes of the per-scene statistics variables ``ds`` holds."""
    if "status" in ds:
        ds["status"].attrs.update(flag_values=list(STATUS.values()), flag_meanings=" ".join(STATUS))
    if "cloud_cover" in ds:
        ds["cloud_cover"].attrs.update(units="%", long_name="thick + thin cloud among valid pixels")
    if "provider_cloud_cover" in ds:
        ds["provider_cloud_cover"].attrs.update(units="%", long_name="the provider's eo:cloud_cover")
    for name in SHARES:
        if name in ds:
            ds[name].attrs.update(units="%", long_name=f"{name[4:].replace('_', ' ')} among valid pixels")


def _plain(value):
    """JSON's view of a value (tuples as lists), so recorded and new settings compare alike."""
    return json.loads(json.dumps(value, default=str))


MAX_NAME = 200  # bytes of a manifest file name: file systems allow 255, and object keys more


def manifest_name(item_id: str) -> str:
    """The manifest file name of an item id, safe for any id: every character but letters, digits and ``_.-``
    percent-encoded (``a/b`` -> ``a%2Fb``, ``../x`` -> ``..%2Fx``), so ids never name other paths; an id whose name
    would be longer than ``MAX_NAME`` is cut and given the sha256 of the whole id (the entry itself names its item),
    the same on local folders and object storage."""
    import hashlib

    name = quote(item_id, safe="")
    name = "%2E" + name[1:] if name.startswith(".") else name
    if len(name) + 5 > MAX_NAME:
        cut = name[: MAX_NAME - 5 - 65]
        if "%" in cut[-2:]:  # not inside a percent-escape
            cut = cut[: cut.rindex("%")]
        name = f"{cut}~{hashlib.sha256(item_id.encode()).hexdigest()}"
    return name + ".json"


def _stat_vars(stats: SceneStats) -> dict:
    """One scene's statistics as length-1 variables along ``time``, in the store's dtypes."""
    row = dict(stats.row(), status=STATUS[stats.status])
    return {name: (("time",), np.asarray([row[name]], dtype=dtype)) for name, (dtype, _) in STAT_VARS.items()}


def _parse_json(data: bytes | None):
    try:
        return json.loads(data) if data is not None else None
    except (ValueError, TypeError):
        return None
