"""The public API: ``mask`` a cube you have, ``run`` the archive job, ``open_masks`` its store, ``predict`` one array.

``import pipeline`` stays light: this module imports numpy, xarray, dask and torch only inside its functions.
Errors are ``pipeline.errors`` types (``CloudmaskError`` and its subclasses), each with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable

from pipeline.errors import ConfigError, InputError

__all__ = ["mask", "run", "open_masks", "predict"]

CUBE_DIMS = ("time", "band", "y", "x")
# Sentinel-2 products of processing baseline 04.00 (from 25 January 2022) carry +1000 DN
BASELINE_0400 = _dt.datetime(2022, 1, 25)


# -- mask: a cube users already have ------------------------------------------------------------------------


def mask(
    cube,
    weights=None,
    *,
    precision: str = "auto",
    chunk: int | None = None,
    offset="auto",
    overlap: int | None = None,
    probabilities: bool = False,
):
    """Cloud masks of a cube you already have, lazy: computed on whatever Dask scheduler is active.

    ``cube``: an ``xarray.DataArray`` with dims ``(time, band, y, x)`` in any order (odc-stac's
    ``load(...).to_dataarray("band")``, stackstac's ``stack``), or ``(band, y, x)`` for one scene; an
    ``xarray.Dataset`` of one variable per band (odc-stac's ``load``) is taken as its bands. Values are DN as the
    provider stores them (integer, or float with NaN for nodata as stackstac gives them; not rescaled to
    reflectance: stackstac's ``rescale=False``); 0 and NaN are nodata. Band coordinates may be the weights' names
    (``B02``), zero-padding variants (``B2``), or Earth Search asset keys / STAC common names (``blue``, ``nir08``,
    ``rededge1``, ...); the bands the weights read are picked and ordered as they want, others are ignored.
    ``weights``: a weights file or URL (default: the shipped starter for Sentinel-2 L1C when the cube has the cirrus
    band B10, else the L2A starter).

    Radiometry: Sentinel-2 products of processing baseline 04.00 and later carry +1000 DN, which the weights do
    not expect. ``offset="auto"`` decides per time slice from the cube's own coordinates
    (``s2:processing_baseline``, ``s2:product_uri``, ``id``, and Earth Search's ``earthsearch:boa_offset_applied``,
    which stackstac adds from the items' properties), and subtracts nothing where there are none (odc-stac's
    ``load`` carries no item properties: pass ``offset=1000`` for such products); ``offset=1000`` or ``0`` applies
    that to every slice. Landsat weights: Collection 2 DN are brought to reflectance x 10000 with the Collection 2
    scale and offset (``offset`` must stay ``"auto"``). This is the job's rule from metadata, without its check
    of L1C data against B10.

    ``precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (``InferSpec``); ``overlap``: tile overlap in px (None:
    an eighth of the weights' tile, the job's default); ``chunk``: block side in px the model runs on (rounded
    down to the tile stride; None: the job's 4096). Masks do not depend on ``chunk`` or the cube's chunking.

    Returns ``mask``: ``DataArray (time, y, x) uint8`` (``(y, x)`` for a 3-D cube) named ``"mask"``, 0 clear,
    1 thick cloud, 2 thin cloud, 3 cloud shadow, 255 nodata (attrs ``flag_values``, ``flag_meanings``,
    ``_FillValue``/``nodata``), with the cube's ``x``/``y``/``time`` coordinates, ``offset_applied`` (time,) int,
    and the cube's CRS written with rioxarray where it has one; with ``probabilities``, a ``Dataset`` of that
    ``mask`` and ``probability (time, class, y, x) uint8`` (p x 250, 255 nodata).

    Example::

        import odc.stac, pipeline
        ds = odc.stac.load(items, bands=["coastal", "blue", "green", "red", ...], chunks={"x": 2048, "y": 2048})
        masks = pipeline.mask(ds, "weights.safetensors", offset=1000)   # lazy (time, y, x) uint8
        clear = (masks == 0).sum("time").compute()
    """
    import numpy as np

    from pipeline.config import BLOCK, InferSpec
    from pipeline.detect.masks import predict_masks

    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ConfigError(f"chunk={chunk!r} must be a whole number of pixels, at least 1 (or None: {BLOCK})")
    spec = InferSpec(overlap=overlap, precision=precision)
    cube = _as_cube(cube)
    single = "time" not in cube.dims
    if single:
        cube = cube.expand_dims("time")
    cube = cube.transpose(*CUBE_DIMS)
    weights, meta, sensor = _weights_for(weights, [cube.band.values])
    picked = _pick_bands(cube, meta.bands, sensor, weights)
    harms = _radiometry(picked, offset, sensor, meta.bands)
    data = _harmonised_dn(picked, harms)
    ready = picked.copy(data=data).assign_coords(band=list(meta.bands))
    names = None
    if "id" in cube.coords and cube["id"].dims == ("time",):  # stackstac: the items' ids name the tasks
        names = [str(i) for i in cube["id"].values]
    out = predict_masks(ready, weights, spec, chunk=int(chunk or BLOCK), names=names, probabilities=probabilities)
    out = out.assign_coords(offset_applied=("time", np.asarray([h.offset for h in harms], np.int16)))
    result = _finish(out, cube, probabilities)
    return result.isel(time=0) if single else result


def _as_cube(cube):
    """``cube`` as a DataArray (a Dataset's variables as its ``band`` dim); ``InputError`` for anything else."""
    import xarray as xr

    if isinstance(cube, xr.Dataset):
        if not cube.data_vars:
            raise InputError("the Dataset has no variables; expected one variable per band (odc-stac's load)")
        cube = cube.to_dataarray("band")
    if not isinstance(cube, xr.DataArray):
        raise InputError(
            f"cube is a {type(cube).__name__}; expected an xarray DataArray (time, band, y, x) or "
            f"(band, y, x) (for a numpy array of one scene use pipeline.predict)"
        )
    if set(cube.dims) not in ({"band", "y", "x"}, set(CUBE_DIMS)) or len(cube.dims) not in (3, 4):
        raise InputError(f"cube dims are {cube.dims}; expected time, band, y, x (in any order) or band, y, x")
    if "band" not in cube.coords:
        raise InputError(
            f"the cube's {cube.sizes['band']} bands have no names; label them, e.g. "
            f"cube.assign_coords(band=['B01', 'B02', ...])"
        )
    kind = cube.dtype.kind
    if kind not in "uif" or cube.dtype == bool:
        raise InputError(f"cube dtype is {cube.dtype}; expected integer DN or float DN with NaN for nodata")
    return cube


def _default_weights(bands) -> str:
    """The shipped starter for the bands a cube has: L1C when one of them is the cirrus band B10, else L2A."""
    from pipeline.catalog.sensors import SENTINEL2_L1C
    from pipeline.detect.weights import default_weights

    aliases = _aliases("sentinel-2")
    names = {_canonical(v, SENTINEL2_L1C.bands, aliases) for values in bands for v in values}
    return default_weights("L1C" if "B10" in names else "L2A")


def _weights_for(weights, bands):
    """``(weights source, meta, sensor or None)``: the weights given (or the starter ``_default_weights`` picks for
    ``bands``, lists of band names)."""
    from pipeline.detect.detectors import detector_weights, weights_sensor

    source = str(weights) if weights is not None else _default_weights(bands)
    loaded = detector_weights(source)
    return source, loaded.meta, weights_sensor(loaded)


def _aliases(sensor_name: str | None) -> dict[str, str]:
    """``{asset key or common name (lower case): band}`` of the sensor family's catalogues (``sensors.PROFILES``:
    Earth Search's keys are the STAC common names, ``nir08`` for B8A, ``rededge1`` for B05)."""
    from pipeline.catalog.sensors import PROFILES

    out: dict[str, str] = {}
    for profile in PROFILES.values():
        if profile.sensor.name == (sensor_name or "sentinel-2"):
            for band, key in profile.assets.items():
                out.setdefault(str(key).lower(), band)
    return out


def _canonical(value, bands: tuple[str, ...], aliases: dict[str, str]) -> str | None:
    """The band of ``bands`` that a cube's band label names (itself, a zero-padding variant, or an alias)."""
    from pipeline.catalog.assets import _normal

    text = str(value)
    if text in bands:
        return text
    normal = _normal(text)
    return next((b for b in bands if _normal(b) == normal), None) or (
        aliases.get(text.lower()) if aliases.get(text.lower()) in bands else None
    )


def _pick_bands(cube, wanted: tuple[str, ...], sensor, weights: str):
    """``cube (time, band, y, x)`` reduced to the ``wanted`` bands in their order; ``InputError`` naming the bands
    missing (or given twice) and what the cube has."""
    from pathlib import Path

    aliases = _aliases(sensor.name if sensor is not None else None)
    labels = [str(v) for v in cube.band.values]
    found: dict[str, int] = {}
    for i, label in enumerate(labels):
        band = _canonical(label, wanted, aliases)
        if band is None:
            continue
        if band in found:
            raise InputError(
                f"cube bands {labels[found[band]]!r} and {label!r} both name {band}; keep one (cube.sel(band=[...]))"
            )
        found[band] = i
    missing = [b for b in wanted if b not in found]
    if missing:
        example = ", ".join(f"{k} ({b})" for k, b in list(aliases.items())[:4])
        raise InputError(
            f"the cube lacks bands {missing} of the {len(wanted)} that {Path(weights).name} reads "
            f"(named as B02/B2 or by asset key/common name, e.g. {example}); its bands: {labels}"
        )
    return cube.isel(band=[found[b] for b in wanted])


def _radiometry(cube, offset, sensor, bands: tuple[str, ...]) -> list:
    """One ``Harmonisation`` per time slice of ``cube`` (see ``mask``)."""
    import warnings

    import numpy as np

    from pipeline.job.plans import RADIOMETRY_KEYS
    from pipeline.read.radiometry import Harmonisation, decide, decide_landsat

    n = cube.sizes["time"]
    if offset != "auto" and (isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0):
        raise ConfigError(
            f"offset={offset!r}; expected 'auto', 1000 (products of processing baseline 04.00 and later) or 0"
        )
    if sensor is not None and sensor.name != "sentinel-2":
        if offset != "auto":
            raise ConfigError(
                f"offset={offset!r} is a Sentinel-2 rule; {sensor.title} DN are scaled by the "
                f"Collection 2 rule: leave offset='auto'"
            )
        wavelengths = dict(zip(sensor.bands, sensor.wavelengths))
        return [decide_landsat(sensor.level, bands, wavelengths, {})] * n
    if offset != "auto":
        return [Harmonisation(int(offset), None, f"offset={int(offset)} given")] * n
    keys = [k for k in (*RADIOMETRY_KEYS, "id") if k in cube.coords and cube[k].dims in ((), ("time",))]
    out = []
    for t in range(n):
        props = {}
        for k in keys:
            value = cube[k].values if cube[k].dims == () else cube[k].values[t]
            value = value.item() if hasattr(value, "item") else value
            if value is not None and value == value:  # NaN: the item had no such property
                props[k] = value
        out.append(decide(props))
    times = np.atleast_1d(cube["time"].values) if "time" in cube.coords else ()
    late = [t for t, h in zip(times, out) if h.baseline is None and _after_0400(t)]
    if late:
        warnings.warn(
            f"offset='auto': {len(late)} of the {n} scenes date from after processing baseline 04.00 "
            f"(January 2022) but the cube has no s2:processing_baseline coordinate for them: nothing "
            f"subtracted; pass offset=1000 if their DN carry the +1000 offset, offset=0 if not",
            UserWarning,
            stacklevel=3,
        )
    return out


def _after_0400(t) -> bool:
    import numpy as np

    try:
        return bool(np.datetime64(t, "s") >= np.datetime64(BASELINE_0400))
    except (TypeError, ValueError):
        return False


def _harmonised_dn(cube, harms: list):
    """``cube``'s data as harmonised uint16 DN (Dask): NaN and the cube's ``nodata`` to 0, float rounded, each
    time slice harmonised (``radiometry.harmonise``)."""
    import dask.array as da
    import numpy as np

    from pipeline.read.radiometry import harmonise

    data = cube.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(1, -1, -1, -1))
    nodata = cube.attrs.get("nodata", cube.attrs.get("_FillValue"))
    zero = da.isnan(data) if data.dtype.kind == "f" else None
    if nodata is not None and np.isfinite(nodata) and nodata != 0:
        marked = data == nodata
        zero = marked if zero is None else zero | marked
    if data.dtype != np.uint16:
        data = data.round() if data.dtype.kind == "f" else data
        data = da.clip(da.nan_to_num(data) if data.dtype.kind == "f" else data, 0, 65535).astype(np.uint16)
    if zero is not None:
        data = da.where(zero, np.uint16(0), data)
    return da.stack([harmonise(data[t], h.offset, h.scale) for t, h in enumerate(harms)]) if len(harms) else data


def _finish(out, cube, probabilities: bool):
    """Masks (or the mask Dataset) with the mask's attributes and the cube's CRS."""
    from pipeline.catalog.sensors import MASK_NODATA

    crs = _crs(cube)
    masks = out["mask"] if probabilities else out
    masks.attrs.update(_FillValue=MASK_NODATA, long_name="cloud mask")
    if crs is not None:
        out = out.rio.write_crs(crs)
    return out


def _crs(cube):
    """The cube's CRS as rioxarray finds it (a ``spatial_ref`` coordinate, a ``crs`` attribute), or None."""
    try:
        import rioxarray  # noqa: F401  (registers .rio)

        return cube.rio.crs
    except Exception:  # noqa: BLE001 - no CRS to carry over
        return None


# -- predict: one array in memory -----------------------------------------------------------------------


def predict(array, weights=None, *, precision: str = "auto", overlap: int | None = None):
    """Classes of one scene in memory: ``array (band, y, x)`` DN in the weights' band order (numpy; integer, or
    float with NaN for nodata; 0 is nodata) -> ``(y, x) uint8`` numpy, 0 clear, 1 thick cloud, 2 thin cloud,
    3 cloud shadow, 255 nodata.

    An ``xarray.DataArray (band, y, x)`` (any dim order) has its bands picked by name as ``mask`` does, and gives
    a ``DataArray (y, x) uint8`` with its ``y``/``x`` coordinates. DN are taken as they are (harmonised: subtract
    the +1000 of Sentinel-2 baseline 04.00 products first, or use ``mask``). ``weights``: a weights file or URL
    (default: the shipped L1C starter; the L2A one for 12 bands or a DataArray without B10). ``precision``,
    ``overlap``: as for ``mask``. Tiles are anchored to the array's origin.

    Example::

        from pipeline.training.datasets.scenes import sen12mscr_patch
        import pipeline
        classes = pipeline.predict(sen12mscr_patch())   # (256, 256) uint8
    """
    import numpy as np
    import xarray as xr

    from pipeline.catalog.sensors import SENTINEL2_L2A
    from pipeline.config import InferSpec
    from pipeline.detect.detectors import get_predictor

    spec = InferSpec(overlap=overlap, precision=precision)
    if isinstance(array, xr.DataArray):
        cube = _as_cube(array)
        if set(cube.dims) != {"band", "y", "x"}:
            raise InputError(
                f"array dims are {cube.dims}; predict takes one scene (band, y, x): use mask for a time series"
            )
        cube = cube.transpose("band", "y", "x")
        weights, meta, sensor = _weights_for(weights, [cube.band.values])
        picked = _pick_bands(cube, meta.bands, sensor, weights)
        classes = predict(np.asarray(picked.values), weights, precision=precision, overlap=overlap)
        coords = {k: c for k, c in picked.coords.items() if "band" not in c.dims}
        out = xr.DataArray(classes, dims=("y", "x"), coords=coords, name="mask")
        out.attrs.update(_mask_attrs())
        crs = _crs(cube)
        return out.rio.write_crs(crs) if crs is not None else out
    image = np.asarray(array)
    if image.ndim != 3:
        raise InputError(f"array has shape {image.shape}; expected (band, y, x)")
    if image.dtype.kind not in "uif" or image.dtype == bool:
        raise InputError(f"array dtype is {image.dtype}; expected integer DN or float DN with NaN for nodata")
    if image.dtype.kind in "ui" and image.dtype not in (np.uint16, np.int16, np.int32, np.int64, np.uint8):
        image = np.clip(image, 0, 65535).astype(np.int32)
    if weights is None:
        from pipeline.detect.weights import default_weights

        weights = default_weights("L2A" if image.shape[0] == len(SENTINEL2_L2A.bands) else "L1C")
    return get_predictor(str(weights), spec).predict(image).classes


def _mask_attrs() -> dict:
    from pipeline.catalog.sensors import CLASS_CODES, MASK_NODATA
    from pipeline.detect.masks import FLAG_MEANINGS

    return {
        "flag_values": list(CLASS_CODES),
        "flag_meanings": FLAG_MEANINGS,
        "nodata": MASK_NODATA,
        "_FillValue": MASK_NODATA,
        "long_name": "cloud mask",
    }


# -- run: the archive job ---------------------------------------------------------------------------------


def _options(spec, given: tuple[str, ...]) -> tuple[str, ...]:
    """The settings of ``spec`` (``pipeline.config``) that ``run`` takes as ``**options``: all but ``given``."""
    from pipeline.config import settings_of

    return tuple(f.name for _, f, _ in settings_of(spec) if f.name not in given)


def run(
    stac_url: str,
    collection: str,
    out: str,
    *,
    bbox=None,
    datetime=None,
    model: str = "mscloudcam",
    weights=None,
    client=None,
    log: Callable[[str], None] | None = None,
    **options,
):
    """What ``cloudmask run`` does, from Python: search ``collection`` at ``stac_url``, check, plan, and write every
    scene's masks and statistics into the Zarr store ``out`` (a folder or ``s3://bucket/prefix``; one group per
    pixel grid with ``mask (time, y, x) uint8``, 255 nodata: read it with ``open_masks``); a re-run skips the
    scenes already done. Returns the statistics of this job's scenes: a ``pandas.DataFrame`` indexed by STAC item
    id, one row per scene: ``status`` (``ok``/``failed``) and ``reason`` (str), ``valid_pixels`` (int),
    ``pct_clear``, ``pct_thick_cloud``, ``pct_thin_cloud``, ``pct_cloud_shadow``, ``cloud_cover``,
    ``pct_overcast_check`` (the cloud the overcast check added, ``pipeline.detect.overcast``; NaN where it did not
    run) and
    ``provider_cloud_cover`` (float, % of the valid pixels), ``processing_baseline``, ``offset_applied`` (int
    DN), ``radiometry``, ``runtime_s``; a failed scene does not raise (see ``status``). ``attrs["store"]`` names
    the store.

    ``bbox``: ``(min_lon, min_lat, max_lon, max_lat)``; ``datetime``: RFC 3339 ``"start/end"`` text, a date or
    datetime, or a ``(start, end)`` pair (None for open). ``model``: the detector, ``mscloudcam`` or a peer
    (``s2cloudless``, ``ukis-csmask``: their classes mapped to ours). ``weights``: MSCloudCAM's weights file or URL
    (default: the shipped starter for the items' level). ``client``: a ``distributed.Client`` to run on (None:
    Dask's local threads in this process). ``log``: called with each progress line (default: the ``pipeline``
    logger at INFO). ``options``: ``intersects`` (GeoJSON), ``max_cloud``, ``limit``; ``overlap``, ``precision``,
    ``batch_size``, ``device``, ``threads`` (``InferSpec``); ``profile``, ``chunk``, ``in_flight``,
    ``probabilities``, ``verify``, ``max_grid``, ``allowed_hrefs`` (``JobSpec``), as the command's options.

    Example::

        import pipeline
        from distributed import Client
        table = pipeline.run("https://earth-search.aws.element84.com/v1", "sentinel-2-l2a", "masks.zarr",
                             bbox=(13.0, 52.3, 13.8, 52.7), datetime="2024-06-01/2024-06-30", client=Client())
        table[["status", "cloud_cover", "provider_cloud_cover"]]
    """
    from pipeline.config import InferSpec, JobSpec, SearchSpec
    from pipeline.store.maskstore import store_path

    search_options = _options(SearchSpec, ("url", "collection", "bbox", "datetime"))
    infer_options, job_options = _options(InferSpec, ()), _options(JobSpec, ("out", "model", "weights"))
    known = (*search_options, *infer_options, *job_options)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown options {unknown}; pipeline.run takes bbox, datetime, model, weights, client, log and "
            f"{', '.join(known)}"
        )
    if client is not None and not callable(getattr(client, "scheduler_info", None)):
        raise ConfigError(
            f"client is a {type(client).__name__}; give a distributed.Client, or None for Dask's local threads"
        )
    pick = lambda names: {k: options[k] for k in names if options.get(k) is not None}  # noqa: E731
    search = SearchSpec(
        str(stac_url), str(collection), bbox=_bbox(bbox), datetime=_datetime(datetime), **pick(search_options)
    )
    job = pick(job_options)
    if "allowed_hrefs" in job:
        hrefs = job["allowed_hrefs"]
        job["allowed_hrefs"] = (hrefs,) if isinstance(hrefs, str) else tuple(hrefs)
    from pipeline.job.execute import run_job
    from pipeline.store.stats import to_frame

    spec = JobSpec(
        search=search,
        out=store_path(out),
        model=str(model),
        weights=None if weights is None else str(weights),
        infer=InferSpec(**pick(infer_options)),
        **job,
    )
    logger = logging.getLogger("pipeline")
    result = run_job(spec, client, log=log or logger.info)
    table = to_frame(result.stats)
    table.attrs.update(store=spec.out, table=result.table_path, skipped=result.skipped)
    return table


def _bbox(bbox):
    if bbox is None:
        return None
    try:
        return tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ConfigError(f"bbox={bbox!r}; expected four numbers (min_lon, min_lat, max_lon, max_lat)") from None


def _datetime(value):
    """RFC 3339 text of a ``datetime`` argument (text, a date or datetime, or a ``(start, end)`` pair)."""

    def text(v):
        if v is None:
            return ".."
        if isinstance(v, _dt.datetime) and v.tzinfo is not None:
            v = v.astimezone(_dt.UTC).replace(tzinfo=None)
        if isinstance(v, (_dt.date, _dt.datetime)):
            return v.isoformat() + ("Z" if isinstance(v, _dt.datetime) else "")
        if isinstance(v, str):
            return v
        raise ConfigError(
            f"datetime={value!r}; expected RFC 3339 text ('2024-06-01/2024-06-30'), a date or datetime, "
            f"or a (start, end) pair"
        )

    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ConfigError(f"datetime={value!r}; a range is a (start, end) pair")
        return "/".join(text(v) for v in value)
    return text(value)


# -- open_masks: a store as a DataTree --------------------------------------------------------------------

_TABLE_TEXT = ("reason", "processing_baseline", "radiometry")


def open_masks(store):
    """The store a job wrote (a folder or an ``s3://`` URL) as an ``xarray.DataTree``, lazily (Dask).

    One child node per pixel grid (e.g. ``epsg32633_...``), each a Dataset with ``mask (time, y, x) uint8``
    (0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow, 255 nodata; CRS in ``spatial_ref`` for rioxarray),
    ``item_id (time)`` and the per-scene statistics as ``(time,)`` variables (``valid_pixels`` int64, ``pct_clear``,
    ``pct_thick_cloud``, ``pct_thin_cloud``, ``pct_cloud_shadow``, ``cloud_cover``, ``provider_cloud_cover`` float32
    in %, ``offset_applied`` int16, ``status`` int8 0 pending/1 ok/2 failed, ``runtime_s``), joined with the
    store's table: ``reason``, ``processing_baseline`` and ``radiometry`` text per scene; ``probability (time,
    class, y, x) uint8`` where the job stored it. The root's attrs say what produced the store (``cloudmask``:
    model, weights sha256, bands, tile, overlap, precision; ``code_version``) and the root's Dataset is the
    whole table along ``scene`` (every scene the store knows, with its ``group``; failed ones too).

    Example::

        import pipeline
        tree = pipeline.open_masks("masks.zarr")
        ds = tree[next(iter(tree.children))].to_dataset()
        clear_sky = (ds.mask == 0).where(ds.mask != 255).mean("time")
    """
    import warnings

    import numpy as np
    import xarray as xr

    from pipeline.store.maskstore import MaskStore

    reader = MaskStore(store, "store", writable=False)
    location = reader.location
    if not location.exists("zarr.json"):
        raise ConfigError(f"{store!r} is not a Zarr store (no zarr.json); give the --out of a cloudmask run")
    groups = reader.groups()
    if not groups:
        raise ConfigError(f"{store!r} has no grid groups; is it a store written by cloudmask run?")
    args = dict(location.zarr_args())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the bookkeeping folder, where metadata is not consolidated
        tree = xr.open_datatree(args.pop("store"), engine="zarr", chunks={}, **args)
    table = _store_table(reader)
    for group in groups:
        ds = tree[group].to_dataset(inherit=False)
        ids = [str(i) for i in ds["item_id"].values]
        for column in _TABLE_TEXT:
            values = [
                _text(table.loc[i, column]) if table is not None and i in table.index and column in table else ""
                for i in ids
            ]
            ds[column] = ("time", np.asarray(values, dtype=object))
        tree[group] = xr.DataTree(ds)
    if table is not None:
        where = {i: g for g in groups for i in map(str, tree[g]["item_id"].values)}
        root = xr.Dataset(
            {c: ("scene", table[c].to_numpy()) for c in table.columns},
            coords={"item_id": ("scene", table.index.astype(str).to_numpy())},
        )
        root["group"] = ("scene", np.asarray([where.get(i, "") for i in root["item_id"].values], dtype=object))
        tree.dataset = root.assign_attrs(tree.attrs)
    return tree


def _store_table(reader):
    """The store's per-scene table (``pandas.DataFrame`` by item id): the table the last job wrote, its rows of
    finished scenes as the manifest records them (exact values, and scenes a stopped job finished since); None
    when there is neither."""
    import pandas as pd

    from pipeline.store.stats import SceneStats, to_frame

    frame = reader.read_table()
    done = [SceneStats.from_row(e["stats"]) for e in reader.done().values() if e.get("stats")]
    if done:
        rows = to_frame(done)
        if frame is not None:  # the table's order, scenes finished since last
            order = [*frame.index, *(i for i in rows.index if i not in frame.index)]
            rows = pd.concat([frame.drop(rows.index, errors="ignore"), rows]).loc[order]
        frame = rows
    if frame is None:
        return None
    text = [c for c in frame.columns if c in _TABLE_TEXT or not pd.api.types.is_numeric_dtype(frame[c])]
    return frame.assign(**{c: pd.Series([_text(v) for v in frame[c]], index=frame.index, dtype=object) for c in text})


def _text(value) -> str:
    return "" if value is None or value != value else str(value)
