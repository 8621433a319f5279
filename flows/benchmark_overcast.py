"""``cloudmask benchmark overcast``: what the overcast check does on every real scene, and what it costs.

The overcast check (``pipeline/detect/overcast.py``) looks again from afar at full tiles that the model calls
partly cloud and adds the cloud of an overcast far view. For every real Sentinel-2 L1C scene here
(``pipeline.training.datasets.scenes.SCENES``) and each shipped starter (the L2A starter on L1C without B10, as a
job gives it L1C items), and for eo-learn's fully cloudy scenes 0 and 1 also mirrored to fill a 256 px tile (the
case the check is for), it prints: tiles run, tiles looked at again, the forward passes' tile slots without and with
the check (far views run in batches of their own, padded with empty tiles when fewer wait: the cost), the % cloud
(thick + thin) of the valid pixels without and with the check, and the % of the valid pixels the check made cloud.
Each scene is predicted alone (a job queues many blocks, so its far batches are fuller), fp32 on the CPU, the job's
tiles (256 px, 32 px overlap) and batch size.
"""

from __future__ import annotations

import json
from pathlib import Path

from .parsers import add_scene_options, level_list, scene_list, subcommand

MIRRORED = ("eolearn-0", "eolearn-1")  # fully cloudy (SOURCES.md): also shown mirrored to fill a tile
TILE = 256


def add_parser(bsub) -> None:
    p = subcommand(
        bsub,
        "overcast",
        "the overcast check on every real scene: tiles looked at again, cloud without and with it",
        __doc__,
        ["cloudmask benchmark overcast", "cloudmask benchmark overcast --scenes eolearn-1 --levels L1C"],
    )
    add_scene_options(p)
    p.set_defaults(func=run)


def views(names: list[str]):
    """``(label, dn (13, y, x) uint16)`` of each scene named, and of the fully cloudy ones mirrored to a tile."""
    import numpy as np

    from pipeline.training.datasets.scenes import all_scenes

    for scene in all_scenes(names):
        yield scene.name, scene.dn
        if scene.name in MIRRORED:
            h, w = scene.dn.shape[1:]
            pad = ((0, 0), (0, max(0, TILE - h)), (0, max(0, TILE - w)))
            yield f"{scene.name} mirrored to {TILE} px", np.pad(scene.dn, pad, "symmetric")


def run(args) -> int:
    import numpy as np

    from pipeline.config import InferSpec
    from pipeline.detect.infer import Predictor
    from pipeline.detect.weights import default_weights, load_weights
    from pipeline.training.datasets.scenes import BANDS

    names, levels = scene_list(args.scenes), level_list(args.levels)
    predictors = {}
    for level in levels:
        weights = load_weights(default_weights(level))
        predictors[level] = {
            check: Predictor(weights, InferSpec(device="cpu", precision="fp32", no_overcast_check=not check))
            for check in (False, True)
        }
    rows = []
    for label, dn in views(names):
        for level in levels:
            image = dn if level == "L1C" else np.delete(dn, BANDS.index("B10"), axis=0)
            got, slots = {}, {}
            for check, predictor in predictors[level].items():
                predictor.stats.reset()
                got[check] = predictor.predict(image)
                slots[check] = predictor.stats.tiles + predictor.stats.filler
            off, on = got[False], got[True]
            valid = int(on.counts[:4].sum())
            stats = predictors[level][True].stats

            def cloud(p):
                return 100 * float(p.counts[1:3].sum()) / max(1, valid)

            row = dict(
                scene=label,
                level=level,
                valid_pixels=valid,
                tiles=stats.tiles - stats.far_views,
                far_views=stats.far_views,
                slots_without=slots[False],
                slots_with=slots[True],
                cloud_without=cloud(off),
                cloud_with=cloud(on),
                made_cloud=100 * float(on.counts[-1]) / max(1, valid),
            )
            rows.append(row)
            print(
                f"{label:40s} {level} starter{' on L1C without B10' if level == 'L2A' else ''}: "
                f"{row['far_views']} of {row['tiles']} tiles looked at again, tile slots {slots[False]} -> "
                f"{slots[True]}; cloud {row['cloud_without']:6.2f} % "
                f"-> {row['cloud_with']:6.2f} % of {valid:,} px ({row['made_cloud']:.2f} % made cloud by the check)",
                flush=True,
            )
    totals = {}
    for what, some in (("all", rows), ("the scenes as they lie", [r for r in rows if "mirrored" not in r["scene"]])):
        tiles, far = sum(r["tiles"] for r in some), sum(r["far_views"] for r in some)
        without, with_ = sum(r["slots_without"] for r in some), sum(r["slots_with"] for r in some)
        totals[what] = dict(tiles=tiles, far_views=far, slots_without=without, slots_with=with_)
        print(
            f"{what}: {far} of {tiles} tiles looked at again; tile slots of the forward passes {without} -> {with_} "
            f"(+{100 * (with_ - without) / max(1, without):.1f} %)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, **totals["all"], as_they_lie=totals[what]), indent=2))
        print(f"figures written to {args.json}")
    return 0
