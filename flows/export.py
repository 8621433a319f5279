"""``cloudmask export``: one scene's mask from a store as a Cloud-Optimized GeoTIFF, for GDAL, QGIS and others.

The store is Zarr v3, which GDAL cannot read yet ("Unsupported codec: bytes"); the COG carries the mask as stored
(uint8: 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow, nodata 255), the store's CRS and transform, and the
class names as band metadata.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError

from .parsers import subcommand


def add_parser(sub) -> None:
    p = subcommand(
        sub,
        "export",
        "write one scene's mask from a store as a Cloud-Optimized GeoTIFF",
        __doc__,
        [
            "cloudmask export demo-out/masks.zarr --item S2A_MSIL1C_20170216T102101_T33UUU --out mask.tif",
            "cloudmask export masks.zarr --group epsg32633_x330000_y5822040_res10_768x1536 --time 0 --out t0.tif",
        ],
    )
    p.add_argument("store", help="the Zarr store a cloudmask run wrote")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--item", help="the STAC item id of the scene (see cloudmask stats)")
    which.add_argument("--group", help="a grid group of the store, with --time")
    p.add_argument("--time", type=int, help="the scene's index along time in --group (0 = the first)")
    p.add_argument("--out", required=True, help="the .tif file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    import rioxarray  # noqa: F401  (registers .rio)

    from pipeline.catalog.sensors import CLASS_NAMES, MASK_NODATA
    from pipeline.store.maskstore import MaskStore

    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"--out {args.out!r}: give a .tif file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {args.out!r}: its folder {str(out.parent)!r} does not exist")
    store = MaskStore(args.store, "store", writable=False)
    if args.item:
        entry = store.done().get(args.item)
        if entry is None:
            raise ConfigError(
                f"{args.store!r} holds no finished scene {args.item!r}; cloudmask stats {args.store} lists its scenes"
            )
        group, t = entry["group"], int(entry["time_index"])
    else:
        if args.time is None:
            raise ConfigError("--group needs --time (the scene's index along time, 0 = the first)")
        if args.group not in store.groups():
            raise ConfigError(
                f"{args.store!r} has no group {args.group!r}; it has {', '.join(store.groups()) or 'none'}"
            )
        group, t = args.group, args.time
    ds = store.open(group)
    if not 0 <= t < ds.sizes["time"]:
        raise ConfigError(f"--time {t}: group {group} holds {ds.sizes['time']} scenes (0 to {ds.sizes['time'] - 1})")
    mask = ds["mask"].isel(time=t).astype(np.uint8)
    mask = mask.rio.write_crs(ds.rio.crs).rio.write_nodata(MASK_NODATA, encoded=False)
    item_id = str(ds["item_id"].values[t])
    mask.attrs = {"flag_values": "0 1 2 3", "flag_meanings": " ".join(CLASS_NAMES), "item_id": item_id}
    mask.rio.to_raster(
        out, driver="COG", compress="deflate", tags={"flag_meanings": " ".join(CLASS_NAMES), "item_id": item_id}
    )
    print(f"{item_id}: {out} ({mask.sizes['y']} x {mask.sizes['x']} px, {ds.rio.crs}, nodata {MASK_NODATA})")
    return 0
