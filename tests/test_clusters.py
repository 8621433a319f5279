"""Cluster recipes rendered through their own libraries (dask-jobqueue, dask-kubernetes), and started where
this machine can (LocalCluster; the GPU recipe must refuse cleanly without GPUs)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.clusters import RECIPES, kubernetes_spec, load_recipe, local_workers, render, start
from pipeline.errors import ConfigError

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset

ROOT = Path(__file__).resolve().parents[1]


def test_every_recipe_loads_and_names_its_engine():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == ["gpu", "kubernetes", "local", "slurm"]
    for name in ("gpu", "kubernetes", "local", "slurm"):
        assert load_recipe(name)["engine"] == name
    with pytest.raises(ConfigError, match="known recipes: gpu, kubernetes, local, slurm"):
        load_recipe("pbs")
    with pytest.raises(ConfigError, match="workers=0"):
        load_recipe("local", scale=0)


def test_local_recipe_starts_single_threaded_workers_on_127_0_0_1():
    cluster, client = start(load_recipe("local", {"dashboard_address": "127.0.0.1:0"}, scale=2))
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())  # auto: cores / workers
        # the recipe's dask_config reaches the worker processes
        import dask

        assert set(client.run(dask.config.get, "distributed.worker.profile.interval").values()) == {"100ms"}
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
    finally:
        client.close()
        cluster.close()
    assert local_workers(memory_gb=64, cores=16) == 16 and local_workers(memory_gb=7, cores=16) == 2
    assert local_workers(memory_gb=1, cores=4) == 1


def _model_thread_torch_threads(weights: str) -> int:
    import torch

    from pipeline.config import InferSpec
    from pipeline.detect.detectors import get_predictor
    from pipeline.detect.runtime import on_model_thread

    get_predictor(weights, InferSpec(overlap=16))
    return on_model_thread(torch.get_num_threads)


def test_a_worker_runs_the_model_on_as_many_torch_threads_as_it_has_threads(test_weights_file):
    """Dask starts workers with OMP_NUM_THREADS=1; the model thread takes the worker's thread count instead,
    whether the model is first built by a task or by ``Client.run`` (as the benchmarks warm it)."""
    from distributed import Client, LocalCluster

    for warm_with_run in (True, False):
        with (
            LocalCluster(n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            if warm_with_run:
                assert set(client.run(_model_thread_torch_threads, str(test_weights_file)).values()) == {2}
            assert client.submit(_model_thread_torch_threads, str(test_weights_file), pure=False).result() == 2
            assert set(client.run(lambda: __import__("os").environ["OMP_NUM_THREADS"]).values()) == {"1"}


def test_gpu_recipe_refuses_cleanly_without_a_gpu(test_weights_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test is about machines without a GPU")
    with pytest.raises(ConfigError, match="--cluster gpu needs NVIDIA GPUs, but torch sees none"):
        start(load_recipe("gpu"))
    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    p = subprocess.run(
        [
            cloudmask,
            "run",
            "--stac-url",
            "http://127.0.0.1:9",
            "--collection",
            "c",
            "--out",
            str(tmp_path / "x.zarr"),
            "--cluster",
            "gpu",
            "--weights",
            str(test_weights_file),
            "--overlap",
            "16",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "needs NVIDIA GPUs" in p.stderr, p.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_slurm_recipe_renders_a_gpu_job_script_through_dask_jobqueue():
    script = render(load_recipe("slurm", {"scheduler_options": {"host": "127.0.0.1"}}))
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script
    assert "#SBATCH -t 04:00:00" in script and "#SBATCH --cpus-per-task=8" in script
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=100ms" in script  # the recipe's dask_config
    assert "export OMP_WAIT_POLICY=PASSIVE" in script  # torch's OpenMP threads sleep when they wait (flows/cli.py)
    assert re.search(r"#SBATCH --mem=6\dG", script)  # 64GB as jobqueue writes it
    assert "--resources GPU=1" in script and "--nthreads 8" in script
    assert "tcp://127.0.0.1:" in script  # the worker connects to the scheduler the recipe started


def test_kubernetes_recipe_renders_the_operator_manifest_with_gpu_workers():
    spec = kubernetes_spec(load_recipe("kubernetes"))
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    worker = spec["spec"]["worker"]
    container = worker["spec"]["containers"][0]
    assert worker["replicas"] == 2 and container["image"] == "cloudmask-pipeline:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = container["args"]
    assert args[:4] == ["dask", "worker", "--nthreads", "4"] and args[4:6] == ["--resources", "GPU=1"]
    assert worker["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(scheduler["resources"])  # the scheduler needs no GPU
    # the checked-in manifest is exactly this rendering, and the Dockerfile builds the image it names
    assert yaml.safe_load((ROOT / "deploy" / "kubernetes" / "daskcluster.yaml").read_text()) == spec
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-runtime-", dockerfile, re.M)
    assert "-t cloudmask-pipeline:0.1.0" in dockerfile and "'.[gpu,providers]'" in dockerfile


def test_the_kubernetes_manifest_fits_the_dask_operators_crd():
    """The rendered DaskCluster validated against the CRD in dask-kubernetes' own Helm chart: no schema error and
    no field the API server would drop; GPU requests and the store's access (a Secret's credentials, or a shared
    volume) are in it. A misspelt field or a wrong type is named, and `cluster render` refuses it."""
    from flows.clusters import checked_kubernetes_spec
    from flows.crd import crd_problems

    recipe = load_recipe("kubernetes")
    spec = kubernetes_spec(recipe)
    assert crd_problems(spec) == []
    container = spec["spec"]["worker"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "cloudmask-object-storage", "optional": True}}]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    shared = kubernetes_spec(dict(recipe, store_access={"volume_claim": "cubes", "mount_path": "/cubes"}))
    assert crd_problems(shared) == [] and shared["spec"]["worker"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "cubes"
    }
    bad = kubernetes_spec(recipe)
    bad["spec"]["worker"]["spec"]["nodeselector"] = bad["spec"]["worker"]["spec"].pop("nodeSelector")
    bad["spec"]["worker"]["replicas"] = "2"
    assert crd_problems(bad) == [
        "spec.worker.replicas: '2' is not of type 'integer'",
        "spec.worker.spec.nodeselector: not in the CRD (the API server would drop it)",
    ]
    with pytest.raises(
        ConfigError,
        match=r"does not fit the Dask operator's CRD: spec.worker.spec.tolerations.\[0\]."
        r"operator: 5 is not of type 'string'",
    ):
        checked_kubernetes_spec(dict(recipe, worker=dict(recipe["worker"], tolerations=[{"key": "k", "operator": 5}])))
    assert crd_problems(dict(spec, apiVersion="kubernetes.dask.org/v2"))[0].startswith("apiVersion")


def test_cluster_cli_lists_and_renders():
    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    p = subprocess.run([cloudmask, "cluster", "list"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "slurm        engine slurm" in p.stdout
    p = subprocess.run([cloudmask, "cluster", "render", "kubernetes"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and yaml.safe_load(p.stdout)["kind"] == "DaskCluster"


def test_gpu_workers_get_the_model_tasks(api, tmp_path, test_weights_file, spec):
    """The GPU code path on CPU: of two workers only one advertises GPU=1 (as dask-cuda's do); every task of the
    job's scenes (each asks a share of a GPU) must run there, and the GPU memory release when the model falls idle
    must be a harmless no-op without CUDA."""
    import signal

    from distributed import Client, LocalCluster

    from pipeline.job.execute import run_job

    dask = str(Path(sys.executable).with_name("dask"))
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        gpu_worker = subprocess.Popen(
            [
                dask,
                "worker",
                cluster.scheduler_address,
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--resources",
                "GPU=1",
                "--name",
                "gpu0",
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            client.wait_for_workers(2, timeout=60)
            lines = []
            from distributed import get_task_stream

            with get_task_stream(client) as ts:
                result = run_job(spec(api, tmp_path / "gpu.zarr", test_weights_file), client, log=lines.append)
            names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        finally:
            import os

            os.killpg(gpu_worker.pid, signal.SIGTERM)
            gpu_worker.wait(30)
    assert "1 GPU workers: the job's tasks run on them" in lines
    assert [s.status for s in result.stats].count("ok") == 3
    ran = [(r["key"][0] if isinstance(r["key"], tuple) else r["key"], names.get(r["worker"])) for r in ts.data]
    scene_tasks = [(k, w) for k, w in ran if str(k).startswith(("mask_", "counts_"))]
    assert len({k for k, _ in scene_tasks if k.startswith("mask_")}) >= 3
    assert {w for _, w in scene_tasks} == {"gpu0"}, [m for m in scene_tasks if m[1] != "gpu0"][:5]


def test_an_unreachable_scheduler_and_a_missing_sbatch_are_refused_before_the_search(tmp_path):
    """The STAC URL is unreachable too: the one-line refusal names the scheduler (or sbatch), so it came first;
    nothing is written."""
    import os

    cloudmask = str(Path(sys.executable).with_name("cloudmask"))
    base = [
        cloudmask,
        "run",
        "--stac-url",
        "http://127.0.0.1:9",
        "--collection",
        "c",
        "--out",
        str(tmp_path / "x.zarr"),
    ]
    empty = tmp_path / "no-tools"
    empty.mkdir()
    for extra, env, said in (
        (["--scheduler", "tcp://127.0.0.1:9"], None, "no Dask scheduler answers there"),
        (["--scheduler", "127.0.0.1"], None, "expected tcp://HOST:PORT"),
        (["--cluster", "slurm"], {"PATH": str(empty)}, "needs SLURM's sbatch on PATH"),
    ):
        p = subprocess.run(
            base + extra, capture_output=True, text=True, timeout=120, env=dict(os.environ, **(env or {}))
        )
        assert p.returncode == 2 and said in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / "x.zarr").exists()
