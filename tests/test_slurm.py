"""``--cluster slurm`` on a real SLURM: Debian's slurm-wlm and munge on 127.0.0.1 (``tests/slurm.py``).

dask-jobqueue submits real batch jobs with ``sbatch``; each runs a ``dask worker`` that connects back to the
job's scheduler. The stores are compared with the LocalCluster reference run (``first_run``) chunk by chunk.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from slurm import missing, slurm_cluster, squeue
from stores import assert_same_store

from flows.clusters import load_recipe, start
from pipeline.job.execute import run_job

pytestmark = pytest.mark.slow

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = missing()
    if why:
        pytest.fail(f"a real SLURM is needed: {why}")
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def recipe_file(folder: Path, **extra) -> Path:
    """The shipped recipe's shape for this one-node test cluster: CPU jobs of one core and 3 GB, the scheduler
    on 127.0.0.1, workers running this Python."""
    recipe = {
        "engine": "slurm",
        "scale": 2,
        "options": {
            "queue": "debug",
            "cores": 1,
            "processes": 1,
            "memory": "3GB",
            "walltime": "00:30:00",
            "python": sys.executable,
            "local_directory": str(folder / "workers"),
            "log_directory": str(folder / "logs"),
            "scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
            "worker_extra_args": ["--host", "127.0.0.1"],
        },
        **extra,
    }
    path = folder / "slurm-test.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cloudmask_run_on_slurm_gives_the_local_cluster_store(api, first_run, slurm, tmp_path, test_weights_file):
    out = tmp_path / "slurm.zarr"
    p = subprocess.run(
        [
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
            str(test_weights_file),
            "--overlap",
            "16",
            "--chunk",
            "96",
            "--cluster",
            str(recipe_file(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=slurm,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[4/4]" in p.stdout
    assert_same_store(first_run[0], out)
    logs = list((tmp_path / "logs").glob("*.err"))
    assert len(logs) == 2 and all("Registered to" in f.read_text() for f in logs)  # two real batch jobs' workers
    assert squeue(slurm) == []  # the job's end cancelled its workers' batch jobs


def test_a_worker_job_cancelled_mid_run_loses_nothing_and_adaptive_scaling_replaces_it(
    api, first_run, slurm, tmp_path, test_weights_file, spec, monkeypatch
):
    """Adaptive (1 to 2 jobs, `scale: 1` otherwise): the job scales up to two SLURM jobs, one is ``scancel``ed as a
    mask task starts on its worker, the work is redone elsewhere and the store equals the reference; never more
    than 2 jobs at once. (Whether adaptive then submits a replacement depends on the work left: not asserted.)"""
    from plugins import mask_task_starts

    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    recipe = load_recipe(
        str(recipe_file(tmp_path, scale=1, adapt={"minimum_jobs": 1, "maximum_jobs": 2, "interval": "500ms"}))
    )

    cluster, client = start(recipe)
    seen_jobs: set[str] = set()
    most = 0
    cancelled = []
    done = threading.Event()

    def watch():  # SLURM's own view, until the job ends
        nonlocal most
        while not done.wait(0.3):
            jobs = [j for j in squeue(slurm) if j[2] in ("RUNNING", "PENDING", "CONFIGURING")]
            seen_jobs.update(j[0] for j in jobs)
            most = max(most, len(jobs))

    def cancel(event):
        if not cancelled:
            name = str(event[1]["name"])
            job = cluster.workers.get(name.rsplit("-", 1)[0] if name not in cluster.workers else name)
            if job is not None and job.job_id:
                cancelled.append(job.job_id)
                subprocess.run(["scancel", job.job_id], env=slurm, check=True, timeout=30)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        client.register_plugin(mask_task_starts(), name="mask-task-starts")
        client.subscribe_topic("mask-task-started", cancel)
        result = run_job(
            spec(api, tmp_path / "adaptive.zarr", test_weights_file, in_flight=4), client, log=lambda _: None
        )
    finally:
        done.set()
        watcher.join()
        client.close()
        cluster.close()
    assert cancelled, "no mask task was seen starting on a SLURM worker"
    assert [s.status for s in result.stats].count("ok") == 3, [(s.item_id, s.status, s.reason) for s in result.stats]
    assert_same_store(first_run[0], tmp_path / "adaptive.zarr")
    # scale 1 without adapt: a second job means adaptive scaling asked for it; never more than its maximum
    assert cancelled[0] in seen_jobs and len(seen_jobs) >= 2 and most <= 2, (seen_jobs, most)
    assert os.environ["SLURM_CONF"] == slurm["SLURM_CONF"]
