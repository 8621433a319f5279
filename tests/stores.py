"""What two stores must agree on, wherever they are (a local folder or an object-storage URL)."""

from __future__ import annotations

import fsspec
import xarray as xr


def store_contents(url) -> dict:
    """Every byte of every mask chunk, and the per-scene statistics (all but runtime_s) of every group."""
    fs, root = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache()
    out = {}
    groups = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    for group in [g for g in groups if g.startswith("epsg")]:
        for f in sorted(fs.find(f"{root}/{group}/mask")):
            out[f[len(root) :].lstrip("/")] = fs.cat_file(f)
        ds = xr.open_zarr(str(url), group=group, consolidated=False)
        for name in ("item_id", "status", "valid_pixels", "cloud_cover", "pct_clear", "offset_applied"):
            out[f"{group}/{name}"] = repr(ds[name].values.tolist())  # repr: NaN equals NaN
    return out


def assert_same_store(a, b) -> None:
    ca, cb = store_contents(a), store_contents(b)
    assert sorted(ca) == sorted(cb)
    different = [k for k in ca if ca[k] != cb[k]]
    assert not different, f"differ: {different[:5]}"


def read(url, *parts: str) -> bytes | None:
    """An object below store ``url`` (None where there is none)."""
    fs, root = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache()
    try:
        return fs.cat_file("/".join([root, *parts]))
    except FileNotFoundError:
        return None


def names(url, *parts: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache()
    try:
        return [p.rsplit("/", 1)[-1] for p in fs.ls("/".join([root, *parts]), detail=False)]
    except FileNotFoundError:
        return []
