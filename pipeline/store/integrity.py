"""Whether a store still holds what its manifest says: ``verify_store(store) -> Verification``.

Each grid group must hold its arrays (the masks, the item ids, every statistics variable). Every scene marked done
is read back whole: its manifest entry must name a group and a time index, its mask chunks must exist and decode,
the time slot must hold that scene's id, and the mask's class counts must equal the statistics recorded when it was
written. With ``repair``, what the manifest can rebuild is rebuilt (a lost statistics array: re-created and filled
from the manifest entries) and what it cannot is marked for redo (the scene's manifest entry removed, so the next
``cloudmask run`` redoes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.store.maskstore import STAT_VARS, MaskStore
from pipeline.store.stats import SHARES, class_counts


@dataclass(frozen=True)
class SceneCheck:
    """One done scene's check: ``problem`` is None when it is intact."""

    item_id: str
    group: str
    time_index: int
    problem: str | None = None


@dataclass
class Verification:
    """``scenes``: a check per done scene; ``groups``: ``{group: problem}`` of groups missing arrays; ``rebuilt``:
    what a repair rebuilt."""

    scenes: list[SceneCheck] = field(default_factory=list)
    groups: dict = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> list[SceneCheck]:
        return [c for c in self.scenes if c.problem]


def _time_index(value) -> int | None:
    """A manifest entry's time index, or None when it is not a whole number of zero or more."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def check_scene(store: MaskStore, item_id: str, entry: dict, opened: dict) -> SceneCheck:
    """Check one manifest ``entry``; ``opened`` caches each group's Dataset."""
    group, raw, stats = entry.get("group"), entry.get("time_index"), entry.get("stats") or {}
    t = _time_index(raw)
    check = lambda problem: SceneCheck(item_id, str(group), -1 if t is None else t, problem)  # noqa: E731
    if not group:
        return check("its manifest entry names no group")
    if t is None:
        return check(f"its manifest entry's time index {raw!r} is not a whole number")
    try:
        if group not in opened:
            opened[group] = store.open(group)
        ds = opened[group]
        if t >= ds.sizes["time"]:
            return check(f"time index {t} is past the {ds.sizes['time']} scenes of {group}")
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
        return check(
            f"its mask has {valid} valid pixels, its statistics {stats.get('valid_pixels')} "
            f"(chunks lost, truncated or overwritten)"
        )
    if valid:
        got = 100 * counts[:4] / valid
        want = np.array([float(stats.get(f, np.nan)) for f in SHARES])
        if not np.allclose(got, want, rtol=0, atol=1e-7):
            return check(
                f"its class shares {np.round(got, 2).tolist()} % differ from its statistics "
                f"{np.round(want, 2).tolist()} %"
            )
    return check(None)


def missing_arrays(store: MaskStore, group: str) -> list[str]:
    """The arrays a group must hold that it does not (or that cannot be opened)."""
    import zarr

    try:
        g = zarr.open_group(**store.location.zarr_args(), path=group, mode="r")
        have = set(g.array_keys())
    except Exception:  # noqa: BLE001 - an unreadable group lacks everything
        have = set()
    return [name for name in ("mask", "item_id", *STAT_VARS) if name not in have]


def verify_store(store: MaskStore, repair: bool = False, log=print) -> Verification:
    """Check every group and every scene the manifest marks done; with ``repair``, rebuild lost statistics arrays
    from the manifest and mark the damaged scenes for redo."""
    result = Verification()
    done = store.done()
    groups = sorted({str(e.get("group")) for e in done.values() if e.get("group")} | set(store.groups()))
    for group in groups:
        missing = missing_arrays(store, group)
        if not missing:
            continue
        result.groups[group] = f"arrays {missing} are missing"
        log(f"{group}: arrays {missing} are missing")
        rebuildable = [m for m in missing if m in STAT_VARS]
        if repair and rebuildable and len(rebuildable) == len(missing):
            store.rebuild_statistics(group, rebuildable, done)
            result.rebuilt.append(f"{group}: {', '.join(rebuildable)}")
            log(f"{group}: rebuilt {rebuildable} from the manifest")
    opened: dict = {}
    for i, (item_id, entry) in enumerate(sorted(done.items()), 1):
        if entry.get("status") != "ok":
            continue
        check = check_scene(store, item_id, entry, opened)
        result.scenes.append(check)
        if check.problem:
            log(f"[{i}/{len(done)}] {item_id}: {check.problem}")
            if repair:
                store.forget(item_id)
    if result.rebuilt:
        store.consolidate()
    return result
