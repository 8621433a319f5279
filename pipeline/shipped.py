"""Files shipped with the project: the starter weights (``weights/``) and the cluster recipes (``deploy/clusters/``).

A wheel carries them as package data under ``pipeline/_shipped/`` (``pyproject.toml`` maps those package names
onto the same folders), so a plain ``pip install .`` finds them; in a clone or an editable install they are read
where they lie in the source tree.
"""

from __future__ import annotations

from pathlib import Path

SOURCE_FOLDERS = {"weights": ("weights",), "clusters": ("deploy", "clusters")}


def shipped_dir(kind: str) -> Path:
    """The folder holding the shipped ``kind`` (``weights`` or ``clusters``): the installed package data where
    there is some, else the source tree's folder (which may not exist; callers say what is missing)."""
    here = Path(__file__).resolve().parent
    installed = here / "_shipped" / kind
    return installed if installed.is_dir() else here.parent.joinpath(*SOURCE_FOLDERS[kind])
