"""Cluster recipes: ``deploy/clusters/NAME.yaml`` turned into a running Dask cluster by its own library.

A recipe is data: ``engine`` (local, gpu, slurm or kubernetes), the engine's keyword ``options`` and, for
batch systems, ``scale`` (workers to ask for). ``cloudmask run --cluster NAME`` (or a path to a YAML file)
uses it; a job file may override options with ``cluster_options``. No scheduler, queue or RPC of our own:
LocalCluster, dask-cuda's LocalCUDACluster, dask-jobqueue's SLURMCluster, dask-kubernetes' KubeCluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.shipped import shipped_dir

from .parsers import yaml_mapping

RECIPES = shipped_dir("clusters")
ENGINES = ("local", "gpu", "slurm", "kubernetes")
WORKER_MEMORY_GB = 3  # what one local worker needs for a 2048 px block of 13 bands and the model
# what a worker imports to read, upsample and predict a block: a forkserver imports it once per client process
WORKER_IMPORTS = ("distributed", "numpy", "pandas", "torch", "timm", "pipeline.job.tasks", "pipeline.detect.model")


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(name: str, options: dict | None = None, scale: int | None = None) -> dict:
    """The recipe ``name`` (in deploy/clusters) or at path ``name``, with ``options`` merged over its
    options and ``scale`` (worker count) over its scale."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"cluster recipe {name!r} not found; known recipes: {', '.join(names())} "
            f"(or pass the path of a recipe .yaml file)"
        )
    recipe = yaml_mapping(path, "cluster recipe")
    if recipe.get("engine") not in ENGINES:
        raise ConfigError(f"{path}: engine {recipe.get('engine')!r}; expected one of {', '.join(ENGINES)}")
    if options:
        if not isinstance(options, dict):
            raise ConfigError(f"cluster_options must be a mapping of {recipe['engine']} options, not {options!r}")
        recipe["options"] = dict(recipe.get("options") or {}, **options)
        recipe["overridden"] = sorted(options)  # named as the job file's cluster_options in messages
    if scale is not None:
        if scale < 1:
            raise ConfigError(f"workers={scale} must be at least 1")
        recipe["scale"] = scale
    recipe["path"] = str(path)
    return recipe


def local_workers(memory_gb: float | None = None, cores: int | None = None) -> int:
    """One worker per core, but no more than memory allows at WORKER_MEMORY_GB each; at least one."""
    cores = cores or len(os.sched_getaffinity(0))
    if memory_gb is None:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(cores, int(memory_gb // WORKER_MEMORY_GB)))


def visible_gpus() -> int:
    """CUDA GPUs this process can use (0 without a driver: never raises)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no driver, no NVML: no GPU
        return 0


def slurm_cluster(recipe: dict):
    """A dask-jobqueue SLURMCluster from the recipe (its scheduler starts here; no job is submitted yet)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("--cluster slurm needs dask-jobqueue: pip install 'cloudmask-pipeline[clusters]'") from None
    options = dict(recipe.get("options") or {})
    options["job_script_prologue"] = list(options.get("job_script_prologue") or []) + [
        f"export {k}={v}" for k, v in worker_env(recipe).items()
    ]
    return SLURMCluster(**options)


def adapt_options(recipe: dict) -> dict:
    """The recipe's ``adapt`` (``minimum_jobs``, ``maximum_jobs``, optional ``interval``, ``wait_count``) checked,
    for dask-jobqueue's ``cluster.adapt``."""
    adapt = recipe["adapt"]
    known = {"minimum_jobs", "maximum_jobs", "interval", "wait_count", "target_duration"}
    if not isinstance(adapt, dict) or set(adapt) - known or "maximum_jobs" not in adapt:
        raise ConfigError(
            f"{recipe.get('path')}: adapt must be a mapping with maximum_jobs (and optionally "
            f"{', '.join(sorted(known - {'maximum_jobs'}))}), not {adapt!r}"
        )
    low, high = int(adapt.get("minimum_jobs", 0)), int(adapt["maximum_jobs"])
    if not 0 <= low <= high or high < 1:
        raise ConfigError(
            f"{recipe.get('path')}: adapt needs 0 <= minimum_jobs <= maximum_jobs and maximum_jobs >= 1, "
            f"not {low} and {high}"
        )
    return dict(adapt, minimum_jobs=low, maximum_jobs=high)


def worker_env(recipe: dict) -> dict[str, str]:
    """The recipe's ``dask_config`` as the environment variables Dask reads it from, for workers started
    elsewhere (SLURM jobs, Kubernetes pods), and torch's OpenMP threads set to sleep when they wait (as
    ``cloudmask`` sets them for the processes it starts)."""
    return {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        **{
            "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
            for key, value in (recipe.get("dask_config") or {}).items()
        },
    }


def kubernetes_spec(recipe: dict) -> dict:
    """The dask-kubernetes operator's DaskCluster manifest for the recipe (built with ``make_cluster_spec``):
    GPU workers with ``nthreads`` threads and the Dask resource, node selector and tolerations; a CPU scheduler."""
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError:
        raise ConfigError(
            "--cluster kubernetes needs dask-kubernetes: pip install 'cloudmask-pipeline[clusters]'"
        ) from None
    worker = recipe.get("worker") or {}
    command = ["dask", "worker", "--nthreads", str(worker.get("nthreads", 1))]
    if worker.get("dask_resources"):
        command += ["--resources", worker["dask_resources"]]
    spec = make_cluster_spec(
        recipe.get("name", "cloudmask"),
        image=recipe["image"],
        n_workers=int(recipe.get("scale", 1)),
        worker_command=command,
    )
    pod = spec["spec"]["worker"]["spec"]
    pod["containers"][0]["resources"] = worker.get("resources", {})
    if worker.get("node_selector"):
        pod["nodeSelector"] = worker["node_selector"]
    if worker.get("tolerations"):
        pod["tolerations"] = worker["tolerations"]
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler["resources"] = (recipe.get("scheduler") or {}).get("resources", {})
    for c in (scheduler, pod["containers"][0]):
        c["env"] = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    pod["containers"][0]["env"] += [{"name": k, "value": v} for k, v in worker_env(recipe).items()]
    access = recipe.get("store_access") or {}
    if access.get("secret"):  # object-storage credentials (AWS_ACCESS_KEY_ID ...) for the workers' writes
        pod["containers"][0]["envFrom"] = [{"secretRef": {"name": access["secret"], "optional": True}}]
    if access.get("volume_claim"):  # or a shared volume holding local-path stores
        pod["volumes"] = [{"name": "stores", "persistentVolumeClaim": {"claimName": access["volume_claim"]}}]
        pod["containers"][0]["volumeMounts"] = [{"name": "stores", "mountPath": access.get("mount_path", "/stores")}]
    return spec


def checked_kubernetes_spec(recipe: dict) -> dict:
    """``kubernetes_spec``, refused (``ConfigError``) unless the installed operator's CRD accepts it as written."""
    from .crd import crd_problems

    spec = kubernetes_spec(recipe)
    problems = crd_problems(spec)
    if problems:
        raise ConfigError(
            f"{recipe.get('path')}: the DaskCluster manifest does not fit the Dask operator's CRD: "
            f"{'; '.join(problems[:5])}"
        )
    return spec


def render(recipe: dict) -> str:
    """What the recipe asks its engine for, as the engine's own text: the SLURM job script, the Kubernetes
    manifest, or the options of a local cluster."""
    import yaml

    if recipe["engine"] == "slurm":
        cluster = slurm_cluster(recipe)
        try:
            return cluster.job_script()
        finally:
            cluster.close()
    if recipe["engine"] == "kubernetes":
        return yaml.safe_dump(checked_kubernetes_spec(recipe), sort_keys=False)
    return yaml.safe_dump({"engine": recipe["engine"], "options": recipe.get("options") or {}}, sort_keys=False)


# what an option of a recipe must hold, where its engine's own default does not say (None)
KINDS = {
    "n_workers": (int, "auto"),
    "threads_per_worker": (int, "auto"),
    "processes": (bool, int),
    "memory_limit": (str, int, float),
    "memory": (str,),
    "cores": (int,),
    "walltime": (str,),
    "queue": (str,),
    "env": (dict,),
    "resources": (dict,),
    "job_extra_directives": (list,),
    "worker_extra_args": (list,),
    "job_script_prologue": (list,),
    "local_directory": (str,),
    "host": (str,),
    "dashboard_address": (str,),
    "memory_target_fraction": (float, bool),
    "memory_spill_fraction": (float, bool),
    "memory_pause_fraction": (float, bool),
    "CUDA_VISIBLE_DEVICES": (str, list),
    "rmm_pool_size": (str, int),
}


def engine_options(engine: str) -> set[str]:
    """The keyword options the engine's cluster (and the workers it starts) take."""
    import inspect

    def names(*callables) -> set[str]:
        return {
            p.name
            for c in callables
            for p in inspect.signature(c).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
        }

    if engine == "slurm":
        from dask_jobqueue.core import Job, JobQueueCluster
        from dask_jobqueue.slurm import SLURMJob

        return names(JobQueueCluster.__init__, SLURMJob.__init__, Job.__init__)
    from distributed import LocalCluster, Nanny, Worker

    found = names(LocalCluster.__init__, Nanny.__init__, Worker.__init__)
    if engine == "gpu":
        try:
            from dask_cuda import LocalCUDACluster

            found |= names(LocalCUDACluster.__init__)
        except ImportError:
            found |= set(KINDS)  # checked once dask-cuda is there; its own options are not known without it
    return found


def check_options(recipe: dict) -> None:
    """Refuse (``ConfigError``, one line naming the recipe, the option and its value) options the recipe's engine does
    not take or values of the wrong kind, before the search or any cluster starts."""
    import difflib

    options = recipe.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(
            f"{recipe.get('path')}: options must be a mapping of {recipe['engine']} options, not {options!r}"
        )
    if recipe["engine"] == "kubernetes":
        return  # a manifest, checked against the operator's CRD when rendered
    known = engine_options(recipe["engine"])
    for key, value in options.items():
        where = (
            f"cluster_options (over the {recipe['engine']} recipe {recipe.get('path')})"
            if key in recipe.get("overridden", ())
            else str(recipe.get("path"))
        )
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=2)
            raise ConfigError(
                f"{where}: option {key!r} is not one {recipe['engine']} clusters take"
                f"{f' (did you mean {close[0]!r}?)' if close else ''}"
            )
        kinds = KINDS.get(key)
        if kinds is None or value is None:
            continue
        ok = any(
            value == k if isinstance(k, str) else isinstance(value, k) and not (k is int and isinstance(value, bool))
            for k in kinds
        )
        if not ok:
            want = " or ".join(
                repr(k)
                if isinstance(k, str)
                else {
                    int: "a whole number",
                    float: "a number",
                    str: "text",
                    bool: "true/false",
                    dict: "a mapping",
                    list: "a list",
                }[k]
                for k in kinds
            )
            raise ConfigError(f"{where}: option {key}: {value!r}; expected {want}")


def check_recipe(recipe: dict) -> None:
    """Refuse, before anything starts, a recipe this machine cannot run: options its engine does not take, the gpu
    engine without a visible GPU or without dask-cuda, the slurm engine without SLURM's ``sbatch``."""
    if recipe.get("adapt"):
        adapt_options(recipe)
    check_options(recipe)
    if recipe["engine"] == "slurm" and not shutil.which("sbatch"):
        raise ConfigError(
            "--cluster slurm needs SLURM's sbatch on PATH (run from a SLURM login node, or install "
            "slurm-client); or start workers yourself and pass --scheduler"
        )
    if recipe["engine"] == "gpu":
        if not visible_gpus():
            raise ConfigError(
                "--cluster gpu needs NVIDIA GPUs, but torch sees none "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                "use --cluster local on this machine"
            )
        try:
            import dask_cuda  # noqa: F401
        except ImportError:
            raise ConfigError("--cluster gpu needs dask-cuda: pip install 'cloudmask-pipeline[gpu]'") from None


def scheduler_address(path: Path, timeout: float = 60.0) -> str:
    """The address in the scheduler file a starting ``dask scheduler --scheduler-file PATH`` writes: waited for
    until it holds whole JSON (the file appears before its content); ``ConfigError`` after ``timeout`` seconds."""
    import json
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(Path(path).read_text())["address"]
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise ConfigError(f"no Dask scheduler wrote its address to {path} within {timeout:.0f} s") from None
            time.sleep(0.05)


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Refuse (``ConfigError``) a ``--scheduler`` address that does not accept a connection within ``timeout``
    seconds, before any search or work."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.scheme not in ("tcp", "tls") or not url.hostname or not url.port:
        raise ConfigError(f"--scheduler {address!r}: expected tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786)")
    try:
        socket.create_connection((url.hostname, url.port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"--scheduler {address}: no Dask scheduler answers there within {timeout:.0f} s ({exc}); "
            f"start one (dask scheduler) or drop --scheduler to start a cluster"
        ) from None


def forked_workers() -> dict:
    """Dask settings that start local worker processes from a forkserver which has imported ``WORKER_IMPORTS``
    once, instead of spawning each worker to import torch and timm again (about 8 CPU-s per worker). Empty
    where the platform has no forkserver (Windows) or the Dask config already names a start method."""
    import multiprocessing

    import dask

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    if dask.config.get("distributed.worker.multiprocessing-method") != "spawn":  # the user chose: keep it
        return {}
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context()  # Dask sets its own preload list once; ours replaces it before the server starts
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_IMPORTS))
    return {"distributed.worker.multiprocessing-method": "forkserver"}


def warm_workers(recipe: dict) -> None:
    """For a local recipe whose workers fork from the forkserver (``forked_workers``): start that server now, so that
    its imports (torch, timm: seconds) run beside the client's checks and search instead of after them. It is no
    cluster: a job refused by its checks never starts one, and the server ends with the client."""
    if recipe["engine"] != "local":
        return
    method = (recipe.get("dask_config") or {}).get("distributed.worker.multiprocessing-method")
    if forked_workers() and method in (None, "forkserver"):
        from multiprocessing import forkserver

        forkserver.ensure_running()


def start(recipe: dict):
    """Start the recipe's cluster and return ``(cluster, client)``."""
    import dask
    from distributed import Client

    check_recipe(recipe)
    engine, options = recipe["engine"], dict(recipe.get("options") or {})
    if engine == "local":
        from distributed import LocalCluster

        if recipe.get("scale") is not None:
            options["n_workers"] = recipe["scale"]
        if options.get("n_workers", "auto") == "auto":
            options["n_workers"] = local_workers()
        if options.get("threads_per_worker") == "auto":
            options["threads_per_worker"] = max(1, len(os.sched_getaffinity(0)) // options["n_workers"])
        settings = dict(forked_workers(), **(recipe.get("dask_config") or {}))
        with dask.config.set(settings):  # nannies hand their config to the workers
            cluster = LocalCluster(**options)
    elif engine == "gpu":
        from dask_cuda import LocalCUDACluster

        with dask.config.set(recipe.get("dask_config") or {}):
            cluster = LocalCUDACluster(**options)
    elif engine == "slurm":
        cluster = slurm_cluster(recipe)
        if recipe.get("adapt"):  # jobs submitted and cancelled with the work: between minimum_jobs and maximum_jobs
            cluster.adapt(**adapt_options(recipe))
        else:
            cluster.scale(jobs=int(recipe.get("scale", 1)))
    else:
        from dask_kubernetes.operator import KubeCluster

        cluster = KubeCluster(custom_cluster_spec=checked_kubernetes_spec(recipe), namespace=recipe.get("namespace"))
    return cluster, Client(cluster)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="list the cluster recipes, or show what one asks its engine for",
        description="Cluster recipes live in deploy/clusters/*.yaml; `cloudmask run --cluster NAME` starts one.",
        epilog="examples:\n  cloudmask cluster list\n  cloudmask cluster render slurm      # the job script\n"
        "  cloudmask cluster render kubernetes | kubectl apply -f -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("list", "render"))
    p.add_argument("name", nargs="?", help="recipe name or .yaml path (for render)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.action == "list":
        import yaml

        for name in names():
            recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
            print(f"{name:12s} engine {recipe['engine']}")
        return 0
    if not args.name:
        raise ConfigError("cloudmask cluster render needs a recipe name, e.g. cloudmask cluster render slurm")
    print(render(load_recipe(args.name)), end="")
    return 0
