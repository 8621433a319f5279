"""A job's settings from a YAML job file and the command line, both made from one description: the fields of
``SearchSpec``, ``InferSpec``, ``JobSpec`` (``pipeline.config``) and ``Launch`` (where the job runs), each with its
``Setting``. Names, defaults, ``--help``, job-file checks and the spec the job gets all come from there.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import MISSING, dataclass
from pathlib import Path

from pipeline.config import InferSpec, JobSpec, SearchSpec, Setting, setting, settings_of
from pipeline.errors import ConfigError

from .parsers import yaml_mapping


@dataclass(frozen=True)
class Launch:
    """Where the job runs: a running scheduler, or a cluster recipe started for the job."""

    scheduler: str | None = setting(
        "text", "address of a running Dask scheduler, e.g. tcp://127.0.0.1:8786", None, example="tcp://10.0.0.5:8786"
    )
    cluster: str = setting(
        "text",
        "cluster recipe (deploy/clusters: local, gpu, slurm, kubernetes) or a recipe .yaml path, when no "
        "--scheduler; see `cloudmask cluster list`",
        "local",
        example="slurm",
    )
    cluster_options: dict | None = setting(
        "mapping", "the recipe's engine options to override (job file only)", None, example={"cores": 8}
    )
    workers: int | None = setting(
        "whole",
        "workers to start (local: processes, default one per core as memory allows; slurm: jobs; kubernetes: pods)",
        None,
        example=4,
    )


SPECS = (SearchSpec, JobSpec, InferSpec, Launch)
TITLES = {
    SearchSpec: "the scenes (a STAC search)",
    JobSpec: "the store, the detector and the job",
    InferSpec: "how the model runs",
    Launch: "where the job runs",
}
FIELDS = {name: (spec, f, how) for spec in SPECS for name, f, how in settings_of(spec)}  # name -> where it goes
REQUIRED = tuple(name for name, (_, f, _) in FIELDS.items() if f.default is MISSING)


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _bbox(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be four numbers: min_lon,min_lat,max_lon,max_lat") from None


CLI_TYPES = {"text": str, "whole": int, "number": float, "bbox": _bbox, "patterns": _split}


def add_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting (``--max-cloud`` for ``max_cloud``; mappings are job-file only), defaults None so
    that a job file's value stays unless the command line gives one."""
    groups = {spec: parser.add_argument_group(title) for spec, title in TITLES.items()}
    for name, (spec, f, how) in FIELDS.items():
        if how.kind == "mapping":
            continue
        default = f.default
        shown = "" if default in (None, MISSING, False) or "default" in how.help else f" (default: {default})"
        kw = dict(help=(how.help + shown).replace("%", "%%"), default=None)
        if how.kind == "switch":
            kw["action"] = "store_true"
        else:
            kw.update(type=CLI_TYPES[how.kind], metavar=how.metavar, choices=how.choices or None)
        groups[spec].add_argument("--" + name.replace("_", "-"), **kw)


def job_file_keys() -> str:
    return ", ".join(FIELDS)


def _job_value(path: str, name: str, value, how: Setting):
    """A job file's ``value`` for setting ``name``, checked against its kind (a YAML date becomes its ISO text);
    a ConfigError naming the file, key, value and an example otherwise."""
    if value is None:
        return value
    if isinstance(value, dt.date) and how.kind == "text":  # datetime: 2024-06-01, unquoted
        return value.isoformat()
    if how.kind == "switch":  # YAML's spelling, whatever the field's example
        example = f"{name}: true"
    else:
        example = f"{name}: {how.example!r}" if how.kind != "text" else f'{name}: "{how.example}"'
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = {
        "text": ("text (quoted)", isinstance(value, str)),
        "whole": ("a whole number", number and float(value).is_integer()),
        "number": ("a number", number),
        "switch": ("true or false", isinstance(value, bool)),
        "bbox": (
            "four numbers",
            isinstance(value, str)
            or (
                isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ),
        ),
        "patterns": (
            "patterns",
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        ),
        "mapping": ("a mapping", isinstance(value, dict)),
    }[how.kind]
    if not expected[1]:
        raise ConfigError(f"{path}: {name}: {value!r}; expected {expected[0]}, e.g. {example}")
    if how.choices and value not in how.choices:
        raise ConfigError(f"{path}: {name}: {value!r}; expected one of {', '.join(how.choices)}")
    if how.kind == "whole":
        return int(value)
    if isinstance(value, str) and how.kind in ("bbox", "patterns"):
        try:
            return CLI_TYPES[how.kind](value)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{path}: {name}: {exc}") from None
    return value


def read_job_file(path: str) -> dict:
    """The settings of a YAML job file, each checked against its kind; unknown keys are refused."""
    if not Path(path).is_file():
        raise ConfigError(f"job file {path!r} does not exist")
    conf = yaml_mapping(Path(path), "job file")
    unknown = set(conf) - set(FIELDS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; known keys: {job_file_keys()}")
    return {k: _job_value(path, k, v, FIELDS[k][2]) for k, v in conf.items()}


def defaults() -> dict:
    """Every setting at its default (None for the required ones)."""
    return {name: (None if f.default is MISSING else f.default) for name, (_, f, _) in FIELDS.items()}


def resolve(args: argparse.Namespace) -> dict:
    """The job's settings: each field's default, under the job file's (``--config``), under the command line's."""
    out = defaults()
    if getattr(args, "config", None):
        out.update(read_job_file(args.config))
    out.update({k: v for k, v in vars(args).items() if k in FIELDS and v is not None})
    for name in REQUIRED:
        if not out.get(name):
            raise ConfigError(f"--{name.replace('_', '-')} is required (or '{name}' in the --config job file)")
    if out.get("bbox") is not None:
        out["bbox"] = tuple(out["bbox"])
    if out.get("allowed_hrefs") is not None:
        out["allowed_hrefs"] = tuple(out["allowed_hrefs"])
    return out


def spec_values(spec, values: dict) -> dict:
    """The keyword arguments of dataclass ``spec`` among resolved ``values`` (user-facing names mapped to fields)."""
    return {f.name: values[name] for name, f, _ in settings_of(spec) if name in values}


def job_spec(values: dict) -> JobSpec:
    """The JobSpec of resolved settings (``resolve``); the values are checked by the dataclasses, before the job's
    modules (torch, dask) load, so a wrong value is answered at once."""
    from pipeline.store.maskstore import store_path

    job = spec_values(JobSpec, values)
    job["out"] = str(store_path(job["out"]))
    return JobSpec(
        search=SearchSpec(**spec_values(SearchSpec, values)), infer=InferSpec(**spec_values(InferSpec, values)), **job
    )


def launch(values: dict) -> Launch:
    return Launch(**spec_values(Launch, values))
