"""``cloudmask compare STORE_A STORE_B``: per-class agreement of two cloud-mask cubes, scene by scene.

Pixels count where both cubes hold a class (not nodata) for the same STAC item on the same grid. When either
cube comes from a peer (s2cloudless, ukis-csmask), both are first mapped to that peer's coarser classes
(pipeline/detect/peers.py), so that "thin" against a peer's "cloud" is not counted as disagreement.
"""

from __future__ import annotations

import argparse
import json

from .parsers import output_file


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="per-class agreement between two cloud-mask cubes",
        description=__doc__.split("\n\n", 1)[1],
        epilog="example:\n  cloudmask run ... --out mscloudcam.zarr\n"
        "  cloudmask run ... --model ukis-csmask --out ukis.zarr\n"
        "  cloudmask compare mscloudcam.zarr ukis.zarr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store_a")
    p.add_argument("store_b")
    p.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    p.set_defaults(func=run)


def agreement(store_a: str, store_b: str) -> dict:
    """Confusion matrix (rows: A, columns: B) over all common scenes and the per-class figures."""
    import numpy as np

    from pipeline.catalog.sensors import CLASS_NAMES
    from pipeline.detect.peers import COARSE, coarse
    from pipeline.errors import ConfigError
    from pipeline.store.maskstore import MaskStore
    from pipeline.training.metrics import confusion, scores

    stores = [MaskStore(store_a), MaskStore(store_b)]
    for s in stores:
        if not s.location.exists("zarr.json"):
            raise ConfigError(f"{s.url!r} is not a Zarr store written by cloudmask run")
    groups = [set(s.groups()) for s in stores]
    common = sorted(groups[0] & groups[1])
    if not common:
        raise ConfigError(
            f"{store_a} and {store_b} share no pixel grid (groups {sorted(groups[0])} vs {sorted(groups[1])})"
        )
    models = [s.open(common[0]).attrs.get("model", "?") for s in stores]
    peer = next((m for m in models if m in COARSE), None)
    table, names = COARSE[peer] if peer else (None, CLASS_NAMES)
    k = len(names)
    cm = np.zeros((k, k), np.int64)
    scenes = 0
    for g in common:
        a, b = (s.open(g) for s in stores)
        ids_b = {str(i): t for t, i in enumerate(b.item_id.values)}
        for ta, item in enumerate(a.item_id.values):
            tb = ids_b.get(str(item))
            if tb is None or int(a.status[ta]) != 1 or int(b.status[tb]) != 1:
                continue
            ma, mb = a.mask[ta].values, b.mask[tb].values
            if table is not None:
                ma, mb = coarse(ma, table), coarse(mb, table)
            ma = np.where(mb == 255, 255, ma)
            cm += confusion(ma, mb, k)
            scenes += 1
    if not scenes:
        raise ConfigError(f"{store_a} and {store_b} share no finished scene on a common grid")
    return dict(
        scores(cm), classes=list(names), models=models, scenes=scenes, confusion=cm.tolist(), coarse=peer is not None
    )


def run(args) -> int:
    r = agreement(args.store_a, args.store_b)
    print(
        f"{r['scenes']} common scenes, {r['pixels']:,} pixels valid in both; models {' vs '.join(r['models'])}"
        + (" (in the peer's coarser classes)" if r["coarse"] else "")
    )
    print(f"overall agreement {r['aacc']:.2f} %")
    print(f"{'class':14s} {'IoU %':>7s} {'F1 %':>7s}")
    for name, iou, f1 in zip(r["classes"], r["iou"], r["f1"]):
        print(f"{name:14s} {iou:7.2f} {f1:7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0
