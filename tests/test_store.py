"""The Zarr v3 mask store: layout readable by plain xarray in a fresh process, region writes, manifest, lock."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.job.plans import Block
from pipeline.job.tasks import Writer
from pipeline.read.grids import geobox, grid_name
from pipeline.store.maskstore import MaskStore, StoreLockedError, store_path
from pipeline.store.stats import SceneStats, class_counts, to_frame, write_table

GRID = geobox("EPSG:32633", (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0), (300, 250))
SHAPE = tuple(GRID.shape)
TIMES = ["2017-02-16T10:21:01", "2017-03-01T10:21:01"]


def write_scene(store, group, t, mask, stats, run="test"):
    """A scene's mask written as the job's block tasks write it (one block over the whole grid), its statistics
    queued and flushed."""
    whole = Block((0, 0), (0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[0]), (0, SHAPE[1]))
    Writer(store.url, tuple(sorted(store.location.options.items())), group, run=run).write(t, whole, mask)
    store.write_scene_stats(group, t, stats)
    store.flush_stats()


def mask(seed=0):
    m = np.random.default_rng(seed).integers(0, 4, (300, 250)).astype(np.uint8)
    m[:10] = 255
    return m


def test_stats_fractions_and_table(tmp_path):
    m = mask()
    counts = class_counts(m)
    assert counts.tolist()[-1] == 10 * 250 and counts.sum() == m.size
    s = SceneStats("A", status="ok", provider_cloud_cover=12.5).set_counts(counts)
    assert s.valid_pixels == 290 * 250
    assert s.pct_clear + s.pct_thick_cloud + s.pct_thin_cloud + s.pct_cloud_shadow == pytest.approx(100.0)
    assert s.cloud_cover == pytest.approx(s.pct_thick_cloud + s.pct_thin_cloud)
    assert np.isnan(s.pct_overcast_check)  # counted by the predictor only: (6,) counts carry it
    checked = SceneStats("C", status="ok").set_counts(np.append(counts, 290 * 25))
    assert checked.pct_overcast_check == pytest.approx(10.0) and checked.cloud_cover == s.cloud_cover
    from flows.run import table_text

    assert "overcast check %" in table_text(to_frame([checked]))
    frame = to_frame([s, SceneStats("B", status="failed", reason="asset B04 missing (HTTP 404)")])
    write_table(frame, tmp_path / "t.csv")
    write_table(frame, tmp_path / "t.parquet")
    import pandas as pd

    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back.index) == ["A", "B"] and back.loc["B", "reason"].startswith("asset B04")
    assert "item_id" in (tmp_path / "t.csv").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        write_table(frame, tmp_path / "t.xlsx")
    with pytest.raises(ConfigError, match=r"t\.csv': its folder '.*no-such-folder' does not exist"):
        write_table(frame, tmp_path / "no-such-folder" / "t.csv")
    assert not (tmp_path / "no-such-folder").exists()


def test_store_round_trip_in_a_fresh_process(tmp_path):
    store = MaskStore(tmp_path / "out.zarr")
    with store.lock():
        group = store.ensure_group(GRID, TIMES, ["S2A_A", "S2B_B"], (96, 96), attrs={"model": "mscloudcam"})
        m = mask()
        write_scene(store, group, 0, m, SceneStats("S2A_A", status="ok").set_counts(class_counts(m)))
        store.mark_done("S2A_A", {"status": "ok", "group": group, "time_index": 0})
    assert group == "epsg32633_x330000_y5822040_res10_300x250"
    code = textwrap.dedent(f"""
        import json, numpy as np, xarray as xr, rioxarray
        ds = xr.open_zarr({str(tmp_path / "out.zarr")!r}, group={group!r})
        m = ds.mask
        print(json.dumps(dict(crs=str(ds.rio.crs), mcrs=str(m.rio.crs), dtype=str(m.dtype), nodata=int(m.rio.nodata),
            flags=m.attrs["flag_meanings"], values=[int(v) for v in m.attrs["flag_values"]], ids=[str(i) for i in ds.item_id.values], x0=float(ds.x[0]), y0=float(ds.y[0]),
            status=ds.status.values.tolist(), cc=float(ds.cloud_cover[0]), unwritten=int(m.isel(time=1).max()),
            model=ds.attrs["model"], transform=list(m.rio.transform())[:6], first=m.isel(time=0).values[10:12, :4].tolist())))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["crs"] == out["mcrs"] == "EPSG:32633"
    assert out["dtype"] == "uint8" and out["nodata"] == 255
    assert out["flags"] == "clear thick_cloud thin_cloud cloud_shadow" and out["values"] == [0, 1, 2, 3]
    assert out["ids"] == ["S2A_A", "S2B_B"] and out["model"] == "mscloudcam"
    assert (out["x0"], out["y0"]) == (330005.0, 5822035.0)  # pixel centres of the source grid
    assert out["transform"] == [10.0, 0.0, 330000.0, 0.0, -10.0, 5822040.0]
    assert out["status"] == [1, 0] and out["unwritten"] == 255
    assert out["first"] == mask()[10:12, :4].tolist()
    assert store.done() == {"S2A_A": {"status": "ok", "group": group, "time_index": 0, "item_id": "S2A_A"}}


def test_rewriting_a_scene_gives_identical_bytes(tmp_path):
    store = MaskStore(tmp_path / "s.zarr")
    group = store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96))
    stats = SceneStats("B", status="ok").set_counts(class_counts(mask(1)))
    write_scene(store, group, 1, mask(1), stats)
    chunk_files = sorted((tmp_path / "s.zarr" / group / "mask").rglob("c/*/*/*"))
    before = {p: p.read_bytes() for p in chunk_files}
    write_scene(store, group, 1, mask(1), stats)  # a retried task
    assert before and all(p.read_bytes() == b for p, b in before.items())


def test_a_group_grows_with_new_scenes_and_keeps_the_old_in_place(tmp_path):
    store = MaskStore(tmp_path / "s.zarr")
    group = store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96))
    write_scene(store, group, 1, np.full(SHAPE, 2, np.uint8), SceneStats("B", status="ok", valid_pixels=7))
    assert store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96)) == grid_name(GRID)  # same job again: reused
    store.ensure_group(GRID, [TIMES[1], "2017-04-01T10:00:00"], ["B", "C"], (96, 96))  # B held, C new
    assert store.scene_index(group) == {"A": 0, "B": 1, "C": 2}
    ds = store.open(group)
    assert ds.mask.shape == (3, *SHAPE) and ds.mask.encoding["chunks"] == (1, 96, 96)
    assert (ds.mask[1] == 2).all() and (ds.mask[2] == 255).all()  # B kept, C a template until written
    assert int(ds.valid_pixels[1]) == 7 and int(ds.valid_pixels[2]) == -1
    assert str(ds.time.values[2])[:10] == "2017-04-01" and ds.rio.crs.to_epsg() == 32633


def test_second_writer_is_refused_and_stale_locks_are_taken_over(tmp_path):
    store = MaskStore(tmp_path / "s.zarr")
    with store.lock():
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}.*wait for it"):
            with MaskStore(tmp_path / "s.zarr").lock():
                pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "s.zarr" / "_cloudmask" / "lock.json").write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename})
    )
    with store.lock():  # the holder is gone
        pass
    assert not (tmp_path / "s.zarr" / "_cloudmask" / "lock.json").exists()


def test_probabilities_are_refused_on_a_store_written_without_them(tmp_path):
    """A later job asking for probabilities on a group written without them is refused (naming what to do), and
    the group is left as it was."""
    store = MaskStore(tmp_path / "p.zarr")
    store.ensure_group(GRID, TIMES, ["S2A_A", "S2B_B"], (96, 96))
    before = sorted(p.relative_to(store.path) for p in store.path.rglob("*"))
    with pytest.raises(
        ConfigError, match="written without probabilities; drop --probabilities or write this job to another --out"
    ):
        store.ensure_group(GRID, TIMES, ["S2A_A", "S2B_B"], (96, 96), probabilities=True)
    assert sorted(p.relative_to(store.path) for p in store.path.rglob("*")) == before


def test_item_ids_never_name_other_paths(tmp_path):
    """Ids are file names in the manifest: `/` or `../` in an id must neither write elsewhere nor be lost."""
    store = MaskStore(tmp_path / "ids.zarr")
    ids = ["../../escaped", "tile/with/slashes", "..", ".hidden", "plain_S2A"]
    for i in ids:
        store.mark_done(i, {"status": "ok", "stats": {}})
    assert sorted(store.done()) == sorted(ids)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.parent == store.manifest_dir for p in written), written


def test_an_unreadable_manifest_entry_means_the_scene_is_redone(tmp_path):
    store = MaskStore(tmp_path / "m.zarr")
    store.mark_done("S2A_A", {"status": "ok", "stats": {"item_id": "S2A_A"}})
    store.mark_done("S2B_B", {"status": "ok", "stats": {"item_id": "S2B_B"}})
    path = store.manifest_dir / "S2B_B.json"
    path.write_text(path.read_text()[:7])  # a crash or a full disk mid-write
    (store.manifest_dir / "S2C_C.json").write_text("")
    assert sorted(store.done()) == ["S2A_A"]


def test_locks_left_by_a_failed_start_or_a_reused_pid_are_taken_over(tmp_path):
    store = MaskStore(tmp_path / "l.zarr")
    with store.lock():
        pass
    lock = store.meta_dir / "lock.json"
    lock.write_text("")  # the disk was full as the lock was written: it stays empty
    with pytest.raises(StoreLockedError):  # young: it may be a job that is writing it right now
        with store.lock():
            pass
    old = lock.stat().st_mtime - 3600
    os.utime(lock, (old, old))
    with store.lock():
        pass
    # this process id, but another process's start time: a restarted container's job, PID 1 again
    lock.write_text(json.dumps({"pid": os.getpid(), "started": 1, "host": os.uname().nodename}))
    with store.lock():
        pass
    with store.lock():  # while held by this live process, the same id is refused
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            with MaskStore(tmp_path / "l.zarr").lock():
                pass


def test_out_is_checked_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(
        ConfigError,
        match=r"--out gs://bucket/x.zarr: gs:// stores are not supported \(the store's "
        r"lock needs conditional writes",
    ):
        store_path("gs://bucket/x.zarr")
    with pytest.raises(ConfigError, match=r"--out s3://bucket: give a prefix inside the bucket"):
        store_path("s3://bucket")
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a store folder"):
        store_path(afile)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store_path("~/cubes/x.zarr") == str(tmp_path / "cubes" / "x.zarr")
    assert store_path(f"file://{tmp_path}/y.zarr") == str(tmp_path / "y.zarr")
    assert not (tmp_path / "cubes").exists()  # checking writes nothing


def test_one_store_holds_one_models_masks(tmp_path):
    store = MaskStore(tmp_path / "p.zarr")
    first = {
        "model": "mscloudcam_tiny",
        "weights_sha256": "aa",
        "bands": ["B01"],
        "tile": 64,
        "overlap": 8,
        "probabilities": False,
    }
    store.check_provenance(first)  # a new store takes anything
    store.write_provenance(first)
    store.check_provenance(dict(first))
    with pytest.raises(
        ConfigError,
        match=r"weights_sha256: the store has 'aa', this run 'bb'; overlap: the store has "
        r"8, this run 16\); one store holds one model's masks",
    ):
        store.check_provenance(dict(first, weights_sha256="bb", overlap=16))
    with pytest.raises(ConfigError, match="probabilities: the store has True, this run False"):
        other = MaskStore(tmp_path / "q.zarr")
        other.write_provenance(dict(first, probabilities=True))
        other.check_provenance(first)
    # a store recorded before the overcast check existed holds masks made without it
    store.check_provenance(dict(first, overcast_check=False))
    with pytest.raises(ConfigError, match="overcast_check: the store has False, this run True"):
        store.check_provenance(dict(first, overcast_check=True))


def test_a_layout_cut_short_is_written_again(tmp_path):
    """A kill while the layout is written leaves a group with arrays missing: the next run writes it again
    (no scene can be done in it yet), instead of failing on every run."""
    store = MaskStore(tmp_path / "cut.zarr")
    group = store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96))
    (store.path / group / "mask" / "zarr.json").unlink()
    (store.path / group / "valid_pixels" / "zarr.json").write_text("")
    assert store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96)) == group
    ds = store.open(group)
    assert ds.mask.shape == (2, *SHAPE) and int(ds.valid_pixels[0]) == -1
    # once a scene is done there, the group is never dropped: the damage is reported instead
    store.mark_done("A", {"status": "ok", "group": group, "time_index": 0, "stats": {}})
    (store.path / group / "mask" / "zarr.json").unlink()
    with pytest.raises(ConfigError, match="although scenes in it are done; run cloudmask verify"):
        store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96))


def test_two_jobs_that_both_saw_a_dead_jobs_lock_do_not_both_take_it(tmp_path, monkeypatch):
    """The interleaving that let two jobs in after a crash, forced: both judge the dead job's lock stale before
    either takes it over. Exactly one gets the store; the other is refused."""
    import threading

    import pipeline.store.locks as st

    real, barrier, seen = st._stale, threading.Barrier(2, timeout=10), threading.local()

    def stale_then_meet(*args):
        verdict = real(*args)
        if verdict and not getattr(seen, "met", False):  # each job's first verdict: wait for the other's
            seen.met = True
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return verdict

    monkeypatch.setattr(st, "_stale", stale_then_meet)
    store = MaskStore(tmp_path / "race.zarr")
    store.meta_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (store.meta_dir / "lock.json").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    outcomes, both, release = [], threading.Event(), threading.Event()

    def job():
        try:
            with MaskStore(store.path).lock():
                outcomes.append("won")
                if len(outcomes) == 2:
                    both.set()
                release.wait(30)
        except StoreLockedError:
            outcomes.append("refused")
            if len(outcomes) == 2:
                both.set()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    both.wait(30)
    release.set()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["refused", "won"]


def test_a_store_in_memory_has_the_same_layout_manifest_and_lock():
    """``memory://`` (fsspec's in-process store) goes through the same code as S3: a lease lock, whole-object
    manifest entries, the table, groups, provenance."""
    import uuid

    import xarray as xr

    url = f"memory://cubes/{uuid.uuid4().hex}.zarr"
    store = MaskStore(url)
    assert store.path is None and store.url == url
    with store.lock():
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}.*wait for it"):
            with MaskStore(url).lock():
                pass
        store.write_provenance({"model": "m", "weights_sha256": "aa"})
        group = store.ensure_group(GRID, TIMES, ["A", "a/b"], (96, 96))
        stats = SceneStats("a/b", status="ok").set_counts(class_counts(mask(1)))
        write_scene(store, group, 1, mask(1), stats)
        store.mark_done("a/b", {"status": "ok", "group": group, "time_index": 1, "stats": stats.row()})
        store.consolidate()
    assert store.done()["a/b"]["time_index"] == 1 and store.groups() == [group]
    assert store.provenance() == {"model": "m", "weights_sha256": "aa"}
    ds = xr.open_datatree(url, engine="zarr")[group].to_dataset()
    assert (ds.mask[1].values == mask(1)).all() and (ds.mask[0] == 255).all()
    with MaskStore(url).lock():  # released: a new job takes it
        pass


def test_a_job_that_lost_its_lease_writes_no_more_manifest_entries():
    """A holder whose lease was taken over (it stalled past the lease) stops at its next manifest write."""
    import uuid

    from pipeline.store.locks import LeaseLostError

    store = MaskStore(f"memory://cubes/{uuid.uuid4().hex}.zarr")
    with store.lock():
        store.mark_done("A", {"status": "ok", "stats": {}})
        store._held.lost = "another job took the store's lease over"  # what a failed renewal records
        with pytest.raises(LeaseLostError, match="stopped writing memory://.*another job took"):
            store.mark_done("B", {"status": "ok", "stats": {}})
    assert sorted(store.done()) == ["A"]


def test_statistics_not_flushed_before_a_crash_are_written_again_from_the_manifest(tmp_path):
    """Statistics variables are written in batches (``flush_stats``); the manifest entry is written at once. A
    job stopped in between leaves done scenes whose variables still hold fill values: the next job's
    ``sync_stats`` writes them from the manifest, and only them."""
    store = MaskStore(tmp_path / "sync.zarr")
    group = store.ensure_group(GRID, TIMES, ["A", "B"], (96, 96))
    a = SceneStats("A", status="ok").set_counts(class_counts(mask(0)))
    b = SceneStats("B", status="ok").set_counts(class_counts(mask(1)))
    store.write_scene_stats(group, 0, a)
    assert int(store.open(group).valid_pixels[0]) == -1  # queued, not written
    assert store.flush_stats() == 1 and int(store.open(group).valid_pixels[0]) == a.valid_pixels
    for t, s in ((0, a), (1, b)):
        store.mark_done(s.item_id, {"status": "ok", "group": group, "time_index": t, "stats": s.row()})
    store.write_scene_stats(group, 1, b)  # ... and the job dies before flushing it
    again = MaskStore(tmp_path / "sync.zarr")
    assert again.sync_stats(again.done()) == 1  # B only: A's variables already say ok
    ds = again.open(group)
    assert ds.valid_pixels.values.tolist() == [a.valid_pixels, b.valid_pixels]
    assert float(ds.cloud_cover[1]) == pytest.approx(b.cloud_cover) and ds.status.values.tolist() == [1, 1]
