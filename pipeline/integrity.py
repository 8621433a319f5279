"""Whether a store still holds what its manifest says: ``verify_store(store) -> [SceneCheck]``.

Every scene marked done is read back whole: its mask chunks must exist and decode, the time slot must hold
that scene's id, and the mask's class counts must equal the statistics recorded when it was written. A scene
that fails any of these (a chunk deleted, truncated or overwritten) is reported and, with ``repair``, its
manifest entry is removed so that the next ``cloudmask run`` redoes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import FRACTIONS, class_counts
from .store import MaskStore


@dataclass(frozen=True)
class SceneCheck:
    """One done scene's check: ``problem`` is None when it is intact."""

    item_id: str
    group: str
    time_index: int
    problem: str | None = None


def check_scene(store: MaskStore, item_id: str, entry: dict, opened: dict) -> SceneCheck:
    """Check one manifest ``entry``; ``opened`` caches each group's Dataset."""
    group, t, stats = entry.get("group"), entry.get("time_index"), entry.get("stats") or {}
    check = lambda problem: SceneCheck(item_id, str(group), int(t if t is not None else -1), problem)  # noqa: E731
    if group is None or t is None:
        return check("its manifest entry names no group or time index")
    try:
        if group not in opened:
            opened[group] = store.open(group)
        ds = opened[group]
        if str(ds["item_id"].values[t]) != item_id:
            return check(f"time index {t} of {group} holds {ds['item_id'].values[t]!s}")
        mask = ds["mask"][t].values
        if "probability" in ds:
            ds["probability"][t].values  # decodes, or raises
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return check(f"cannot be read back: {type(exc).__name__}: {exc}")
    counts = class_counts(mask)
    valid = int(counts[:4].sum())
    if valid != int(stats.get("valid_pixels", -1)):
        return check(f"its mask has {valid} valid pixels, its statistics {stats.get('valid_pixels')} "
                     f"(chunks lost, truncated or overwritten)")
    if valid:
        got = counts[:4] / valid
        want = np.array([float(stats.get(f, np.nan)) for f in FRACTIONS])
        if not np.allclose(got, want, rtol=0, atol=1e-9):
            return check(f"its class fractions {np.round(got, 4).tolist()} differ from its statistics "
                         f"{np.round(want, 4).tolist()}")
    return check(None)


def verify_store(store: MaskStore, repair: bool = False, log=print) -> list[SceneCheck]:
    """Check every scene the manifest marks done; with ``repair``, mark the damaged ones for redo."""
    opened: dict = {}
    checks = []
    done = store.done()
    for i, (item_id, entry) in enumerate(sorted(done.items()), 1):
        if entry.get("status") != "ok":
            continue
        result = check_scene(store, item_id, entry, opened)
        checks.append(result)
        if result.problem:
            log(f"[{i}/{len(done)}] {item_id}: {result.problem}")
            if repair:
                store.forget(item_id)
    return checks
