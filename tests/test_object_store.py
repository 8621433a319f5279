"""Stores on object storage: a local S3-compatible server (moto in server mode, ``tests/s3server.py``).

The lease that guards an S3 store (``pipeline.store.locks.LeaseLock``): exclusive, renewed, taken over once when its
job is gone or stalled, the stalled job told; then the whole job written to S3 by ``cloudmask run`` and read in
a fresh process with plain xarray, statistics, verify and repair. The fault tests of ``tests/test_faults.py``
(worker SIGKILL, job SIGKILL and resume, second writer, broken scenes) run against this server too.
"""

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from stores import assert_same_store, names, read

from pipeline.store.locations import location_of
from pipeline.store.locks import LOCK, LeaseLock, LeaseLostError, PreconditionFailed, record

pytestmark = pytest.mark.slow

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_lease_is_exclusive_renewed_and_taken_over_once_its_holder_stalls(s3_env):
    where = location_of(f"{s3_env}/lease.zarr")
    a = LeaseLock(where, record("job A"), ttl=2)
    assert a.acquire() is None
    elsewhere = dict(record("job B"), host="another-host")  # nothing known about A's process from there
    b = LeaseLock(where, elsewhere, ttl=2)
    assert b.acquire()["job"] == "job A"
    for _ in range(6):  # 6 renewals, every ttl/4: well past A's ttl, the lease is still A's
        assert a.renewed.wait(30)
        a.renewed.clear()
    assert b.acquire()["job"] == "job A" and a.lost is None
    a._stop.set()  # A stalls (a paused VM, a stopped process): no more renewals
    a._beat.join()
    deadline = time.monotonic() + 60
    while b.acquire() is not None:  # refused until the object store's clock says A's lease ran out
        assert time.monotonic() < deadline, "the stalled lease was never taken over"
        time.sleep(0.2)
    assert json.loads(read(f"{s3_env}/lease.zarr", *LOCK))["job"] == "job B"
    assert not a.renew()  # A wakes up: its renewal fails, and it must stop before its next manifest write
    with pytest.raises(LeaseLostError, match="another job took the store's lease over"):
        a.check()
    a.release()  # does not remove B's lease
    assert json.loads(read(f"{s3_env}/lease.zarr", *LOCK))["job"] == "job B"
    b.release()
    assert read(f"{s3_env}/lease.zarr", *LOCK) is None


def test_a_dead_jobs_lease_is_taken_over_by_exactly_one_of_racing_jobs(s3_env, monkeypatch):
    """Eight jobs all judge a dead job's lease stale before any of them writes (the interleaving forced): the
    conditional PUT lets exactly one take it over."""
    import pipeline.store.locks as locks

    where = location_of(f"{s3_env}/race.zarr")
    dead = dict(record("dead job"), pid=dead_pid(), started=None)
    where.write(json.dumps(dict(dead, ttl_s=600)).encode(), *LOCK)
    n = 8
    barrier = threading.Barrier(n, timeout=30)
    real_head = locks._S3Objects.head
    seen = threading.local()

    def head_then_meet(self, key):
        got = real_head(self, key)
        if not getattr(seen, "met", False):
            seen.met = True
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return got

    monkeypatch.setattr(locks._S3Objects, "head", head_then_meet)
    outcomes, leases = [], []

    def job(i):
        lease = LeaseLock(where, record(f"job {i}"), ttl=600)
        outcomes.append(lease.acquire() is None)
        leases.append(lease)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count(True) == 1, outcomes
    winner = next(lease for lease, won in zip(leases, outcomes) if won)
    assert json.loads(read(f"{s3_env}/race.zarr", *LOCK))["token"] == winner.me["token"]
    for lease in leases:
        lease.release()


def test_conditional_writes_are_refused_by_the_server_not_by_the_client(s3_env):
    """The lease rests on the server honouring If-None-Match / If-Match: checked against the server directly."""
    from pipeline.store.locks import _S3Objects

    where = location_of(f"{s3_env}/cond.zarr")
    objects = _S3Objects(where.fs)
    key = where.key("x.json")
    etag = objects.put(key, b"1", if_match=None)
    with pytest.raises(PreconditionFailed):
        objects.put(key, b"2", if_match=None)
    with pytest.raises(PreconditionFailed):
        objects.put(key, b"2", if_match='"0123"')
    objects.put(key, b"2", if_match=etag)
    assert read(f"{s3_env}/cond.zarr", "x.json") == b"2"


def cli(*args, **kw):
    return subprocess.run([CLOUDMASK, *args], capture_output=True, text=True, timeout=600, **kw)


OPEN_IN_A_FRESH_PROCESS = """
import sys, warnings
warnings.simplefilter("error")
import rioxarray, xarray as xr
tree = xr.open_datatree(sys.argv[1], engine="zarr")
groups = [n for n in tree.children if n.startswith("epsg")]
for name in groups:
    ds = tree[name].to_dataset()
    print(name, ds.rio.crs.to_epsg(), ds.mask.attrs["flag_meanings"], ds.mask.dtype, ds.sizes["time"],
          [round(float(v), 4) for v in ds.cloud_cover.values], sorted(map(str, ds.item_id.values)))
print("root", sorted(tree.attrs["cloudmask"]))
"""


def test_a_job_written_to_s3_opens_in_a_fresh_process_and_is_verified_and_repaired(
    api, first_run, s3_env, test_weights_file, tmp_path
):
    out = f"{s3_env}/masks.zarr"
    job = [
        "run",
        "--stac-url",
        api,
        "--collection",
        "sentinel-2-l1c",
        "--bbox=-180,-90,180,90",
        "--out",
        out,
        "--weights",
        str(test_weights_file),
        "--overlap",
        "16",
        "--chunk",
        "96",
        "--workers",
        "1",
    ]
    p = cli(*job)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"store: {out}; table: {out}/_cloudmask/scenes.csv; 1 failed" in p.stdout
    assert_same_store(first_run[0], out)  # byte for byte what the same job wrote to a local folder
    assert not [n for n in names(out) if n.endswith(".tmp")] and read(out, *LOCK) is None

    fresh = subprocess.run(
        [sys.executable, "-c", OPEN_IN_A_FRESH_PROCESS, out],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]  # any warning is an error there
    lines = fresh.stdout.splitlines()
    reference = first_run[1].stats
    by_id = {s.item_id: s for s in reference}
    assert len(lines) == 3 and lines[-1].startswith("root ['bands', 'classes'")
    for line in lines[:2]:
        group, epsg, flags = line.split()[:3]
        assert group.startswith(f"epsg{epsg}_") and flags == "clear"
    assert "'S2B_MSIL1C_20180701_T31PCR'" in lines[0] + lines[1]
    cloud = {s.item_id: round(s.cloud_cover, 4) for s in reference if s.status == "ok"}
    assert all(str(v) in fresh.stdout for v in cloud.values()), (cloud, fresh.stdout)

    stats = cli("stats", out, "--csv", str(tmp_path / "t.csv"))
    assert stats.returncode == 0, stats.stderr
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1 + 4

    # a lost chunk: found by verify, marked for redo, redone by the same run
    group = next(n for n in names(out) if n.startswith("epsg32631"))
    chunk = sorted(where for where in names(out, group, "mask", "c", "0", "0"))[0]
    where = location_of(out)
    where.delete(group, "mask", "c", "0", "0", chunk)
    damaged = cli("verify", out, "--repair")
    assert damaged.returncode == 0 and "3 scenes checked, 2 intact, 1 damaged (marked for redo" in damaged.stdout
    assert "S2B_MSIL1C_20180701_T31PCR" in damaged.stdout
    again = cli(*job)
    assert again.returncode == 0 and "skipping 2 scenes already done" in again.stdout, again.stderr[-2000:]
    assert_same_store(first_run[0], out)
    assert by_id["S2B_MSIL1C_20180701_T31PCR"].status == "ok"


def test_a_missing_bucket_fails_first_in_one_line(api, s3_env, test_weights_file):
    """(A bare bucket and gs:// are refused the same way: tests/test_store.py::test_out_is_checked_before_any_work.)"""
    p = cli(
        "run",
        "--stac-url",
        api,
        "--collection",
        "sentinel-2-l1c",
        "--out",
        "s3://no-such-bucket/x.zarr",
        "--weights",
        str(test_weights_file),
        "--workers",
        "1",
    )
    assert p.returncode == 2 and "bucket 'no-such-bucket' does not exist" in p.stderr, p.stderr[-1500:]
    assert len(p.stderr.strip().splitlines()) == 1 and "found" not in p.stdout
