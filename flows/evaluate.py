"""``cloudmask evaluate``: the paper's protocol (one confusion matrix over the split; IoU, F1, aAcc)."""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipeline.config import InferSpec
from pipeline.errors import ConfigError
from pipeline.infer import Predictor
from pipeline.metrics import confusion, scores
from pipeline.model.weights import load_weights

# The MSCloudCAM rows of docs/mscloudcam.md ("The authors' reported results") (IoU % clear, thick, thin, shadow; mIoU; mF1; aAcc).
PAPER = {
    "cloudsen12-l1c": (91.64, 87.24, 52.58, 70.63, 75.52, 85.13, 91.99),
    "cloudsen12-l2a": (89.28, 84.30, 55.53, 63.38, 73.12, 83.70, 89.69),
    "l8biome": (88.27, 82.23, 40.19, 21.48, 58.04, 69.18, 87.09),
}
COLUMNS = ("Clear", "Thick", "Thin", "Shadow", "mIoU", "mF1", "aAcc")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score weights on a dataset split with the paper's protocol",
        description="Predicts every item of the split, accumulates one confusion matrix over all of them "
                    "(label 255 ignored) and prints per-class IoU, mIoU, mF1 and aAcc like the paper's tables.",
        epilog="examples:\n"
               "  cloudmask evaluate --dataset starter --split test --teachers\n"
               "  cloudmask evaluate --weights runs/l1c/best.safetensors --dataset cloudsen12 --data l1c.taco --paper\n"
               "  cloudmask evaluate --dataset l8biome --data /data/l8biome --json l8.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", help="weights file or URL (default: the shipped starter weights)")
    p.add_argument("--dataset", choices=("starter", "cloudsen12", "l8biome"), required=True)
    p.add_argument("--data", help="dataset location (cloudsen12: TACO file(s); l8biome: folder)")
    p.add_argument("--level", choices=("l1c", "l2a"), default="l1c", help="cloudsen12 product level for --paper")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--split-mode", choices=("paper", "official"), default="paper")
    p.add_argument("--paper", action="store_true", help="print the paper's MSCloudCAM row beside ours")
    p.add_argument("--teachers", action="store_true", help="starter: also per-class agreement with each teacher")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    p.set_defaults(func=run)


def load_items(args) -> list:
    if args.dataset == "starter":
        from pipeline.datasets.starter import labelled_scenes

        return [(s.dn, lab) for s, lab in labelled_scenes(args.split)]
    if not args.data:
        raise ConfigError(f"--data is required for --dataset {args.dataset}")
    if args.dataset == "cloudsen12":
        from pipeline.datasets.cloudsen12 import CloudSEN12

        return CloudSEN12(args.data, split=args.split, split_mode=args.split_mode)
    from pipeline.datasets.l8biome import L8Biome

    return L8Biome(args.data, split=args.split)


def table(rows: dict[str, tuple]) -> str:
    width = max(len(k) for k in rows) + 2
    lines = [f"{'':<{width}}" + "".join(f"{c:>8}" for c in COLUMNS)]
    for name, values in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{v:>8.2f}" for v in values))
    return "\n".join(lines)


def teacher_agreement(items, predictions) -> dict:
    """Per-class IoU of our classes against each teacher, in the teacher's own (coarser) classes."""
    from pipeline.peers import (S2CLOUDLESS_THRESHOLD, TO_S2CLOUDLESS, TO_UKIS, coarse, s2cloudless_probability,
                                ukis_probabilities)

    cm_s2c, cm_ukis = np.zeros((2, 2), np.int64), np.zeros((3, 3), np.int64)
    for (dn, _), pred in zip(items, predictions):
        nodata = (dn == 0).all(axis=0)
        s2c = (s2cloudless_probability(dn) >= S2CLOUDLESS_THRESHOLD).astype(np.uint8)
        ukis = ukis_probabilities(dn).argmax(axis=0).astype(np.uint8)
        s2c[nodata] = ukis[nodata] = 255
        cm_s2c += confusion(s2c, coarse(pred, TO_S2CLOUDLESS), classes=2)
        cm_ukis += confusion(ukis, coarse(pred, TO_UKIS), classes=3)
    s, u = scores(cm_s2c), scores(cm_ukis)
    return {"s2cloudless": {"classes": ["clear", "cloud"], "iou": s["iou"], "agreement": s["aacc"]},
            "ukis-csmask": {"classes": ["clear", "cloud", "shadow"], "iou": u["iou"], "agreement": u["aacc"]}}


def run(args: argparse.Namespace) -> int:
    from pipeline.model.weights import default_weights

    items = load_items(args)
    weights = load_weights(args.weights or default_weights())
    if len(items) == 0:
        raise ConfigError(f"split {args.split!r} of {args.dataset} is empty")
    predictor = Predictor(weights, InferSpec(overlap=0, device=args.device))
    cm = np.zeros((4, 4), np.int64)
    predictions = []
    for i, (dn, labels) in enumerate(items):
        dn = np.asarray(dn)
        if dn.shape[0] != len(weights.meta.bands):
            raise ConfigError(f"item {i} has {dn.shape[0]} bands but the weights take {len(weights.meta.bands)} "
                              f"({list(weights.meta.bands)})")
        pred = predictor.predict(dn, mask_nodata=False).classes  # the paper's protocol scores padding too
        predictions.append(pred)
        cm += confusion(np.asarray(labels), pred)
        print(f"\r{i + 1}/{len(items)} items", end="", flush=True)
    print()
    s = scores(cm)
    ours = (*s["iou"], s["miou"], s["mf1"], s["aacc"])
    name = f"{args.dataset}-{args.level}" if args.dataset == "cloudsen12" else args.dataset
    rows = {f"ours ({weights.meta.model}, {args.split})": ours}
    if args.paper:
        if name in PAPER:
            rows[f"paper MSCloudCAM ({name})"] = PAPER[name]
        else:
            print(f"(the paper has no row for {name}; rows exist for {', '.join(PAPER)})")
    print(f"IoU (%) over {s['pixels']:,} labelled pixels of {len(items)} items, one confusion matrix:")
    print(table(rows))
    result = dict(dataset=name, split=args.split, weights=weights.source, sha256=weights.sha256, confusion=cm.tolist(), **s)
    if args.teachers:
        if args.dataset != "starter":
            raise ConfigError("--teachers compares with s2cloudless and ukis-csmask on Sentinel-2 L1C: use --dataset starter")
        agree = teacher_agreement(items, predictions)
        result["teachers"] = agree
        for teacher, a in agree.items():
            per_class = ", ".join(f"{c} {v:.2f}" for c, v in zip(a["classes"], a["iou"]))
            print(f"agreement with {teacher}: {a['agreement']:.2f} % of pixels; IoU per class: {per_class}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"scores written to {args.json}")
    return 0
