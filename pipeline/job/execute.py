"""The masking job: search and check -> ``plan_job`` (metadata only) -> ``JobRun``: the plan executed on Dask.

Executing a plan takes the store's writer lock, checks and records the model (one per store), writes each grid
group's template, then submits each scene as one small graph -- a task per block (read, predict, write its chunks;
``pipeline.job.tasks``) and the sum of the blocks' counts -- with at most ``in_flight`` scenes at once, earlier scenes
first. The client keeps the books: a scene is marked done
in the manifest once its blocks are written; a re-run skips done scenes and redoes the rest. A scene that fails is
recorded with its reason and the job goes on; the job's own bookkeeping failing (a lost lease, a store that cannot
be written, weights that changed) is never a scene failure: the job stops with one line (``JobStopped``).
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.catalog.access import Access, access_for, needs_signing, redact, require_signing, sign
from pipeline.catalog.sensors import get_profile
from pipeline.catalog.stac import search_items
from pipeline.config import BLOCK, InferSpec, JobSpec, SearchSpec  # noqa: F401 (JobSpec: where the job is)
from pipeline.detect.detectors import detector, detector_weights
from pipeline.detect.tiles import TileGrid
from pipeline.errors import CloudmaskError, InputError, JobStopped, WeightsChangedError, raise_if_stopped
from pipeline.job.plans import JobPlan, PreflightError, ScenePlan, check_items, plan_job
from pipeline.job.tasks import ModelRef, Writer, mask_block, scene_counts, task_prefix
from pipeline.read.bands import check_files
from pipeline.retries import retrying, transient
from pipeline.store.locks import LeaseLostError, lease_seconds
from pipeline.store.maskstore import MaskStore
from pipeline.store.stats import SceneStats, to_frame

FLUSH_S = 5.0  # per-scene statistics variables are written at most this often (the manifest at once)
# each task of a GPU cluster asks for this share of its worker's GPU resource: tasks run only on GPU workers, as
# many at once as a worker has threads (they read while the model thread runs one forward pass at a time)
GPU_SHARE = 2**-6


@dataclass
class JobResult:
    stats: list[SceneStats]
    skipped: int
    table_path: str

    @property
    def failed(self) -> list[SceneStats]:
        return [s for s in self.stats if s.status == "failed"]


def provenance(spec: JobSpec, loaded) -> dict:
    """What the masks of this run depend on (``store.PROVENANCE``), for the store's one-model check."""
    from pipeline.detect.overcast import overcast_check_runs

    meta = loaded.meta
    tile = spec.infer.tile or meta.tile_size
    return {
        "model": meta.model,
        "weights_sha256": loaded.sha256,
        "bands": list(meta.bands),
        "classes": list(meta.classes),
        "tile": tile,
        "overlap": spec.infer.overlap_for(tile),
        "precision": spec.infer.precision,
        "probabilities": spec.probabilities,
        "overcast_check": spec.model == "mscloudcam" and overcast_check_runs(meta, spec.infer.no_overcast_check),
    }


def tile_grid(spec: JobSpec, loaded) -> TileGrid:
    return spec.infer.tiles(loaded.meta.tile_size)


def job_weights(spec: JobSpec, items: list | None = None) -> str:
    """What the job's detector runs (``Detector.source``): for MSCloudCAM ``spec.weights``, else the shipped
    starter for the items' processing level (the first item's sensor; before the search: the profile's, else
    ``l2a`` in the collection's name), so a plain run on an L2A collection gets the L2A starter (no B10) and on
    L1C the L1C one."""
    chosen = detector(spec.model)
    if spec.weights or not chosen.takes_weights:
        return chosen.source(spec.weights, "L1C")
    from pipeline.catalog.assets import sensor_of

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
    return chosen.source(None, level)


def check_job(spec: JobSpec, items: list | None = None):
    """``(profile or None, weights path, loaded weights)`` once the weights (``job_weights``) are readable and
    suit the tile overlap, ``--out`` is a usable folder and, for an existing store, the run's model and settings
    are the store's and no other job is writing it; raises before any work (or cluster) starts otherwise. Whether
    the weights suit the items is checked once they are found (``check_search``)."""
    profile = get_profile(spec.profile) if spec.profile else None
    weights = job_weights(spec, items)
    loaded = detector(spec.model).record(weights)
    store = MaskStore(spec.out)
    store.check_provenance(provenance(spec, loaded))
    store.check_free()  # a busy store is refused before any search or cluster
    tile_grid(spec, loaded)  # the overlap suits the tile
    return profile, weights, loaded


def check_search(spec: JobSpec) -> list:
    """Search, then check the first items against the model (bands, sensor and level, grid size) and the access
    they need (signing installed): the items found; ``PreflightError``/``ConfigError`` before anything starts."""
    checked = check_job(spec)  # weights, store and lock before the search
    items = search_items(spec.search)
    if job_weights(spec, items) != checked[1]:  # the items' level picks another starter: check that one
        checked = check_job(spec, items)
    profile, _, loaded = checked
    item, plan = check_items(
        items,
        loaded,
        f"{spec.search.collection!r} at {spec.search.url}",
        profile,
        max_grid=spec.max_grid,
        allowed_hrefs=spec.allowed_hrefs,
    )
    read = plan.read
    if needs_signing(item, plan.assets.values()):
        require_signing()
        read = read.signed({k: a.href for k, a in sign(item).assets.items()})
    try:  # the files of the first item as its metadata says, before anything starts
        check_files(read, access_for([item]))
    except InputError as exc:
        raise PreflightError(
            f"the first runnable item of {spec.search.collection!r} does not describe its files: {exc}"
        ) from None
    return items


def store_table(store: MaskStore, results: list[SceneStats]):
    """The whole store's table: this run's rows, then every other scene the store holds (finished ones from the
    manifest, the rest from the previous table), so a narrower re-run never shrinks it."""
    import pandas as pd

    frame = to_frame(results)
    others = [
        SceneStats.from_row(e["stats"]) for i, e in store.done().items() if e.get("stats") and i not in frame.index
    ]
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
    every model has a scene's blocks queued behind the one it runs; at least 2."""
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


def job_run(spec: JobSpec, client=None, log: Callable[[str], None] = print, items: list | None = None) -> JobRun:
    """The job planned and ready to run: searched and checked (unless ``items``, those ``check_search`` found, are
    given), then planned from their metadata; ``client``: a ``distributed.Client`` (None: Dask's local threads)."""
    if items is None:
        items = check_search(spec)
    profile, _, loaded = check_job(spec, items)
    plan = plan_job(
        items,
        loaded,
        profile,
        chunk=spec.chunk,
        tiles=tile_grid(spec, loaded),
        max_grid=spec.max_grid,
        allowed_hrefs=spec.allowed_hrefs,
    )
    return JobRun(spec, plan, loaded, access_for(items), client, log)


def run_job(spec: JobSpec, client=None, log: Callable[[str], None] = print, items: list | None = None) -> JobResult:
    """Search, check, plan and run the job (``job_run(...).run()``)."""
    return job_run(spec, client, log, items).run()


class JobRun:
    """One execution of a ``JobPlan`` into its store (see the module's docstring)."""

    def __init__(
        self, spec: JobSpec, plan: JobPlan, weights, access: Access, client=None, log: Callable[[str], None] = print
    ) -> None:
        self.spec, self.plan, self.weights, self.access, self.client, self.log = (
            spec,
            plan,
            weights,
            access,
            client,
            log,
        )
        self.store = MaskStore(spec.out)
        self.models: dict[str, ModelRef] = {}  # by the model source a scene runs (a peer's differs per sensor)
        self.run_id = uuid.uuid4().hex  # this run's task keys are its own: writes are side effects
        self.gpus = gpu_workers(client)
        self.results: list[SceneStats] = []
        self.finished = 0
        self.submitted_all: float | None = None  # time.time() when the last scene was submitted
        self.retried: set[str] = set()  # scenes submitted again after a transient fault
        self.flushed = time.monotonic()

    # -- the whole run ----------------------------------------------------------------------------------
    def run(self) -> JobResult:
        spec, store, log = self.spec, self.store, self.log
        if self.gpus:
            log(f"{self.gpus} GPU workers: the job's tasks run on them")
        log(
            f"found {len(self.plan.scenes) + len(self.plan.failed)} scenes in {spec.search.collection!r} at "
            f"{spec.search.url}"
        )
        with store.lock():
            log(f"writing {spec.out} (locked for this job)")
            store.check_provenance(provenance(spec, self.weights))  # again, under the lock
            store.write_provenance(provenance(spec, self.weights))
            if spec.verify:  # first: a damaged group is rebuilt or its scenes redone before the layout is read
                from pipeline.store.integrity import verify_store

                found = verify_store(store, repair=True, log=log)
                log(f"verified {len(found.scenes)} done scenes: {len(found.damaged)} damaged, redone below")
            work = self.layout()
            done = store.done()
            self.bookkeeping(store.sync_stats, done)  # statistics of scenes a stopped job finished after its flush
            todo = [w for w in work if w[0].item_id not in done]
            skipped = len(work) - len(todo)
            if skipped:
                log(f"skipping {skipped} scenes already done in {spec.out} (resume)")
            in_job = {w[0].item_id for w in work}
            self.results += [
                SceneStats.from_row(e["stats"])
                for e in done.values()
                if e.get("stats") and e["stats"]["item_id"] in in_job
            ]
            for item_id, when, reason in self.plan.failed:
                self.results.append(SceneStats(item_id, when, "failed", reason))
                log(f"{item_id}: failed before reading: {reason}")
            self.execute(todo)
            self.bookkeeping(store.flush_stats)
            order = {s.item_id: i for i, s in enumerate(self.plan.scenes)}
            self.results.sort(key=lambda s: order.get(s.item_id, -1))
            table = self.bookkeeping(store.write_table, store_table(store, self.results))
        return JobResult(self.results, skipped, table)

    def layout(self) -> list[tuple[ScenePlan, str, int]]:
        """Every grid's group in the store (created, or grown by this job's scenes): ``(scene, group, time index)``
        of every scene planned."""
        store, meta = self.store, self.weights.meta
        by_group: dict[str, list[ScenePlan]] = {}
        for scene in self.plan.scenes:
            by_group.setdefault(scene.group, []).append(scene)
        work = []
        for group, scenes in by_group.items():
            store.ensure_group(
                self.plan.groups[group],
                [s.time for s in scenes],
                [s.item_id for s in scenes],
                (self.plan.chunk, self.plan.chunk),
                attrs={
                    "model": meta.model,
                    "weights_sha256": self.weights.sha256,
                    "stac_api": self.spec.search.url,
                    "collection": self.spec.search.collection,
                },
                probabilities=self.spec.probabilities,
            )
            index = store.scene_index(group)  # scenes already there keep their places; new ones were appended
            work += [(s, group, index[s.item_id]) for s in scenes]
        store.describe()
        store.consolidate()  # the layout is complete: one metadata document for readers
        order = {s.item_id: i for i, s in enumerate(self.plan.scenes)}
        return sorted(work, key=lambda w: order[w[0].item_id])

    # -- scenes -----------------------------------------------------------------------------------------
    def graph(self, scene: ScenePlan, group: str, t: int) -> tuple[dict, str]:
        """The tasks of one scene (``dask._task_spec`` graph) and the key of its counts. Planetary Computer hrefs
        are signed here, when the scene's work is built, so tokens are fresh."""
        from dask._task_spec import Task, TaskRef
        from dask.base import tokenize

        read, b10 = scene.read, scene.offset_check
        hrefs = _HrefItem(scene)
        if needs_signing(hrefs, hrefs.assets):
            signed = {k: a.href for k, a in sign(hrefs.as_item()).assets.items()}
            read, b10 = read.signed(signed), signed.get("_b10", b10)
        token = tokenize(scene.item_id, t, self.run_id)
        writer = Writer(
            self.store.url,
            tuple(sorted(self.store.location.options.items())),
            group,
            self.spec.probabilities,
            self.run_id,
            self.store.lease(),
        )
        dsk: dict = {}
        harm = scene.harmonisation or (scene.properties, b10)  # Sentinel-2 L1C: each worker checks B10 once
        name = f"{task_prefix(scene.item_id, 'mask')}-{token}"
        model = self.model(scene)
        blocks = []
        for block in scene.blocks:
            key = (name, *block.index)
            dsk[key] = Task(key, mask_block, read, block, harm, model, writer, t, self.access)
            blocks.append(TaskRef(key))
        counts = f"{task_prefix(scene.item_id, 'counts')}-{token}"
        dsk[counts] = Task(counts, scene_counts, *blocks)
        return dsk, counts

    def model(self, scene: ScenePlan) -> ModelRef:
        """What the scene's tasks run: its model source (the job's weights, or a peer for the scene's sensor) with
        the content hash the job checked."""
        if scene.model not in self.models:
            sha = self.weights.sha256 if scene.model == self.weights.source else detector_weights(scene.model).sha256
            self.models[scene.model] = ModelRef(scene.model, sha, self.spec.infer)
        return self.models[scene.model]

    def execute(self, todo: list) -> None:
        """Submit the scenes of ``todo`` with at most ``in_flight`` computing, earlier ones first, and keep the
        books as each ends."""
        client, spec = self.client, self.spec
        queue = collections.deque(todo)
        self.total = len(todo)
        pending: dict = {}
        ended = None
        if client is not None:
            from distributed import as_completed

            ended = as_completed()
        in_flight, sized = scenes_in_flight(client, spec.in_flight), time.monotonic()
        try:
            while queue or pending:
                raise_if_stopped()  # a SIGTERM/SIGINT whose exception was swallowed where it landed
                if spec.in_flight is None and time.monotonic() - sized > 2:  # workers join and leave
                    in_flight, sized = scenes_in_flight(client), time.monotonic()
                while queue and len(pending) < in_flight:
                    raise_if_stopped()
                    scene, group, t = queue.popleft()
                    start = time.time()
                    try:
                        dsk, key = self.graph(scene, group, t)
                    except CloudmaskError as exc:  # e.g. signing failed: this scene alone
                        self.finish(scene, group, t, start, exc)
                        continue
                    if client is None:
                        outcome = self.outcome(lambda: _local_get(dsk, key))
                        if not self.retry(queue, scene, group, t, outcome):
                            self.finish(scene, group, t, start, outcome)
                        continue
                    resources = {"GPU": GPU_SHARE} if self.gpus else None
                    future = client.get(
                        _named_graph(dsk, key), [key], sync=False, priority=len(queue), resources=resources
                    )[0]
                    pending[future] = (scene, group, t, start)
                    ended.add(future)
                if not queue and self.submitted_all is None:
                    self.submitted_all = time.time()
                if pending:
                    # blocks until a scene ends (a stop signal raises here); then takes every scene ended by then
                    for future in [next(ended), *ended.next_batch(block=False)]:
                        scene, group, t, start = pending.pop(future)
                        outcome = self.outcome(future.result)
                        if not self.retry(queue, scene, group, t, outcome):
                            self.finish(scene, group, t, start, outcome)
        finally:
            if pending and client is not None:
                client.cancel(list(pending), force=True)

    def retry(self, queue, scene: ScenePlan, group: str, t: int, outcome) -> bool:
        """Put a scene that failed on a transient fault (``pipeline.retries``) back at the head of the queue, once;
        whether it was."""
        if not isinstance(outcome, BaseException) or not transient(outcome) or scene.item_id in self.retried:
            return False
        self.retried.add(scene.item_id)
        self.log(f"{scene.item_id}: {type(outcome).__name__}: {redact(outcome)[:300]}; trying it once more")
        queue.appendleft((scene, group, t))
        return True

    def outcome(self, result):
        """``result()``'s value, or the exception that failed the scene; an exception that is the job's own
        (lease lost, weights changed) stops the job instead."""
        try:
            return result()
        except (LeaseLostError, WeightsChangedError) as exc:
            raise JobStopped(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a bad scene must not stop the job
            return exc

    def finish(self, scene: ScenePlan, group: str, t: int, start: float, outcome) -> None:
        """Record a scene's outcome: its statistics (queued, flushed now and then) and, for a good scene, its
        manifest entry (at once). Failing to write them stops the job (``bookkeeping``)."""
        harm = None if isinstance(outcome, BaseException) else outcome[1]
        stats = SceneStats(
            scene.item_id,
            scene.datetime,
            provider_cloud_cover=scene.provider_cloud_cover,
            processing_baseline=str((harm.baseline or "") if harm else ""),
            offset_applied=int(harm.offset if harm else 0),
            radiometry=harm.reason if harm else "",
        )
        if isinstance(outcome, BaseException):
            stats.status = "failed"
            stats.reason = redact(f"{type(outcome).__name__}: {outcome}")[:2000]
        else:
            stats.set_counts(np.asarray(outcome[0]))
            stats.status = "ok" if stats.valid_pixels else "failed"
            if not stats.valid_pixels:
                stats.reason = "no valid pixels: the scene is entirely nodata"
        stats.runtime_s = round(time.time() - start, 2)
        self.store.write_scene_stats(group, t, stats)
        if stats.status == "ok":
            self.bookkeeping(
                self.store.mark_done,
                scene.item_id,
                {"status": "ok", "group": group, "time_index": t, "stats": stats.row()},
            )
        self.finished += 1
        detail = f"{stats.cloud_cover:.1f} % cloud" if stats.status == "ok" else stats.reason
        self.log(f"[{self.finished}/{self.total}] {scene.item_id}: {stats.status}, {detail} ({stats.runtime_s:.1f} s)")
        self.results.append(stats)
        if time.monotonic() - self.flushed > FLUSH_S:
            self.bookkeeping(self.store.flush_stats)
            self.flushed = time.monotonic()

    def bookkeeping(self, write, *args):
        """``write(*args)`` (a manifest, statistics or table write, checked against the lease), retried through
        transient faults for up to half a lease (``pipeline.retries``), or ``JobStopped`` with one line when it
        cannot be done."""
        try:
            return retrying(write, *args, seconds=lease_seconds() / 2)
        except LeaseLostError as exc:
            raise JobStopped(str(exc)) from None
        except CloudmaskError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store itself failing: stop, say where
            raise JobStopped(
                f"could not write the job's records to {self.store.url} ({type(exc).__name__}: "
                f"{redact(exc)}); the job stopped: what it finished is recorded, run it again once the "
                f"store can be written"
            ) from None


def _named_graph(dsk: dict, name: str):
    """``dsk`` as the low-level graph expression ``Client.get`` makes of a dict, with its token given (its keys are
    this run's own already): Dask would otherwise tokenise every task's arguments to name it, which was the
    client's largest cost per scene."""
    from dask._expr import LLGExpr

    return LLGExpr(dsk, _determ_token=name)


def _local_get(dsk: dict, key: str):
    """Compute ``key`` of ``dsk`` on Dask's local threads (no cluster)."""
    import dask.threaded

    return dask.threaded.get(dsk, key)


class _HrefItem:
    """The assets a scene reads, as the item-like object ``access.needs_signing``/``sign`` take."""

    def __init__(self, scene: ScenePlan) -> None:
        self.scene = scene
        self.assets = {b.asset: _Asset(b.href) for b in scene.read.bands}
        if scene.offset_check:
            self.assets["_b10"] = _Asset(scene.offset_check)

    def as_item(self):
        import pystac

        item = pystac.Item(self.scene.item_id, None, None, self.scene.time.astype("datetime64[us]").item(), {})
        for key, asset in self.assets.items():
            item.add_asset(key, pystac.Asset(asset.href))
        return item


@dataclass
class _Asset:
    href: str
