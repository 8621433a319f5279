"""Project glue: environment.yml matches pyproject.toml; .ci/run runs exactly the README's test command."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pyyaml": "pyyaml"}  # PyPI name -> conda-forge name where they differ


def pins(requirements):
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(==|>=)\s*([^\s;]+)", req.strip())
        assert m, f"unpinned requirement {req!r}"
        out[m.group(1).lower()] = (m.group(3), m.group(4))
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = pins(
        project["dependencies"]
        + extras["test"]
        + extras["datasets"]
        + extras["peers"]
        + extras["providers"]
        + extras["stacserver"]
        + extras["clusters"]
    )
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for item in dep["pip"]:
                if not item.startswith("-"):
                    name, version = item.split("==")
                    pip[name.lower().split("[")[0]] = version
        elif "=" in dep:
            name, version = dep.split("=")
            conda[name.lower()] = version
    assert all(op == "==" for op, _ in wanted.values()), "runtime pins are exact"
    for name, (_, version) in wanted.items():
        found = pip.get(name) or conda.get(CONDA_NAMES.get(name, name))
        assert found == version, f"{name}: pyproject pins {version}, environment.yml has {found}"
    extra = (set(pip) | set(conda)) - set(wanted) - {"python", "pip"}
    assert not extra, f"environment.yml has packages pyproject.toml lacks: {extra}"
    assert conda["python"] == project["requires-python"].removeprefix(">=")


def test_gpu_extra_is_what_the_gpu_recipe_asks_for(monkeypatch):
    """The gpu recipe imports dask_cuda; where it is missing the refusal names the extra, the extra provides
    dask-cuda (from the release that supports our distributed pin on), and the image installs the extra."""
    import importlib.util

    from flows import clusters
    from pipeline.errors import ConfigError

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    op, version = pins(project["optional-dependencies"]["gpu"])["dask-cuda"]
    assert op == ">=" and tuple(map(int, version.split("."))) >= (26, 10)
    assert re.search(r"'\.\[gpu(,\w+)*\]'", (ROOT / "deploy" / "Dockerfile").read_text())
    if importlib.util.find_spec("dask_cuda") is None:
        monkeypatch.setattr(clusters, "visible_gpus", lambda: 1)  # past the no-GPU refusal, to the import
        with pytest.raises(ConfigError, match=r"needs dask-cuda: pip install 'cloudmask-pipeline\[gpu\]'"):
            clusters.start(clusters.load_recipe("gpu"))


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"## Install and the two commands.*?```sh\n(.+?)```", readme, re.S)
    assert m, "README gives its two commands in the first sh block of 'Install and the two commands'"
    demo, command = (line.split("#")[0].strip() for line in m.group(1).strip().splitlines())
    assert demo == "make demo"
    steps = [
        line.strip()
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    assert steps == [command]


def test_the_job_names_no_detector_it_runs_them_through_the_table():
    """Planning and execution ask the detector table (``pipeline.detect.detectors.DETECTORS``) what a detector runs
    on; no module of the job names a peer or imports the peers' module, so adding a detector touches the table only."""
    import ast

    from pipeline.detect.detectors import DETECTORS

    for path in sorted((ROOT / "pipeline" / "job").glob("*.py")):
        tree = ast.parse(path.read_text())
        texts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        named = {name for name in DETECTORS if name != "mscloudcam" and any(name in t for t in texts if "\n" not in t)}
        imports = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and "peers" in n.module
        }
        assert not named and not imports, (path.name, named, imports)
