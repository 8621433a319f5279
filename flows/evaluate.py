"""``cloudmask evaluate``: the paper's protocol (one confusion matrix over the split; IoU, F1, aAcc)."""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipeline.errors import ConfigError
from pipeline.training.metrics import confusion, scores

from .parsers import output_file

# The MSCloudCAM rows of docs/mscloudcam.md ("The authors' reported results") (IoU % clear, thick, thin, shadow; mIoU; mF1; aAcc).
PAPER = {
    "cloudsen12-l1c": (91.64, 87.24, 52.58, 70.63, 75.52, 85.13, 91.99),
    "cloudsen12-l2a": (89.28, 84.30, 55.53, 63.38, 73.12, 83.70, 89.69),
    "l8biome": (88.27, 82.23, 40.19, 21.48, 58.04, 69.18, 87.09),
}
COLUMNS = ("Clear", "Thick", "Thin", "Shadow", "mIoU", "mF1", "aAcc")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score weights on a dataset split with the paper's protocol",
        description="Predicts every item of the split, accumulates one confusion matrix over all of them "
        "(label 255 ignored) and prints per-class IoU, mIoU, mF1 and aAcc like the paper's tables.",
        epilog="examples:\n"
        "  cloudmask evaluate --dataset starter --split test --teachers\n"
        "  cloudmask evaluate --weights weights/mscloudcam_s2l2a_starter.safetensors --dataset starter --level l2a "
        "--teachers\n"
        "  cloudmask evaluate --weights weights/mscloudcam_s2l2a_starter.safetensors --dataset bigearthnet --teachers\n"
        "  cloudmask evaluate --dataset reben --teachers     # the L2A starter on real L2A with real clouds\n"
        "  cloudmask evaluate --weights runs/l1c/best.safetensors --dataset cloudsen12 --data l1c.taco --paper\n"
        "  cloudmask evaluate --dataset l8biome --data /data/l8biome --json l8.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", help="weights file or URL (default: the shipped starter of the items' level)")
    p.add_argument(
        "--dataset",
        choices=("starter", "bigearthnet", "reben", "cloudsen12", "l8biome"),
        required=True,
        help="starter: the real L1C scenes with teacher labels; bigearthnet: six real L2A patches "
        "(cloud-free) with ukis-csmask L2A labels; reben: real L2A patches of BigEarthNet v2 (test: its "
        "test split and the patches it flags cloudy, 10 x 120 x 120 px), the same labels",
    )
    p.add_argument("--data", help="dataset location (cloudsen12: TACO file(s); l8biome: folder)")
    p.add_argument(
        "--level",
        choices=("l1c", "l2a"),
        default="l1c",
        help="cloudsen12: product level for --paper; starter: l2a scores the L1C scenes as simulated L2A "
        "(the TOA->BOA map of pipeline/training/datasets/boa.py)",
    )
    p.add_argument(
        "--brightness",
        type=float,
        metavar="GAIN",
        help="starter: scale the scenes' reflectance by GAIN and re-split their cloud labels into thick and "
        "thin by the scaled blue band (the labelling rule's threshold): does the model follow brightness?",
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--split-mode", choices=("paper", "official"), default="paper")
    p.add_argument("--paper", action="store_true", help="print the paper's MSCloudCAM row beside ours")
    p.add_argument("--teachers", action="store_true", help="starter: also per-class agreement with each teacher")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="model precision (default: auto = bf16 on GPUs and on CPUs with native bf16, fp32 otherwise); "
        "the model cards' figures are measured with fp32, so that they do not depend on the CPU's "
        "bf16 support",
    )
    p.add_argument(
        "--no-overcast-check",
        action="store_true",
        help="score the model alone, without the job's second, far view of full tiles called partly cloud "
        "(pipeline/detect/overcast.py)",
    )
    p.add_argument("--json", type=output_file, metavar="FILE", help="also write the scores as JSON")
    p.set_defaults(func=run)


def load_items(args) -> tuple[list, tuple[str, ...] | None]:
    """``(items [(dn (C, y, x), labels (y, x))], band names of dn's first axis, or None when the reader does not
    name them)``."""
    from pipeline.catalog.sensors import SENTINEL2_L1C, SENTINEL2_L2A

    if args.dataset == "starter":
        from pipeline.training.datasets.starter import labelled_scenes

        items = [(s.dn, lab) for s, lab in labelled_scenes(args.split)]
        if args.brightness is not None:
            from pipeline.training.datasets.brightness import brighten

            items = [brighten(dn, lab, args.brightness, SENTINEL2_L1C.bands.index("B02")) for dn, lab in items]
        if args.level == "l2a":
            from pipeline.training.datasets.boa import BOA_MAP, simulated_scene

            return [(simulated_scene(dn, lab, SENTINEL2_L1C.bands), lab) for dn, lab in items], tuple(BOA_MAP)
        return items, SENTINEL2_L1C.bands
    if args.dataset in ("bigearthnet", "reben"):
        from pipeline.training.pseudolabels import l2a_teacher_labels

        bands = SENTINEL2_L2A.bands
        if args.dataset == "bigearthnet":
            from pipeline.training.datasets.bigearthnet import l2a_patches

            if args.split != "test":
                raise ConfigError("--dataset bigearthnet has only a test split (six held-out L2A patches)")
            dns = [s.dn for s in l2a_patches()]
        else:
            from pipeline.training.datasets.reben import patches_of

            dns = [p.dn for p in patches_of(args.split)]  # test: reBEN's test split and every patch flagged cloudy
        return [(dn, l2a_teacher_labels(dn, bands, 10.0)) for dn in dns], bands
    if not args.data:
        raise ConfigError(f"--data is required for --dataset {args.dataset}")
    if args.dataset == "cloudsen12":
        from pipeline.training.datasets.cloudsen12 import CloudSEN12

        return CloudSEN12(args.data, split=args.split, split_mode=args.split_mode), None
    from pipeline.training.datasets.l8biome import L8Biome

    return L8Biome(args.data, split=args.split), None


def table(rows: dict[str, tuple]) -> str:
    width = max(len(k) for k in rows) + 2
    lines = [f"{'':<{width}}" + "".join(f"{c:>8}" for c in COLUMNS)]
    for name, values in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{v:>8.2f}" for v in values))
    return "\n".join(lines)


def teacher_agreement(items, predictions, bands: tuple[str, ...]) -> dict:
    """Per-class IoU of our classes against each teacher that runs on the items' level, in the teacher's own
    (coarser) classes: on L1C (``bands`` has B10) s2cloudless and ukis-csmask's L1C model; on L2A ukis-csmask's
    L2A model only (s2cloudless needs top-of-atmosphere B10)."""
    from pipeline.detect.peers import (
        S2CLOUDLESS_THRESHOLD,
        TO_S2CLOUDLESS,
        TO_UKIS,
        UKIS_BANDS,
        coarse,
        s2cloudless_probability,
        ukis_probabilities,
    )

    l1c = "B10" in bands
    cm_s2c, cm_ukis = np.zeros((2, 2), np.int64), np.zeros((3, 3), np.int64)
    for (dn, _), pred in zip(items, predictions):
        nodata = (dn == 0).all(axis=0)
        six = np.asarray(dn)[[bands.index(b) for b in UKIS_BANDS.values()]]
        ukis = ukis_probabilities(six, product_level="l1c" if l1c else "l2a").argmax(axis=0).astype(np.uint8)
        ukis[nodata] = 255
        cm_ukis += confusion(ukis, coarse(pred, TO_UKIS), classes=3)
        if l1c:
            s2c = (s2cloudless_probability(dn) >= S2CLOUDLESS_THRESHOLD).astype(np.uint8)
            s2c[nodata] = 255
            cm_s2c += confusion(s2c, coarse(pred, TO_S2CLOUDLESS), classes=2)
    u = scores(cm_ukis)
    out = {
        "ukis-csmask": {
            "classes": ["clear", "cloud", "shadow"],
            "iou": u["iou"],
            "agreement": u["aacc"],
            "pixels": u["pixels"],
            "model": "L1C" if l1c else "L2A",
        }
    }
    if l1c:
        s = scores(cm_s2c)
        out = {
            "s2cloudless": {
                "classes": ["clear", "cloud"],
                "iou": s["iou"],
                "agreement": s["aacc"],
                "pixels": s["pixels"],
            },
            **out,
        }
    return out


def run(args: argparse.Namespace) -> int:
    if args.brightness is not None and (args.dataset != "starter" or not args.brightness > 0):
        raise ConfigError(
            f"--brightness {args.brightness}: a gain > 0, for --dataset starter only (its labels follow "
            f"the labelling rule, so they can be re-split)"
        )
    from pipeline.config import InferSpec
    from pipeline.detect.infer import Predictor, precision_name
    from pipeline.detect.weights import default_weights, load_weights

    items, bands = load_items(args)
    # no --weights: the shipped starter of the items' level (L2A for bigearthnet, reben and --level l2a)
    weights = load_weights(args.weights or default_weights("L1C" if bands is None or "B10" in bands else "L2A"))
    if len(items) == 0:
        raise ConfigError(f"split {args.split!r} of {args.dataset} is empty")
    take = list(range(len(weights.meta.bands)))
    if bands is not None:
        missing = [b for b in weights.meta.bands if b not in bands]
        if missing:
            raise ConfigError(
                f"the weights take {list(weights.meta.bands)} but the {args.dataset} items have no "
                f"{missing}; use weights for their level (the L2A starter takes no B10)"
            )
        take = [bands.index(b) for b in weights.meta.bands]  # e.g. L2A weights on L1C scenes: B10 left out
    infer = InferSpec(overlap=0, device=args.device, precision=args.precision, no_overcast_check=args.no_overcast_check)
    predictor = Predictor(weights, infer)
    cm = np.zeros((4, 4), np.int64)
    predictions = []
    for i, (dn, labels) in enumerate(items):
        dn = np.asarray(dn)
        if bands is not None:
            dn = dn[take]
        if dn.shape[0] != len(weights.meta.bands):
            raise ConfigError(
                f"item {i} has {dn.shape[0]} bands but the weights take {len(weights.meta.bands)} "
                f"({list(weights.meta.bands)})"
            )
        pred = predictor.predict(dn, mask_nodata=False).classes  # the paper's protocol scores padding too
        predictions.append(pred)
        cm += confusion(np.asarray(labels), pred)
        print(f"\r{i + 1}/{len(items)} items", end="", flush=True)
    print()
    s = scores(cm)
    ours = (*s["iou"], s["miou"], s["mf1"], s["aacc"])
    leveled = args.dataset == "cloudsen12" or (args.dataset == "starter" and args.level == "l2a")
    name = f"{args.dataset}-{args.level}" if leveled else args.dataset
    rows = {f"ours ({weights.meta.model}, {args.split})": ours}
    if args.paper:
        if name in PAPER:
            rows[f"paper MSCloudCAM ({name})"] = PAPER[name]
        else:
            print(f"(the paper has no row for {name}; rows exist for {', '.join(PAPER)})")
    if args.brightness is not None:
        print(
            f"(scenes x {args.brightness:g} in reflectance, cloud labels re-split into thick and thin by the scaled B02)"
        )
    print(f"IoU (%) over {s['pixels']:,} labelled pixels of {len(items)} items, one confusion matrix:")
    print(table(rows))
    result = dict(
        dataset=name,
        split=args.split,
        brightness=args.brightness,
        weights=weights.source,
        sha256=weights.sha256,
        precision=precision_name(predictor.dtype),
        confusion=cm.tolist(),
        **s,
    )
    if args.teachers:
        if args.dataset not in ("starter", "bigearthnet", "reben"):
            raise ConfigError(
                "--teachers compares with s2cloudless and ukis-csmask on Sentinel-2: use --dataset starter, "
                "bigearthnet or reben"
            )
        agree = teacher_agreement(items, predictions, bands)
        result["teachers"] = agree
        for teacher, a in agree.items():
            per_class = ", ".join(f"{c} {v:.2f}" for c, v in zip(a["classes"], a["iou"]))
            which = f" ({a['model']} model)" if "model" in a else ""
            print(
                f"agreement with {teacher}{which}: {a['agreement']:.2f} % of {a['pixels']:,} pixels; IoU per class: "
                f"{per_class}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"scores written to {args.json}")
    return 0
