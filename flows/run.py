"""``cloudmask run`` (mask an archive) and ``cloudmask stats`` (the per-scene table of a store)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import BLOCK
from pipeline.detect.peers import DETECTORS
from pipeline.errors import ConfigError

from .parsers import yaml_mapping

FIELDS = (
    "stac_url",
    "collection",
    "bbox",
    "datetime",
    "max_cloud",
    "limit",
    "out",
    "model",
    "weights",
    "profile",
    "scheduler",
    "cluster",
    "cluster_options",
    "workers",
    "chunk",
    "in_flight",
    "strict",
    "overlap",
    "precision",
    "probabilities",
    "verify",
    "max_grid",
    "allowed_hrefs",
)
# what each job-file field holds (the command line's options parse theirs): YAML numbers, true/false, text
WHOLE = {"limit": 100, "workers": 4, "chunk": BLOCK, "in_flight": 4, "overlap": 32, "max_grid": 40000}  # examples
SWITCHES = ("strict", "probabilities", "verify")
TEXTS = (
    "stac_url",
    "collection",
    "datetime",
    "out",
    "model",
    "weights",
    "profile",
    "scheduler",
    "cluster",
    "precision",
)
DEFAULTS = dict(
    profile=None,
    cluster="local",
    workers=None,
    chunk=BLOCK,
    in_flight=None,
    strict=False,
    overlap=None,
    probabilities=False,
    verify=False,
    max_grid=None,
    allowed_hrefs=None,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="mask the scenes a STAC search finds into a Zarr cloud-mask cube",
        description="Searches a STAC API, loads each scene lazily, runs the model on Dask workers and writes "
        "masks and per-scene statistics to a Zarr v3 store. Re-running the same job skips the "
        "scenes already done. Every option can also come from a YAML job file (--config).",
        epilog="examples:\n"
        "  cloudmask run --stac-url http://127.0.0.1:8081 --collection sentinel-2-l1c --out masks.zarr\n"
        "  cloudmask run --stac-url https://earth-search.aws.element84.com/v1 --collection sentinel-2-l2a \\\n"
        "      --model ukis-csmask --bbox 13.0,52.3,13.8,52.7 --datetime 2024-06-01/2024-06-30 --out l2a.zarr\n"
        "  cloudmask run --config job.yaml --scheduler tcp://10.0.0.5:8786\n"
        "  cloudmask run --config job.yaml --cluster slurm --workers 8\n"
        "job.yaml keys: " + ", ".join(FIELDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML job file with the same fields (command-line options override it)")
    p.add_argument("--stac-url", help="STAC API root URL")
    p.add_argument("--collection", help="collection id, e.g. sentinel-2-l1c")
    p.add_argument(
        "--bbox", help="min_lon,min_lat,max_lon,max_lat (write --bbox=-10,35,5,45 when it starts with a minus)"
    )
    p.add_argument("--datetime", help="RFC 3339 range, e.g. 2023-01-01/2023-06-30")
    p.add_argument("--max-cloud", type=float, help="maximum provider eo:cloud_cover (%%)")
    p.add_argument("--limit", type=int, help="at most this many scenes")
    p.add_argument(
        "--out",
        help="output Zarr store: a folder, or s3://bucket/prefix.zarr (AWS credentials as usual; "
        "AWS_ENDPOINT_URL for S3-compatible services)",
    )
    p.add_argument(
        "--model",
        choices=DETECTORS,
        help="mscloudcam (default, with --weights) or a peer detector through the same pipeline, its "
        "classes mapped to ours (see pipeline/detect/peers.py); compare cubes with `cloudmask compare`",
    )
    p.add_argument("--weights", help="weights file or URL (default: the shipped starter weights)")
    p.add_argument(
        "--profile",
        help="asset-key override for a catalogue whose assets carry no band metadata "
        "(eo:bands/bands); not needed for Earth Search, Planetary Computer, CDSE, USGS "
        "or the demo, whose bands, sensor and level are read from the items "
        "(profiles: pipeline/catalog/sensors.py)",
    )
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://127.0.0.1:8786")
    p.add_argument(
        "--cluster",
        help="cluster recipe (deploy/clusters: local, gpu, slurm, kubernetes) or a recipe "
        ".yaml path, when no --scheduler (default: local); see `cloudmask cluster list`",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="workers to start (local: processes, default 1 with a thread per core; slurm: jobs; kubernetes: pods)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        help=f"Dask block side in pixels, rounded down to a multiple of the tile stride (default: {BLOCK})",
    )
    p.add_argument(
        "--in-flight",
        type=int,
        help="scenes computing at once (default: two per GPU, or per worker "
        "without GPUs, re-read as workers join and leave)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        help="tile overlap in pixels (default: an eighth of the weights' tile: 32 "
        "for the starter weights' 256 px, 64 for 512 px)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="model precision (default: auto = bf16 on GPUs and on CPUs with native bf16, fp32 otherwise)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        default=None,
        help="also store probability (time, class, y, x) uint8, p x 250 (four times the mask's size)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        default=None,
        help="before resuming, read back every scene marked done and redo those whose masks are lost or "
        "damaged (see cloudmask verify)",
    )
    p.add_argument(
        "--max-grid",
        type=int,
        metavar="PX",
        help="largest scene side accepted, in pixels (default: 32768; a Sentinel-2 tile is 10,980): items "
        "declaring larger grids fail with their reason",
    )
    p.add_argument(
        "--allowed-hrefs",
        metavar="PATTERNS",
        help="comma-separated patterns (fnmatch) every asset href must match, e.g. "
        "'s3://sentinel-cogs/*,https://sentinel-cogs.s3.*'; items naming other places fail (default: "
        "any href: workers read whatever the items of the catalogue you chose name)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="exit 1 if any scene failed (without it: only when every scene failed)",
    )
    p.set_defaults(func=run)

    s = sub.add_parser(
        "stats",
        help="print (or export) the per-scene statistics of a store",
        description="The per-scene table a job wrote: valid pixels, class fractions, cloud cover, "
        "the provider's cloud cover, baseline, offset, status and reason, runtime.",
    )
    s.add_argument("store", help="the Zarr store a cloudmask run wrote")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--csv", help="also write the table as CSV")
    g.add_argument("--parquet", help="also write the table as Parquet")
    s.set_defaults(func=run_stats)

    v = sub.add_parser(
        "verify",
        help="check that every scene a store marks done is intact",
        description="Reads back every scene the store's manifest marks done: its mask chunks must "
        "exist and decode, and its class counts must equal the statistics recorded when "
        "it was written. Exit status 1 if any scene is damaged (0 with --repair, which "
        "marks them for the next cloudmask run to redo).",
    )
    v.add_argument("store", help="the Zarr store a cloudmask run wrote")
    v.add_argument("--repair", action="store_true", help="mark damaged scenes for redo (the next run redoes them)")
    v.set_defaults(func=run_verify)


def settings(args) -> dict:
    conf: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"job file {args.config!r} does not exist")
        conf = yaml_mapping(path, "job file")
        unknown = set(conf) - set(FIELDS)
        if unknown:
            raise ConfigError(f"{args.config}: unknown keys {sorted(unknown)}; known keys: {', '.join(FIELDS)}")
        conf = {k: _job_value(args.config, k, v) for k, v in conf.items()}
    out = dict(DEFAULTS, **conf)
    out.update({k: v for k, v in vars(args).items() if k in FIELDS and v is not None})
    for key in ("stac_url", "collection", "out"):
        if not out.get(key):
            raise ConfigError(f"--{key.replace('_', '-')} is required (or '{key}' in the --config job file)")
    if out.get("model") not in (None, "mscloudcam"):
        if out.get("weights"):
            raise ConfigError(f"--model {out['model']} brings its own trained model; drop --weights {out['weights']}")
        out["weights"] = out["model"]  # the peers stand in for a weights file (pipeline.detect.peers.peer_weights)
    if out.get("in_flight") is not None and int(out["in_flight"]) < 1:
        raise ConfigError(
            f"--in-flight {out['in_flight']} must be at least 1 (or left out: two scenes per GPU or worker)"
        )
    if isinstance(out.get("allowed_hrefs"), str):
        out["allowed_hrefs"] = [p.strip() for p in out["allowed_hrefs"].split(",") if p.strip()]
    if out.get("allowed_hrefs") is not None and not out["allowed_hrefs"]:
        raise ConfigError("--allowed-hrefs is empty; give patterns such as 's3://sentinel-cogs/*', or leave it out")
    if isinstance(out.get("bbox"), str):
        try:
            out["bbox"] = tuple(float(v) for v in out["bbox"].split(","))
        except ValueError:
            raise ConfigError(f"--bbox {out['bbox']!r} must be four numbers: min_lon,min_lat,max_lon,max_lat") from None
    return out


def _job_value(path: str, key: str, value):
    """A job file's ``value`` of ``key``, checked against what the field holds (a date YAML read as one becomes
    its ISO text); a ConfigError naming the file, key and value otherwise."""
    import datetime

    def wrong(expected: str):
        return ConfigError(f"{path}: {key}: {value!r}; expected {expected}")

    if value is None:
        return value
    if key == "datetime" and isinstance(value, datetime.date):  # datetime: 2024-06-01, unquoted
        return value.isoformat()
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in WHOLE and not (number and float(value).is_integer()):
        raise wrong(f"a whole number, e.g. {key}: {WHOLE[key]}")
    if key == "max_cloud" and not number:
        raise wrong("a percentage, e.g. max_cloud: 30")
    if key in SWITCHES and not isinstance(value, bool):
        raise wrong(f"true or false, e.g. {key}: true")
    if key in TEXTS and not isinstance(value, str):
        raise wrong(f'text, e.g. {key}: "..." (quoted)')
    if (
        key == "allowed_hrefs"
        and not isinstance(value, str)
        and not (isinstance(value, list) and all(isinstance(v, str) for v in value))
    ):
        raise wrong('patterns, e.g. allowed_hrefs: ["s3://sentinel-cogs/*"]')
    if (
        key == "bbox"
        and not isinstance(value, str)
        and not (
            isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )
    ):
        raise wrong("four numbers, e.g. bbox: [13.0, 52.3, 13.8, 52.7]")
    return value


SHOWN = {
    "status": "status",
    "valid_pixels": "valid px",
    "pct_clear": "clear %",
    "pct_thick_cloud": "thick %",
    "pct_thin_cloud": "thin %",
    "pct_cloud_shadow": "shadow %",
    "cloud_cover": "cloud %",
    "provider_cloud_cover": "provider cloud %",
    "offset_applied": "offset",
    "runtime_s": "s",
    "reason": "reason",
}


def table_text(frame) -> str:
    """The statistics table as people read it: every class's share of the valid pixels and the cloud cover in %
    (the provider's beside it), an empty reason for scenes that are fine."""
    shown = frame[[c for c in SHOWN if c in frame.columns]].copy()
    shown["reason"] = shown["reason"].fillna("").astype(str)
    return shown.rename(columns=SHOWN).to_string(float_format=lambda v: f"{v:.2f}", max_colwidth=60)


def job_spec(s: dict):
    """The JobSpec of resolved settings ``s`` (see ``settings``); the search, inference and store settings are
    checked before the job's modules (torch, dask) load, so a wrong value is answered at once."""
    from pipeline.config import InferSpec, SearchSpec
    from pipeline.store.maskstore import store_path

    search = SearchSpec(
        s["stac_url"],
        s["collection"],
        bbox=tuple(s["bbox"]) if s.get("bbox") else None,
        datetime=s.get("datetime"),
        max_cloud=s.get("max_cloud"),
        limit=s.get("limit"),
    )
    infer = InferSpec(
        overlap=None if s.get("overlap") is None else int(s["overlap"]), precision=s.get("precision") or "auto"
    )
    out = str(store_path(s["out"]))
    from pipeline.job.execute import JobSpec

    return JobSpec(
        search=search,
        out=out,
        profile=s["profile"],
        weights=s.get("weights"),
        infer=infer,
        chunk=int(s["chunk"]),
        in_flight=None if s.get("in_flight") is None else int(s["in_flight"]),
        strict=bool(s["strict"]),
        probabilities=bool(s["probabilities"]),
        verify=bool(s["verify"]),
        **({"max_grid": int(s["max_grid"])} if s.get("max_grid") is not None else {}),
        allowed_hrefs=tuple(s["allowed_hrefs"]) if s.get("allowed_hrefs") else None,
    )


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    result = execute(job_spec(s), s)
    if result.failed and len(result.failed) == len(result.stats):
        print(
            f"cloudmask run: every scene failed ({len(result.failed)}); the first: {result.failed[0].item_id}: "
            f"{result.failed[0].reason}",
            file=sys.stderr,
        )
        return 1
    return 1 if s["strict"] and result.failed else 0


def execute(spec, s: dict):
    """Start the cluster ``s`` asks for (or connect to ``s['scheduler']``), run ``spec`` on it, print the
    dashboard link, progress and the statistics table; return the JobResult."""
    from pipeline.job.execute import check_search, run_job
    from pipeline.store.stats import to_frame

    from .clusters import check_recipe, check_scheduler, load_recipe, start

    recipe = None
    if s.get("scheduler"):
        check_scheduler(s["scheduler"])
    else:  # a recipe this machine cannot run is refused first
        recipe = load_recipe(
            str(s["cluster"]), s.get("cluster_options"), int(s["workers"]) if s.get("workers") is not None else None
        )
        check_recipe(recipe)
    # bad or missing weights, a failed search, and items the model cannot run fail before any cluster starts
    items = check_search(spec)
    print(
        f"found {len(items)} scenes in {spec.search.collection!r} at {spec.search.url}; the first suit the model",
        flush=True,
    )
    from distributed import Client

    if recipe is None:
        cluster, client = None, Client(s["scheduler"])
    else:
        print(f"starting the {recipe['engine']} cluster of {recipe['path']}", flush=True)
        cluster, client = start(recipe)
    try:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        result = run_job(spec, client, log=lambda line: print(line, flush=True), items=items)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    print(table_text(to_frame(result.stats)))
    for failed in result.failed:  # the table cuts reasons short; here they are whole
        print(f"failed {failed.item_id}: {failed.reason}")
    print(f"store: {spec.out}; table: {result.table_path}; {len(result.failed)} failed, {result.skipped} skipped")
    return result


def run_stats(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipeline.store.maskstore import MaskStore
    from pipeline.store.stats import SceneStats, table_path, to_frame, write_table

    for path in (args.csv, args.parquet):  # a file that cannot be written is refused before the table is read
        if path:
            table_path(path)
    store = MaskStore(args.store, "store", writable=False)
    table = "_cloudmask/scenes.csv"
    done = {k: e["stats"] for k, e in store.done().items() if e.get("stats")}
    frame = store.read_table()
    if frame is None and not done:
        raise ConfigError(
            f"{args.store!r} has no statistics table ({table}) and no finished scene; is it a store "
            f"written by cloudmask run?"
        )
    # the table is written when a job ends; scenes finished since (by a job that was stopped) come from the manifest
    rows = [
        SceneStats.from_row(row)
        for k, row in done.items()
        if frame is None or k not in frame.index or frame.loc[k, "status"] != "ok"
    ]
    if rows:
        newer = to_frame(rows)
        frame = newer if frame is None else pd.concat([frame.drop(newer.index, errors="ignore"), newer])
        print(
            f"{len(newer)} finished scenes are not in {table} yet (a job was stopped or is running); "
            f"shown from the manifest"
        )
    print(table_text(frame))
    for path in (args.csv, args.parquet):
        if path:
            write_table(frame, path)
            print(f"written to {path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from pipeline.store.integrity import verify_store
    from pipeline.store.maskstore import MaskStore

    store = MaskStore(args.store, "store", writable=args.repair)
    if not store.has_manifest():
        raise ConfigError(
            f"{args.store!r} has no manifest (_cloudmask/manifest); is it a store written by cloudmask run?"
        )
    found = verify_store(store, repair=args.repair)
    bad = found.damaged
    what = "marked for redo: run the same cloudmask run again" if args.repair else "run with --repair to redo them"
    print(
        f"{len(found.scenes)} scenes checked, {len(found.scenes) - len(bad)} intact, {len(bad)} damaged"
        f"{f' ({what})' if bad else ''}"
    )
    for group, problem in found.groups.items():
        rebuilt = any(r.startswith(f"{group}:") for r in found.rebuilt)
        print(
            f"group {group}: {problem}"
            + (
                " (rebuilt from the manifest)"
                if rebuilt
                else ""
                if args.repair
                else " (run with --repair to rebuild what the manifest can; scenes whose masks are lost are redone)"
            )
        )
    unrepaired = len(found.groups) - len(found.rebuilt)
    return 1 if (bad and not args.repair) or (found.groups and not args.repair) or (args.repair and unrepaired) else 0
