"""A job that loses its lease on an S3 store stops at once and records nothing more (moto in server mode).

Three orders: the job (A) is paused past its lease while another job (B) takes the store over and finishes, then A
resumes; A resumes while B is still running; and A's lease object is overwritten with no second job. In each, A exits
non-zero with one line, B's results and records are left byte for byte, ``cloudmask verify`` finds the store intact,
and a plain re-run gives the store of one uninterrupted run.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import fsspec
import pytest
from stores import assert_same_store, names
from test_faults import CLOUDMASK, cli_job

from pipeline.store.locks import LOCK

pytestmark = pytest.mark.slow

LEASE_S = "3"


def everything(url) -> dict:
    """Every object of the store but its lock: path -> bytes."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in sorted(fs.find(root)) if not p.endswith("/".join(LOCK))}


def start(cmd, env):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def until(proc, prefix: str) -> list:
    """Lines of ``proc`` up to the first starting with ``prefix`` (which must come)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"{prefix!r} never came: {''.join(lines)[-2000:]} {proc.stderr.read()[-2000:]}")


def once_the_lease_runs_out(cmd, env, deadline_s=120):
    """Run ``cmd`` (a second job) as soon as the paused job's lease has run out: until then it is refused, in one
    line, naming the lease."""
    deadline = time.monotonic() + deadline_s
    while True:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if not (p.returncode == 2 and "being written by another job" in p.stderr):
            return p
        assert "lease runs out" in p.stderr and time.monotonic() < deadline, p.stderr


DASK_LOG = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ - distributed\.")


def job_output(err: str) -> str:
    """``err`` without the log records of the local cluster's Dask workers (a record runs to the next one or to a
    line of the job's): a worker whose scheduler stalled with the paused job may log its failed heartbeat with
    Dask's traceback; the job's own output is what must be one line."""
    kept, in_record = [], False
    for line in err.splitlines():
        if DASK_LOG.match(line):
            in_record = True
        elif in_record and line.startswith("cloudmask "):
            in_record = False
        if not in_record:
            kept.append(line)
    return "\n".join(kept)


def stopped_in_one_line(proc) -> str:
    proc.wait(180)
    err = job_output(proc.stderr.read())
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and "Traceback (most recent call last)" not in err, err[-3000:]
    assert lines[-1].startswith("cloudmask run: error: stopped writing") and "lease" in lines[-1], err[-2000:]
    return lines[-1]


@pytest.fixture
def job(api, s3_env, test_weights_file):
    env = dict(os.environ, CLOUDMASK_LEASE_S=LEASE_S)

    def make(name):
        out = f"{s3_env}/{name}"
        return out, cli_job(api, out, test_weights_file, "--workers", "1", "--in-flight", "1"), env

    return make


def test_a_job_paused_past_its_lease_stops_when_it_resumes_and_leaves_the_new_jobs_work(job, first_run):
    out, cmd, env = job("after.zarr")
    a = start(cmd, env)
    until(a, "[1/4]")
    a.send_signal(signal.SIGSTOP)
    try:
        b = once_the_lease_runs_out(cmd, env)
        assert b.returncode == 0 and "skipping 1 scenes already done" in b.stdout, b.stderr[-2000:]
        after_b = everything(out)
    finally:
        a.send_signal(signal.SIGCONT)
    stopped_in_one_line(a)
    assert everything(out) == after_b  # nothing of B's, records or masks, was touched
    verify = subprocess.run([CLOUDMASK, "verify", out], capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and "3 intact, 0 damaged" in verify.stdout, verify.stdout
    table = fsspec.open(f"{out}/_cloudmask/scenes.csv", "rt").open().read().splitlines()
    assert len(table) == 1 + 4 and sum(",ok," in line for line in table) == 3
    assert_same_store(first_run[0], out)


def test_a_job_that_resumes_while_the_new_job_runs_stops_and_the_new_job_finishes(job, first_run):
    out, cmd, env = job("during.zarr")
    a = start(cmd, env)
    until(a, "[1/4]")
    a.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120
        while True:  # B starts once A's lease ran out, and says when it holds the store
            b = start(cmd, env)
            lines = []
            for line in b.stdout:
                lines.append(line)
                if line.startswith("writing "):
                    break
            if lines and lines[-1].startswith("writing "):
                break
            b.wait(60)
            assert "being written by another job" in b.stderr.read() and time.monotonic() < deadline
    finally:
        a.send_signal(signal.SIGCONT)
    stopped_in_one_line(a)
    rest, err = b.communicate(timeout=600)
    assert b.returncode == 0, err[-2000:]
    verify = subprocess.run([CLOUDMASK, "verify", out], capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and "3 intact, 0 damaged" in verify.stdout, verify.stdout
    assert_same_store(first_run[0], out)


def test_a_job_whose_lease_object_is_overwritten_records_no_scene_after_and_a_rerun_completes(job, first_run):
    out, cmd, env = job("overwritten.zarr")
    a = start(cmd, env)
    until(a, "[1/4]")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fs, root = fsspec.core.url_to_fs(out)
    # another holder's record (a job gone from this host, so a later run may take it over)
    fs.pipe_file(
        f"{root}/{'/'.join(LOCK)}",
        json.dumps(
            {"pid": dead.pid, "host": os.uname().nodename, "job": "other", "token": "not-a-s", "ttl_s": 3}
        ).encode(),
    )
    recorded = len(names(out, "_cloudmask", "manifest"))
    stopped_in_one_line(a)
    assert len(names(out, "_cloudmask", "manifest")) == recorded == 1  # nothing recorded after the loss
    assert json.loads(fs.cat_file(f"{root}/{'/'.join(LOCK)}"))["token"] == "not-a-s"  # the lock left as it is
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "skipping 1 scenes already done" in again.stdout, again.stderr[-2000:]
    verify = subprocess.run([CLOUDMASK, "verify", out], capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and "3 intact, 0 damaged" in verify.stdout, verify.stdout
    assert_same_store(first_run[0], out)


def test_records_are_not_written_once_the_lease_is_lost_even_before_the_heartbeat_sees_it(s3_env):
    """The job's own check, not only the workers': a manifest entry, the statistics and the table are each written
    only after a conditional renewal of the lease, so a lease lost a moment ago (overwritten here, between two
    heartbeats) stops the very next record."""
    from pipeline.errors import LeaseLostError
    from pipeline.store.maskstore import MaskStore

    url = f"{s3_env}/records.zarr"
    store = MaskStore(url)
    fs, root = fsspec.core.url_to_fs(url)
    with store.lock():
        store.mark_done("S2A_before", {"status": "ok", "group": "g", "time_index": 0})
        other = {"pid": 1, "host": "elsewhere", "job": "other", "token": "theirs", "ttl_s": 60}
        fs.pipe_file(f"{root}/{'/'.join(LOCK)}", json.dumps(other).encode())
        with pytest.raises(LeaseLostError, match="stopped writing"):
            store.mark_done("S2A_after", {"status": "ok", "group": "g", "time_index": 1})
    fs.invalidate_cache()
    assert set(store.done()) == {"S2A_before"}
    assert json.loads(fs.cat_file(f"{root}/{'/'.join(LOCK)}"))["token"] == "theirs"  # the other holder's, untouched
