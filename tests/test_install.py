"""A plain (non-editable) ``pip install .`` -- no extras -- finds the shipped weights and cluster recipes away from
the clone, and runs a job on the demo archive; what needs an extra says so in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the optional extras' packages (providers: boto3, s3fs, planetary-computer; peers; clusters), made unimportable in
# the installed copy's processes, as in an environment that installed the core dependencies only
EXTRAS = (
    "boto3",
    "botocore",
    "s3fs",
    "aiobotocore",
    "planetary_computer",
    "ukis_csmask",
    "s2cloudless",
    "dask_jobqueue",
    "dask_kubernetes",
    "tacoreader",
    "lmdb",
)
BLOCKER = f"""
import importlib.abc, sys
class _NoExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (an extra, not installed)", name=name)
        return None
sys.meta_path.insert(0, _NoExtras())
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from the source tree (this venv's setuptools, no download) and installed by pip into a folder
    of its own, ahead of the editable install; the core dependencies come from this venv, the extras' are blocked."""
    tmp_path = tmp_path_factory.mktemp("install")
    wheels, site, blocker = tmp_path / "wheels", tmp_path / "site", tmp_path / "no-extras"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("cloudmask_pipeline-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=600
    )
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": f"{site}:{blocker}", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    code = (
        "import sys, pipeline; from flows.cli import main; print(pipeline.__file__, flush=True); "
        "sys.exit(main(sys.argv[1:]))"
    )

    def cloudmask(*args, ok=True):
        p = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
        )
        assert (p.returncode == 0) == ok, p.stdout[-2000:] + p.stderr[-2000:]
        where, out = p.stdout.split("\n", 1)
        assert Path(where).is_relative_to(site), where  # the installed copy, not the clone
        return out if ok else p.stderr

    return site, cloudmask


@pytest.mark.slow
def test_a_wheel_install_finds_its_weights_and_recipes(installed):
    site, cloudmask = installed
    for starter in ("mscloudcam_s2l1c_starter.safetensors", "mscloudcam_s2l2a_starter.safetensors"):
        assert (site / "pipeline" / "_shipped" / "weights" / starter).is_file()
    info = json.loads(cloudmask("weights", "info", "--json"))
    assert Path(info["source"]).is_relative_to(site) and info["model"] == "mscloudcam" and len(info["bands"]) == 13
    listed = cloudmask("cluster", "list")
    assert all(name in listed for name in ("local", "gpu", "slurm", "kubernetes"))


@pytest.mark.slow
def test_a_plain_install_runs_the_job_on_the_demo_archive(installed, tmp_path, test_weights_file):
    """Without any extra (no boto3, no s3fs): the demo archive's COGs behind the local STAC API are masked, every
    scene ok; an S3 store names the extra it needs, in one line."""
    import pandas as pd

    from flows.archive import collection, demo_archive
    from flows.stacserver import local_stac_api

    _, cloudmask = installed
    items = demo_archive(tmp_path / "archive", log=lambda _: None)
    out = tmp_path / "masks.zarr"
    with local_stac_api([collection()], items) as api:
        cloudmask(
            "run",
            "--stac-url",
            api,
            "--collection",
            "sentinel-2-l1c",
            "--out",
            str(out),
            "--weights",
            str(test_weights_file),
            "--workers",
            "1",
        )
        err = cloudmask(
            "run",
            "--stac-url",
            api,
            "--collection",
            "sentinel-2-l1c",
            "--out",
            "s3://bucket/x.zarr",
            "--weights",
            str(test_weights_file),
            ok=False,
        )
    table = pd.read_csv(out / "_cloudmask" / "scenes.csv")
    assert len(table) == 2 and (table["status"] == "ok").all() and (table["valid_pixels"] > 1_000_000).any()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cloudmask-pipeline[providers]'" in lines[0], err
