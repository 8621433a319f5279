"""Helpers the subcommands share: a documented subcommand (help line, the module docstring's body as description,
examples), comma-separated option values, YAML files of settings, the machine's name for benchmark reports, the
real-scene benchmarks' options, and output files checked before any work."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from pipeline.errors import ConfigError


def subcommand(sub, name: str, help: str, doc: str, examples: list[str], epilog: str = ""):
    """Add ``name`` to the subparsers ``sub``: described by ``doc`` after its first paragraph, with an epilog of
    ``examples`` (command lines) then ``epilog``; returns the new parser."""
    text = "examples:\n" + "\n".join(f"  {e}" for e in examples) + (f"\n{epilog}" if epilog else "")
    return sub.add_parser(
        name,
        help=help,
        description=doc.split("\n\n", 1)[1],
        epilog=text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def csv_list(text: str, cast, name: str) -> list:
    """``--name`` given as comma-separated values, each through ``cast``; a clear error when empty or bad."""
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} {text!r} is not a comma-separated list") from None
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values


def yaml_mapping(path: Path, what: str) -> dict:
    """The mapping in the YAML file ``path`` (``what`` it is, for errors: e.g. "job file"); an empty file is an
    empty mapping. A file that is not YAML, or holds a list or a scalar, is a clear error naming it."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}" if mark else " ".join(str(e).split())
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML ({where})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} holds a {type(data).__name__}; expected a mapping of keys to values")
    return data


def machine_name(device) -> str:
    """The GPU's name, or the CPU's and the torch thread count: what a benchmark ran on."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def scene_list(text: str | None) -> list[str]:
    """``--scenes``: real scene names (``pipeline.training.datasets.scenes.SCENES``; None: all of them)."""
    from pipeline.training.datasets.scenes import SCENES

    names = csv_list(text, str, "scenes") if text else list(SCENES)
    unknown = [n for n in names if n not in SCENES]
    if unknown:
        raise ConfigError(f"--scenes: unknown {unknown}; known: {', '.join(SCENES)}")
    return names


def level_list(text: str) -> list[str]:
    """``--levels``: the starters to run, ``L1C`` and/or ``L2A``."""
    levels = csv_list(text, str.upper, "levels")
    if set(levels) - {"L1C", "L2A"}:
        raise ConfigError(f"--levels {text}: expected L1C and/or L2A")
    return levels


def output_file(text: str) -> str:
    """An argparse ``type`` for a file an option writes at the end (``--json FILE``): refused at once, before any
    work, when its folder does not exist."""
    folder = Path(text).expanduser().parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: its folder {str(folder)!r} does not exist; create it first")
    return text


def add_scene_options(p) -> None:
    """``--scenes``, ``--levels`` and ``--json`` of the benchmarks that run the shipped starters on the real scenes
    (read back with :func:`scene_list` and :func:`level_list`)."""
    p.add_argument(
        "--scenes",
        help="comma-separated scene names (default: every real scene; pipeline.training.datasets.scenes.SCENES)",
    )
    p.add_argument("--levels", default="L1C,L2A", help="the starters to run, by level (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the figures as JSON")
