"""Faults of the store's medium: an S3 endpoint that refuses connections for ten seconds (ridden out), a disk that
fills (one line, nothing left half-written, a re-run completes). Real parts: moto in server mode behind a TCP relay
that can be taken down, a small tmpfs, ``cloudmask run`` as a subprocess."""

import os
import subprocess
import time

import pytest
from outage import Relay
from s3server import CREDENTIALS
from stores import assert_same_store, names
from test_faults import cli_job

pytestmark = pytest.mark.slow


def lines_until(proc, prefix: str) -> list:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"{prefix!r} never came: {''.join(seen)[-2000:]}")


def test_a_ten_second_s3_outage_is_ridden_out(api, first_run, s3_env, s3_endpoint, test_weights_file):
    """The endpoint refuses every connection for 10 s once the first scene is recorded (block writes, the lease's
    renewal and the manifest write meet it): the job waits it out and ends as an uninterrupted run does."""
    relay = Relay(s3_endpoint.removeprefix("http://"))
    out = f"{s3_env}/outage.zarr"
    env = dict(os.environ, **CREDENTIALS, AWS_ENDPOINT_URL=f"http://{relay.endpoint}")
    job = subprocess.Popen(
        cli_job(api, out, test_weights_file, "--workers", "1", "--in-flight", "1"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines_until(job, "[1/4]")
    relay.down()
    time.sleep(10)  # the outage itself
    relay.up()
    rest, err = job.communicate(timeout=600)
    assert job.returncode == 0 and "[4/4]" in rest, err[-3000:]
    assert "Traceback (most recent call last)" not in err
    assert_same_store(first_run[0], out)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root, as CI runs; ``mount`` must work)."""
    where = tmp_path / "small"
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True, text=True)
    assert p.returncode == 0, f"this test needs to mount a tmpfs (root): {p.stderr}"
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk) -> None:
    """Fill ``disk`` to the last byte (unbuffered: nothing is left to flush when the file closes)."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while f.write(b"\0" * size):
                    pass
            except OSError:
                pass


def test_a_full_disk_stops_the_job_in_one_line_and_a_rerun_completes(api, first_run, small_disk, test_weights_file):
    out = small_disk / "masks.zarr"
    cmd = cli_job(api, out, test_weights_file, "--workers", "1", "--in-flight", "1")
    # full before the job: its lock cannot be written
    fill(small_disk)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback (most recent call last)" not in p.stderr, p.stderr[-3000:]
    assert "No space left on device" in last and last.startswith("cloudmask run: error:"), last
    assert not (out / "_cloudmask" / "lock.json").exists()
    (small_disk / "filler").unlink()
    # full in the middle of the job: it stops in one line, what it recorded is whole
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines_until(job, "[1/4]")
    fill(small_disk)
    rest, err = job.communicate(timeout=600)
    last = err.strip().splitlines()[-1]
    assert job.returncode == 2 and "Traceback (most recent call last)" not in err, err[-3000:]
    assert "No space left on device" in last and last.startswith("cloudmask run: error:"), last
    assert not (out / "_cloudmask" / "lock.json").exists()
    assert not [n for n in names(out, "_cloudmask", "manifest") if not n.endswith(".json")]  # no half-written files
    (small_disk / "filler").unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_store(first_run[0], out)
