"""The masking job: search -> per-scene lazy cube -> masks on Dask -> region writes -> manifest + statistics.

Scenes are submitted one graph each, with at most ``in_flight`` computing at once, never one archive-sized
graph. A scene is marked done only after its mask regions are written; a re-run skips done scenes and redoes
the rest (failed or interrupted). A failing scene is recorded with its reason and the job goes on.
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import dask
import dask.array as da
import numpy as np

from .access import Access, access_for, configure, needs_signing, redact, require_signing, sign
from .config import InferSpec, SearchSpec
from .cube import READ_WINDOW, load_scene, unreadable_asset
from .detectors import detector_weights
from .errors import CloudmaskError, ConfigError, raise_if_stopped
from .masks import aligned_chunk, predict_masks, task_prefix
from .model.weights import default_weights
from .plans import ScenePlan, check_items, plan_scene
from .sensors import MASK_NODATA, get_profile
from .stac import search_items
from .stats import SceneStats, to_frame
from .store import MaskStore
from .tiles import TileGrid


FLUSH_S = 5.0  # per-scene statistics variables are written at most this often (the manifest at once)


@dataclass(frozen=True)
class JobSpec:
    """Everything a run needs besides the Dask client."""

    search: SearchSpec
    out: str
    profile: str | None = None  # an asset-key override for catalogues without band metadata (sensors.PROFILES)
    weights: str | None = None
    infer: InferSpec = field(default_factory=InferSpec)
    chunk: int = 2048
    in_flight: int | None = None  # scenes computing at once; None: sized to the cluster (``scenes_in_flight``)
    strict: bool = False
    probabilities: bool = False  # also store probability (time, class, y, x) uint8
    verify: bool = False  # read back the done scenes first and redo the damaged ones (pipeline.integrity)

    def __post_init__(self):
        if self.chunk < 1:
            raise ConfigError(f"chunk={self.chunk} must be at least 1: the Dask block side in pixels (default 2048; "
                              f"rounded down to a multiple of the tile stride, at least one stride)")


@dataclass
class JobResult:
    stats: list[SceneStats]
    skipped: int
    table_path: str

    @property
    def failed(self) -> list[SceneStats]:
        return [s for s in self.stats if s.status == "failed"]


def _scene_graph(item, plan: ScenePlan, chunk: int, spec: JobSpec, targets: dict, t: int,
                 client=None, gpu: bool = False, priority: int = 0, *, read: int, access: Access):
    """The lazy work of one scene: a delayed ``(counts (256,) int64, Harmonisation)``: its mask as written and
    the radiometry applied, and what must be kept referenced until it is done (the persisted masks). The model
    runs once per block: the counts are read back from the written region (a mask is 1/26 of the input's
    bytes), not computed from the mask graph a second time. ``item`` is signed here when the assets it reads
    are Planetary Computer blobs, so tokens are fresh when each scene's work is built.

    ``targets``: the group's zarr arrays (``MaskStore.region_targets``); the scene's blocks are stored into
    time slot ``t`` with ``da.store``, whole Zarr chunks each (block edges are multiples of the chunk).
    With a ``client`` the masks are first persisted on the workers as their own graph, unfused: fusion would
    drop the model tasks' GPU annotation. ``priority``: Dask's (higher first), so scenes submitted earlier are
    read first and finish first. ``read``: the side of the windows the scene is read in (fixed, not ``chunk``:
    see ``cube.READ_WINDOW``)."""
    if needs_signing(item, plan.assets.values()):
        item = sign(item)
    cube = load_scene(item, plan, read, access)
    out = predict_masks(cube.data, plan.model, spec.infer, chunk=chunk, names=[item.id], probabilities=spec.probabilities,
                        gpu=gpu)
    arrays = {"mask": (("time", "y", "x"), (out["mask"].data if spec.probabilities else out.data)[:1])}
    if spec.probabilities:
        arrays["probability"] = (("time", "class", "y", "x"), out["probability"].data)
    persisted = []
    if client is not None:  # one graph, unfused (fusion also drops annotations), computing from now on
        persisted = client.persist([a for _, a in arrays.values()], optimize_graph=not gpu, priority=priority)
        arrays = {k: (dims, a) for (k, (dims, _)), a in zip(arrays.items(), persisted)}
    sources = [a for _, a in arrays.values()]
    write = da.store(sources, [targets[k] for k in arrays], regions=[(slice(t, t + 1),) for _ in sources],
                     lock=False, compute=False)
    name = f"{task_prefix(item.id, 'counts')}-{dask.base.tokenize(item.id, t, write)}"
    counted = dask.delayed(_written_counts, name=name, pure=True)(write, targets["mask"], t, cube.harmonisation)
    return counted, persisted


def _written_counts(_written, mask, t: int, harmonisation):
    """``((256,) int64 pixel counts per mask value of scene t as stored (after _written), harmonisation)``;
    ``mask``: the group's mask array (zarr)."""
    return np.bincount(np.asarray(mask[t]).ravel(), minlength=256), harmonisation


def provenance(spec: JobSpec, loaded) -> dict:
    """What the masks of this run depend on (``store.PROVENANCE``), for the store's one-model check."""
    meta = loaded.meta
    tile = spec.infer.tile or meta.tile_size
    return {"model": meta.model, "weights_sha256": loaded.sha256, "bands": list(meta.bands),
            "classes": list(meta.classes), "tile": tile, "overlap": spec.infer.overlap_for(tile),
            "precision": spec.infer.precision, "probabilities": spec.probabilities}


def job_weights(spec: JobSpec, items: list | None = None) -> str:
    """The weights a job runs: ``spec.weights``, else the shipped starter for the items' processing level (the
    first item's sensor; before the search: the profile's, else ``l2a`` in the collection's name), so a plain
    run on an L2A collection gets the L2A starter (no B10) and on L1C the L1C one."""
    if spec.weights:
        return str(spec.weights)
    from .assets import sensor_of

    level = "L1C"
    if items:
        try:
            level = sensor_of(items[0]).level
        except CloudmaskError:
            pass  # check_items says what is wrong with the item
    elif spec.profile:
        level = get_profile(spec.profile).sensor.level
    elif "l2a" in spec.search.collection.lower():
        level = "L2A"
    return default_weights(level)


def check_job(spec: JobSpec, items: list | None = None):
    """``(profile or None, weights path, loaded weights)`` once the weights (``job_weights``) are readable and
    suit the tile overlap, ``--out`` is a usable folder and, for an existing store, the run's model and settings
    are the store's and no other job is writing it; raises before any work (or cluster) starts otherwise. Whether
    the weights suit the items is checked once they are found (``check_search``)."""
    profile = get_profile(spec.profile) if spec.profile else None
    weights = job_weights(spec, items)
    loaded = detector_weights(weights)
    meta = loaded.meta
    store = MaskStore(spec.out)
    store.check_provenance(provenance(spec, loaded))
    store.check_free()  # a busy store is refused before any search or cluster
    tile = spec.infer.tile or meta.tile_size
    if not 0 <= 2 * spec.infer.overlap_for(tile) < tile:
        raise CloudmaskError(f"overlap={spec.infer.overlap_for(tile)} must be at least 0 and less than half the "
                             f"weights' {tile} px tile; pass a smaller --overlap")
    return profile, weights, loaded


def check_search(spec: JobSpec) -> list:
    """Search, then check the first items against the model (bands, sensor and level, grid) and the access
    they need (signing installed): the items found; ``PreflightError``/``ConfigError`` before anything starts."""
    checked = check_job(spec)  # weights, store and lock before the search
    items = search_items(spec.search)
    if job_weights(spec, items) != checked[1]:  # the items' level picks another starter: check that one
        checked = check_job(spec, items)
    profile, _, loaded = checked
    item, plan = check_items(items, loaded, f"{spec.search.collection!r} at {spec.search.url}", profile)
    if needs_signing(item, plan.assets.values()):
        require_signing()
    return items


def store_table(store: MaskStore, results: list[SceneStats]):
    """The whole store's table: this run's rows, then every other scene the store holds (finished ones from the
    manifest, the rest from the previous table), so a narrower re-run never shrinks it."""
    import pandas as pd

    frame = to_frame(results)
    others = [SceneStats.from_row(e["stats"]) for i, e in store.done().items()
              if e.get("stats") and i not in frame.index]
    if others:
        frame = pd.concat([frame, to_frame(others)])
    old = store.read_table()
    if old is not None:
        old = old[~old.index.isin(frame.index)]
        if len(old):
            frame = pd.concat([frame, old[[c for c in frame.columns if c in old.columns]]])
    return frame


def scenes_in_flight(client, fixed: int | None = None) -> int:
    """Scenes to keep computing at once: ``fixed`` when given, else two per model slot of the cluster as it is
    now (its workers' ``GPU`` resources where they have any, else one per worker: each runs one model thread), so
    every model has a scene's blocks queued behind the one it runs; at least 2. Workers hold the data and Dask
    bounds their memory: more scenes in flight means more queued tasks, not more pixels held."""
    if fixed:
        return max(1, fixed)
    if client is None:
        return 2
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    gpus = sum(int(w.get("resources", {}).get("GPU", 0)) for w in workers)
    return max(2, 2 * (gpus or len(workers)))


def gpu_workers(client) -> int:
    """Workers of ``client``'s cluster that advertise a ``GPU`` resource (0 without a client)."""
    if client is None:
        return 0
    return sum(1 for w in client.scheduler_info(n_workers=-1)["workers"].values() if w.get("resources", {}).get("GPU"))


def run_job(spec: JobSpec, client=None, log: Callable[[str], None] = print, items: list | None = None) -> JobResult:
    """Run the job on ``client`` (a ``distributed.Client``; None: Dask's local threads); ``items``: those
    ``check_search`` found (searched and checked here when None).

    Where workers advertise a ``GPU`` resource, the model tasks ask for one (so they run only there, one
    at a time per GPU); each GPU worker returns PyTorch's cached memory when its model falls idle."""
    if items is None:
        items = check_search(spec)
    profile, weights, loaded = check_job(spec, items)
    meta = loaded.meta
    access = access_for(items)
    configure(access)
    gpus = gpu_workers(client)
    gpu = gpus > 0
    if gpu:
        log(f"{gpus} GPU workers: model tasks ask for the GPU resource")
    log(f"found {len(items)} scenes in {spec.search.collection!r} at {spec.search.url}")
    store = MaskStore(spec.out)
    tile = spec.infer.tile or meta.tile_size
    stride = TileGrid(tile, spec.infer.overlap_for(tile)).stride
    chunk, read = aligned_chunk(spec.chunk, stride), aligned_chunk(READ_WINDOW, stride)
    results: list[SceneStats] = []
    with store.lock():
        log(f"writing {spec.out} (locked for this job)")
        store.check_provenance(provenance(spec, loaded))  # again, under the lock
        store.write_provenance(provenance(spec, loaded))
        by_grid: dict = {}
        plans: dict[str, ScenePlan] = {}
        failed_early = []
        for item in items:
            try:
                plans[item.id] = plan = plan_scene(item, loaded, profile)
                by_grid.setdefault(plan.grid, []).append(item)
            except CloudmaskError as exc:
                failed_early.append(SceneStats(item.id, str(item.datetime), "failed", str(exc)))
                log(f"{item.id}: failed before reading: {exc}")
        work = []
        for grid, its in by_grid.items():
            group = store.ensure_group(grid, [np.datetime64(i.datetime.replace(tzinfo=None)) for i in its],
                                       [i.id for i in its], (chunk, chunk),
                                       attrs={"model": meta.model, "weights_sha256": loaded.sha256,
                                              "stac_api": spec.search.url, "collection": spec.search.collection},
                                       probabilities=spec.probabilities)
            index = store.scene_index(group)  # scenes already there keep their places; new ones were appended
            work += [(item, group, index[item.id]) for item in its]
        store.consolidate()  # the layout is complete: one metadata document for readers
        run = uuid.uuid4().hex  # this run's write tasks are its own (store.RegionTarget)
        targets = {group: store.region_targets(group, run) for group in {w[1] for w in work}}
        if spec.verify:
            from .integrity import verify_store

            checks = verify_store(store, repair=True, log=log)
            log(f"verified {len(checks)} done scenes: {sum(1 for c in checks if c.problem)} damaged, redone below")
        done = store.done()
        store.sync_stats(done)  # statistics of scenes a stopped job finished after its last flush
        todo = [w for w in work if w[0].id not in done]
        skipped = len(work) - len(todo)
        if skipped:
            log(f"skipping {skipped} scenes already done in {spec.out} (resume)")
        in_job = {w[0].id for w in work}
        results += [SceneStats.from_row(e["stats"]) for e in done.values()
                    if e.get("stats") and e["stats"]["item_id"] in in_job]
        results += failed_early
        pending: list = []
        queue = collections.deque(todo)
        total = len(todo)
        finished = 0
        flushed = time.monotonic()

        def finish(entry, outcome):
            nonlocal finished, flushed
            item, group, t, start, built = entry
            harm = None if isinstance(outcome, BaseException) else outcome[1]
            stats = SceneStats(item.id, str(item.datetime),
                               provider_cloud_cover=float(item.properties.get("eo:cloud_cover", float("nan"))),
                               processing_baseline=str((harm.baseline or "") if harm else ""),
                               offset_applied=int(harm.offset if harm else 0),
                               radiometry=harm.reason if harm else "")
            if isinstance(outcome, BaseException):
                culprit = unreadable_asset(item, plans[item.id], access) if built else None
                stats.status = "failed"
                stats.reason = redact(f"{culprit + '; ' if culprit else ''}{type(outcome).__name__}: {outcome}")[:2000]
            else:
                counts = np.asarray(outcome[0])
                stats.set_counts(np.append(counts[:4], counts[MASK_NODATA]))
                stats.status = "ok" if stats.valid_pixels else "failed"
                if not stats.valid_pixels:
                    stats.reason = "no valid pixels: the scene is entirely nodata"
            stats.runtime_s = round(time.time() - start, 2)
            store.write_scene_stats(group, t, stats)
            if stats.status == "ok":
                store.mark_done(item.id, {"status": "ok", "group": group, "time_index": t, "stats": stats.row()})
            finished += 1
            detail = f"{stats.cloud_cover:.1f} % cloud" if stats.status == "ok" else stats.reason
            log(f"[{finished}/{total}] {item.id}: {stats.status}, {detail} ({stats.runtime_s:.1f} s)")
            results.append(stats)
            if time.monotonic() - flushed > FLUSH_S:
                store.flush_stats()
                flushed = time.monotonic()

        in_flight, sized = scenes_in_flight(client, spec.in_flight), time.monotonic()
        while queue or pending:
            raise_if_stopped()  # a SIGTERM/SIGINT whose exception was swallowed where it landed
            if spec.in_flight is None and time.monotonic() - sized > 2:  # workers join and leave (adaptive scaling)
                in_flight, sized = scenes_in_flight(client), time.monotonic()
            while queue and len(pending) < in_flight:
                raise_if_stopped()
                item, group, t = queue.popleft()
                start = time.time()
                try:
                    counted, keep = _scene_graph(item, plans[item.id], chunk, spec, targets[group], t, client, gpu,
                                                 priority=len(queue), read=read, access=access)
                except Exception as exc:  # noqa: BLE001 - a bad scene must not stop the job
                    finish((item, group, t, start, False), exc)
                    continue
                if client is None:
                    try:
                        finish((item, group, t, start, True), counted.compute())
                    except Exception as exc:  # noqa: BLE001
                        finish((item, group, t, start, True), exc)
                    continue
                # one future per scene; its masks are already computing
                future = client.compute(counted, priority=len(queue))
                pending.append(((item, group, t, start, True), (future, keep)))
            if pending:
                from distributed import wait

                # unbounded: a stop signal raises here; one swallowed elsewhere is raised at the next check
                wait([f for _, (f, _) in pending], return_when="FIRST_COMPLETED")
                still = []
                for entry, (future, keep) in pending:
                    if future.done():
                        try:
                            finish(entry, future.result())
                        except Exception as exc:  # noqa: BLE001
                            finish(entry, exc)
                    else:
                        still.append((entry, (future, keep)))
                pending = still
        store.flush_stats()
    order = {w[0].id: i for i, w in enumerate(work)}
    results.sort(key=lambda s: order.get(s.item_id, -1))
    return JobResult(results, skipped, store.write_table(store_table(store, results)))
