"""A plain (non-editable) ``pip install .`` finds the shipped weights and cluster recipes, away from the clone."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_install_finds_its_weights_and_recipes(tmp_path):
    # the wheel is built from the source tree (this venv's setuptools, no download) and installed by pip into a
    # folder of its own, which goes ahead of the editable install; the dependencies come from this venv
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True, timeout=600)
    (wheel,) = wheels.glob("cloudmask_pipeline-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True,
                   timeout=600)
    for starter in ("mscloudcam_s2l1c_starter.safetensors", "mscloudcam_s2l2a_starter.safetensors"):
        assert (site / "pipeline" / "_shipped" / "weights" / starter).is_file()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}  # ahead of the editable install
    code = ("import sys, pipeline; from flows.cli import main; print(pipeline.__file__, flush=True); "
            "sys.exit(main(sys.argv[1:]))")

    def cloudmask(*args):
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        where, out = p.stdout.split("\n", 1)
        assert Path(where).is_relative_to(site), where  # the installed copy, not the clone
        return out

    info = json.loads(cloudmask("weights", "info", "--json"))
    assert Path(info["source"]).is_relative_to(site) and info["model"] == "mscloudcam" and len(info["bands"]) == 13
    listed = cloudmask("cluster", "list")
    assert all(name in listed for name in ("local", "gpu", "slurm", "kubernetes"))
