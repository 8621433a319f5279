"""One way to add a documented subcommand: help line, the module docstring's body as description, examples."""

from __future__ import annotations

import argparse


def subcommand(sub, name: str, help: str, doc: str, examples: list[str], epilog: str = ""):
    """Add ``name`` to the subparsers ``sub``: described by ``doc`` after its first paragraph, with an epilog of
    ``examples`` (command lines) then ``epilog``; returns the new parser."""
    text = "examples:\n" + "\n".join(f"  {e}" for e in examples) + (f"\n{epilog}" if epilog else "")
    return sub.add_parser(name, help=help, description=doc.split("\n\n", 1)[1], epilog=text,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
