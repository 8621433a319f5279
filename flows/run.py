"""``cloudmask run`` (mask an archive) and ``cloudmask stats`` (the per-scene table of a store)."""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import ConfigError

from .settings import add_options, job_file_keys, job_spec, launch, resolve

settings = resolve  # the job's settings from --config and the options (flows/settings.py)


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
        "job.yaml keys: " + job_file_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML job file with the same fields (command-line options override it)")
    add_options(p)
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


SHOWN = {
    "status": "status",
    "valid_pixels": "valid px",
    "pct_clear": "clear %",
    "pct_thick_cloud": "thick %",
    "pct_thin_cloud": "thin %",
    "pct_cloud_shadow": "shadow %",
    "cloud_cover": "cloud %",
    "pct_overcast_check": "overcast check %",
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


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    spec = job_spec(s)
    result = execute(spec, s)
    if result.failed and len(result.failed) == len(result.stats):
        print(
            f"cloudmask run: every scene failed ({len(result.failed)}); the first: {result.failed[0].item_id}: "
            f"{result.failed[0].reason}",
            file=sys.stderr,
        )
        return 1
    return 1 if spec.strict and result.failed else 0


def execute(spec, s: dict):
    """Start the cluster ``s`` asks for (or connect to ``s['scheduler']``), run ``spec`` on it, print the
    dashboard link, progress and the statistics table; return the JobResult."""
    from pipeline.job.execute import check_search, run_job
    from pipeline.store.stats import to_frame

    from .clusters import check_recipe, check_scheduler, load_recipe, start, warm_workers

    recipe, where = None, launch(s)
    if where.scheduler:
        check_scheduler(where.scheduler)
    else:  # a recipe this machine cannot run is refused first
        recipe = load_recipe(where.cluster, where.cluster_options, where.workers)
        check_recipe(recipe)
        warm_workers(recipe)
    # bad or missing weights, a failed search, and items the model cannot run fail before any cluster starts
    items = check_search(spec)
    print(
        f"found {len(items)} scenes in {spec.search.collection!r} at {spec.search.url}; the first suit the model",
        flush=True,
    )
    from distributed import Client

    if recipe is None:
        cluster, client = None, Client(where.scheduler)
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
