"""Helpers the subcommands share: a documented subcommand (help line, the module docstring's body as description,
examples), comma-separated option values, the machine's name for benchmark reports."""

from __future__ import annotations

import argparse
import platform

from pipeline.errors import ConfigError


def subcommand(sub, name: str, help: str, doc: str, examples: list[str], epilog: str = ""):
    """Add ``name`` to the subparsers ``sub``: described by ``doc`` after its first paragraph, with an epilog of
    ``examples`` (command lines) then ``epilog``; returns the new parser."""
    text = "examples:\n" + "\n".join(f"  {e}" for e in examples) + (f"\n{epilog}" if epilog else "")
    return sub.add_parser(name, help=help, description=doc.split("\n\n", 1)[1], epilog=text,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def csv_list(text: str, cast, name: str) -> list:
    """``--name`` given as comma-separated values, each through ``cast``; a clear error when empty or bad."""
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} {text!r} is not a comma-separated list") from None
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values


def machine_name(device) -> str:
    """The GPU's name, or the CPU's and the torch thread count: what a benchmark ran on."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
