"""``cloudmask train``: the paper's recipe on CloudSEN12+ or L8Biome, or the starter distillation recipe."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.training.recipe import CLASS_WEIGHT_POWERS, Recipe

if TYPE_CHECKING:  # imported where used: torch takes seconds to load, and argument errors should not wait for it
    from pipeline.training.trainer import TrainData

RECIPES = {
    "paper": Recipe(),
    # Distillation on the few real scenes here, on CPU (weights/README.md): bf16 autocast, 256 random chips
    # an epoch, fp16 file; the shipped weights are its best.safetensors (best val mIoU, epoch 19 of 80). 256 px chips give four times the optimiser steps of 512 px ones for the same
    # pixels, and the file is deployed at 256 px tiles. Half the chips are centred on a cloud or shadow pixel
    # (the archive here is mostly clear: on plain random chips the model learnt to call everything clear).
    # GroupNorm instead of BatchNorm: from scratch at batch 8, BatchNorm's eval-mode predictions were all
    # "clear" while its train-mode ones were not. Warm-up and clipping keep the from-scratch transformer stable.
    "starter": Recipe(
        name="starter",
        model_kwargs={"norm": "group"},
        epochs=80,
        batch_size=8,
        lr=2e-4,
        bf16=True,
        save_dtype="fp16",
        train_size=256,
        warmup_steps=200,
        grad_clip=1.0,
    ),
    # The same distillation for Level-2A (weights/README.md): the 12 bands without B10, every chip moved a random
    # part of the way from TOA to surface reflectance by the map measured in pipeline/training/datasets/boa.py, and
    # class-weighted CE (the first L1C starter, unweighted, scored thick-cloud IoU 0.0 and shadow 0.2). The first L2A
    # starter was 40 epochs of it from scratch; the shipped one is the L1C starter fine-tuned in fifteen stages with
    # --real-l2a, --shadows, --translucent, --land-gain, --snow and --overcast, and four weight-space blends (model
    # card, "How it was trained").
    "starter-l2a": Recipe(
        name="starter-l2a",
        model_kwargs={"norm": "group"},
        epochs=40,
        batch_size=8,
        lr=2e-4,
        bf16=True,
        save_dtype="fp16",
        train_size=256,
        warmup_steps=200,
        grad_clip=1.0,
        class_weights="sqrt-inverse",
    ),
}
STARTERS = ("starter", "starter-l2a")
DATASETS = ("starter", "cloudsen12", "l8biome")
STARTER_CLASS_PROB = 0.5  # share of starter chips centred on a thick, thin or shadow pixel


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train MSCloudCAM (paper recipe, or the starter distillation recipe)",
        description="Trains and validates after every epoch; writes best.safetensors (best val mIoU), "
        "last.safetensors, metrics.jsonl and state.safetensors (for --resume) to --out.",
        epilog="examples:\n"
        "  cloudmask train --recipe starter --out runs/starter\n"
        "  cloudmask train --recipe starter-l2a --out runs/starter-l2a   # 12 bands, no B10, for L2A\n"
        "  cloudmask train --recipe starter-l2a --init weights/mscloudcam_s2l1c_starter.safetensors --real-l2a 0.25 \\\n"
        "      --shadows 1.0 --class-weights root4-inverse --epochs 8 --lr 1e-4 --warmup-steps 64 --out runs/l2a\n"
        "      # the shipped L2A starter's first stage (weights/README.md)\n"
        "  cloudmask train --dataset cloudsen12 --data /data/cloudsen12-l1c.0000.part.taco --out runs/l1c\n"
        "  cloudmask train --dataset l8biome --data /data/l8biome --bf16 --out runs/l8\n"
        "  cloudmask train ... --resume      # continue a killed run from its last epoch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="paper",
        help="paper: Adam 1e-4, batch 8, 100 epochs, seed 42, fp32; starter / starter-l2a: the recipes of "
        "the shipped L1C / L2A weights (weights/README.md)",
    )
    p.add_argument("--dataset", choices=DATASETS, help="default: starter for --recipe starter, else required")
    p.add_argument("--data", help="dataset location (TACO file(s) for cloudsen12, the l8biome folder)")
    p.add_argument(
        "--split-mode",
        choices=("paper", "official"),
        default="paper",
        help="cloudsen12: the authors' sequential 8500/500/1000 split or the official one",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="registered model name (default: mscloudcam)")
    p.add_argument("--model-kwargs", help="JSON options for the model, e.g. '{\"cam_bypass\": true}'")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch", type=int, help="batch size")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up over this many steps (paper: 0)")
    p.add_argument("--grad-clip", type=float, help="clip the gradients' global norm to this (paper: none)")
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="fine-tune: start from this weights file or URL (same model "
        "options) instead of random weights; input kernels are matched by band name: bands the file has "
        "beyond the data's are dropped (L1C weights for L2A), bands it lacks start at zero (L2A weights "
        "for L1C)",
    )
    p.add_argument(
        "--class-weights",
        choices=(*CLASS_WEIGHT_POWERS, "none"),
        help="cross-entropy class weights (median count / class count) ** 1/2 or 1/4 (default: the recipe's)",
    )
    p.add_argument(
        "--brightness",
        metavar="LOW,HIGH",
        help="starter: scale each chip by a random gain in LOW..HIGH and re-split its cloud labels into thick "
        "and thin by the scaled blue band (e.g. 0.75,1.35; pipeline/training/datasets/brightness.py)",
    )
    p.add_argument(
        "--shadows",
        type=float,
        metavar="SHARE",
        help="starter: in this share of the chips that hold cloud, the cloud casts a synthetic shadow (its "
        "shape moved by a random offset, the ground darkened as by a blocked sun, labelled by the "
        "labelling rule's shadow test), e.g. 0.8 (pipeline/training/datasets/shadows.py)",
    )
    p.add_argument(
        "--real-l2a",
        type=float,
        metavar="SHARE",
        help="starter-l2a: in this share of the chips, real L2A land (reBEN's patches in configilm's mock "
        "data, clear by reBEN's flags) replaces the simulated chip's ground, under its clouds and "
        "shadows, e.g. 0.25 (pipeline/training/datasets/reben.py)",
    )
    p.add_argument(
        "--translucent",
        action="store_true",
        default=None,
        help="with --real-l2a: the clouds laid over real L2A land fade out towards their edges (opacity "
        "rising over 2-24 px, at most 0.35-1, drawn per chip) and are re-labelled thick or thin by "
        "the blue the cloud would show over dark land, so that thin cloud is seen over real L2A ground "
        "(pipeline/training/datasets/translucent.py)",
    )
    p.add_argument(
        "--land-gain",
        metavar="LOW,HIGH",
        help="with --real-l2a: scale each real L2A land chip by a random gain in LOW..HIGH before clouds are "
        "laid over it; it stays clear, so brighter ground (bare soil, built-up) is seen as clear, "
        "not as thin cloud, e.g. 1,2 (pipeline/training/datasets/brightness.py)",
    )
    p.add_argument(
        "--snow",
        type=float,
        metavar="SHARE",
        help="with --real-l2a: in this share of the real L2A land chips, lay a snow cover (real snow spectra "
        "of reBEN's Finnish training patch, brightened as by a higher sun, patchy with soft edges) "
        "before clouds are laid over it; it stays clear, so bright ground with dark shortwave infrared "
        "is not called cloud, e.g. 0.5 (pipeline/training/datasets/snow.py)",
    )
    p.add_argument(
        "--overcast",
        type=float,
        metavar="SHARE",
        help="starter, starter-l2a: in this share of the chips, a layer of cloud or haze of (nearly) uniform "
        "opacity fills the whole chip over its land (real thick-cloud spectra of the training scenes, from "
        "faint haze to opaque; a quarter of them cut to a small image in a nodata canvas), labelled thick or "
        "thin by the blue the layer shows over dark ground, so that a tile that cloud fills is not called "
        "clear, e.g. 0.2; laid in top-of-atmosphere, before starter-l2a's simulated map (its real L2A land gets "
        "the layer as it gets the simulated chips' clouds, e.g. translucently) "
        "(pipeline/training/datasets/overcast.py)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast, fast on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX); --no-bf16 trains in "
        "fp32, much faster on CPUs without (default: the recipe's)",
    )
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument(
        "--samples-per-epoch", type=int, default=256, help="starter: random chips per epoch (default: %(default)s)"
    )
    p.add_argument("--label-cache", help="starter: folder to cache teacher labels in (default: OUT/labels)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved epoch")
    p.set_defaults(func=run)


def scene_weight(labels, chip: int = 256) -> float:
    """Starter sampling weight of a scene: sqrt(labelled area, at least one chip) x (0.4 + its cloud/shadow
    fraction), so the few cloudy scenes are seen about as often as the large clear ones, and small clear
    scenes as often as small cloudy ones."""
    import numpy as np

    n = max(int((labels != 255).sum()), 1)
    return float(np.sqrt(max(n, chip * chip)) * (0.4 + np.isin(labels, (1, 2, 3)).sum() / n))


def dataset_of(args, recipe: Recipe) -> str:
    """The dataset to train on; refused when it is not given or lacks its --data."""
    dataset = args.dataset or ("starter" if recipe.name in STARTERS else None)
    if dataset is None:
        raise ConfigError("--dataset is required with --recipe paper (cloudsen12 or l8biome, with --data PATH)")
    if dataset != "starter" and not args.data:
        raise ConfigError(f"--data is required for --dataset {dataset}")
    return dataset


def load_data(args, recipe: Recipe) -> TrainData:
    from pipeline.training.trainer import TrainData

    dataset = dataset_of(args, recipe)
    if dataset == "starter":
        from pipeline.catalog.sensors import SENTINEL2_L1C
        from pipeline.training.datasets.chips import RandomChips
        from pipeline.training.datasets.starter import SPLITS, labelled_scenes

        cache = args.label_cache or str(Path(args.out) / "labels")
        train_scenes = labelled_scenes("train", cache)
        val = [(s.dn, lab) for s, lab in labelled_scenes("val", cache)]
        chips = RandomChips(
            [(s.dn, lab) for s, lab in train_scenes],
            samples=args.samples_per_epoch,
            size=recipe.train_size or 512,
            seed=recipe.seed,
            weights=[scene_weight(lab) for _, lab in train_scenes],
            nodata_prob=0.3,
            class_prob=STARTER_CLASS_PROB,
        )
        if recipe.brightness:
            from pipeline.training.datasets.brightness import BrightenedChips

            chips = BrightenedChips(chips, SENTINEL2_L1C.bands, recipe.brightness, recipe.seed)
        if recipe.shadows:
            from pipeline.training.datasets.shadows import ShadowedChips

            chips = ShadowedChips(chips, SENTINEL2_L1C.bands, recipe.shadows, recipe.seed)  # in TOA, before any BOA map
        if recipe.overcast:  # last in TOA: over every TOA transform, before any BOA map (real cloud goes through it);
            # starter-l2a's real L2A land gets the layer only as it gets the simulated chips' clouds (_with_real_l2a)
            from pipeline.training.datasets.overcast import OvercastChips, training_clouds

            clouds = training_clouds(train_scenes, SENTINEL2_L1C.bands)  # eo-learn's left out: the test cases
            chips = OvercastChips(chips, SENTINEL2_L1C.bands, clouds, recipe.overcast, recipe.seed)
        counts = tuple(int(sum((lab == c).sum() for _, lab in train_scenes)) for c in range(4))
        split = json.dumps(dict(SPLITS, train=[s.name for s, _ in train_scenes]))
        if recipe.name == "starter-l2a":
            from pipeline.training.datasets.boa import BOA_MAP, SimulatedBOAChips, simulated_scene

            bands = SENTINEL2_L1C.bands
            train = SimulatedBOAChips(chips, bands, recipe.seed)
            val = [(simulated_scene(dn, lab, bands), lab) for dn, lab in val]  # the measured map
            dataset = "starter-l2a (real S2 L1C scenes as simulated L2A, teacher labels)"
            if recipe.real_l2a:
                train, val, split = _with_real_l2a(train, val, split, args, recipe)
                dataset += (
                    f", {recipe.real_l2a:g} of the chips real L2A land (reBEN patches, clear by their flags) under the "
                    f"simulated chips' {'translucent ' if recipe.translucent else ''}clouds and shadows"
                )
                if recipe.land_gain:
                    dataset += f", the real land scaled by gains {recipe.land_gain[0]:g} to {recipe.land_gain[1]:g}"
                if recipe.snow:
                    dataset += f", {recipe.snow:g} of the real land chips under synthetic snow (clear)"
            if recipe.overcast:
                dataset += OVERCAST_TEXT.format(recipe.overcast)
            return TrainData(
                train=train,
                val=val,
                bands=tuple(BOA_MAP),
                level="L2A",
                also_levels=("L1C",),
                ignore_index=255,
                class_counts=counts,
                split=split,
                dataset=dataset,
            )
        return TrainData(
            train=chips,
            val=val,
            bands=SENTINEL2_L1C.bands,
            dataset="starter (real S2 L1C scenes, teacher labels)"
            + (OVERCAST_TEXT.format(recipe.overcast) if recipe.overcast else ""),
            split=split,
            ignore_index=255,
            class_counts=counts,
        )
    if dataset == "cloudsen12":
        from pipeline.training.datasets.cloudsen12 import train_data
    else:
        from pipeline.training.datasets.l8biome import train_data
    return train_data(args.data, split_mode=args.split_mode)


OVERCAST_TEXT = ", {:g} of the chips under a tile-filling cloud or haze layer"


def _with_real_l2a(train, val, split: str, args, recipe: Recipe):
    """starter-l2a's chips with ``recipe.real_l2a`` of them drawn from reBEN's real L2A land (train split, clear by
    reBEN's flags; given the simulated chips' per-band jitter, no TOA->BOA map) with the clouds and shadows of the
    simulated chip they replace pasted over it, and reBEN's val patches added to the validation items."""
    from pipeline.catalog.sensors import SENTINEL2_L2A
    from pipeline.training.datasets.boa import SimulatedBOAChips
    from pipeline.training.datasets.chips import MixedChips, RandomChips
    from pipeline.training.datasets.reben import mosaics

    land = mosaics("train")
    real = RandomChips(
        [(s.dn, lab) for s, lab in land],
        samples=args.samples_per_epoch,
        size=recipe.train_size or 512,
        seed=recipe.seed + 1,
        nodata_prob=0.3,
        class_prob=0.0,
    )
    real = SimulatedBOAChips(real, SENTINEL2_L2A.bands, recipe.seed + 1, lam=(0.0, 0.0))  # L2A already: jitter only
    if recipe.land_gain:  # brighter ground, still clear (no clouds on these chips yet)
        from pipeline.training.datasets.brightness import BrightenedChips

        real = BrightenedChips(real, SENTINEL2_L2A.bands, recipe.land_gain, recipe.seed + 1)
    if recipe.snow:  # after the gain: the snow's own brightness range
        from pipeline.training.datasets.snow import SnowedChips, training_library

        real = SnowedChips(real, SENTINEL2_L2A.bands, training_library(), recipe.snow, recipe.seed + 1)
    val = val + [(s.dn, lab) for s, lab in mosaics("val")]
    split = json.dumps(dict(json.loads(split), real_l2a_train=[s.name for s, _ in land]))
    # the simulated chip's clouds and shadows pasted over the real land: real L2A is not a cue for "clear"
    if recipe.translucent:
        from pipeline.training.datasets.translucent import TranslucentOverlay

        overlay = TranslucentOverlay(SENTINEL2_L2A.bands)
        return MixedChips(train, real, recipe.real_l2a, recipe.seed, overlay=overlay), val, split
    return MixedChips(train, real, recipe.real_l2a, recipe.seed, paste=(1, 2, 3)), val, split


def run(args: argparse.Namespace) -> int:
    recipe = RECIPES[args.recipe]
    if dataset_of(args, recipe) != "starter" and (
        args.brightness or args.shadows is not None or args.overcast is not None
    ):  # before torch loads
        raise ConfigError(
            "--brightness, --shadows and --overcast change the starter's chips and teacher labels; they apply to "
            "--dataset starter only"
        )
    if args.real_l2a is not None and (recipe.name != "starter-l2a" or dataset_of(args, recipe) != "starter"):
        raise ConfigError(
            f"--real-l2a mixes real L2A chips into simulated L2A ones: it needs --recipe starter-l2a "
            f"(got --recipe {args.recipe})"
        )
    for flag, given in (
        ("--translucent", args.translucent),
        ("--land-gain", args.land_gain),
        ("--snow", args.snow is not None),
    ):
        if given and not args.real_l2a:
            raise ConfigError(
                f"{flag} changes the real L2A land chips: it needs --real-l2a SHARE above 0, e.g. --real-l2a 0.5"
            )
    try:
        model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-kwargs is not valid JSON ({exc}): {args.model_kwargs!r}") from None
    if args.model is not None:
        from pipeline.detect.model import list_models

        if args.model not in list_models():
            raise ConfigError(f"--model {args.model!r} is unknown; known models: {', '.join(list_models())}")
    overrides = dict(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        bf16=args.bf16,
        workers=args.workers,
        model=args.model,
        model_kwargs=model_kwargs,
        init=args.init,
        shadows=args.shadows,
        real_l2a=args.real_l2a,
        translucent=args.translucent,
        snow=args.snow,
        overcast=args.overcast,
    )
    recipe = replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    for name, example in (("brightness", "0.75,1.35"), ("land_gain", "1,2")):
        text, flag = getattr(args, name), name.replace("_", "-")
        if text:
            from .parsers import csv_list

            gains = csv_list(text, float, flag)
            if len(gains) != 2:
                raise ConfigError(f"--{flag} {text!r}: expected two gains LOW,HIGH, e.g. {example}")
            recipe = replace(recipe, **{name: tuple(gains)})
    if args.class_weights:
        recipe = replace(recipe, class_weights=None if args.class_weights == "none" else args.class_weights)
    if args.bf16 is None and recipe.bf16:
        from pipeline.detect.infer import cpu_has_native_bf16, resolve_device

        if resolve_device(recipe.device).type == "cpu" and not cpu_has_native_bf16():
            print(
                "training in fp32: this CPU has no native bf16 (AVX512-BF16 or AMX), where the recipe's bf16 autocast "
                "runs many times slower; --bf16 asks for it anyway",
                flush=True,
            )
            recipe = replace(recipe, bf16=False)
    from pipeline.training.trainer import check_out_dir, train

    check_out_dir(Path(args.out), args.resume)  # before the (possibly slow) data loading
    init = None
    if recipe.init:
        from pipeline.detect.weights import load_weights

        init = load_weights(recipe.init)  # a missing or broken file is refused before the data loading, and read once
    data = load_data(args, recipe)
    print(
        f"training {recipe.model} on {data.dataset}: {len(data.train)} samples/epoch, {len(data.val)} val items, "
        f"{recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.lr}, {'bf16' if recipe.bf16 else 'fp32'} -> {args.out}",
        flush=True,
    )
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  val mIoU {task.fields[miou]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=None, epoch=0, loss=float("nan"), miou="-")

        plain = not progress.console.is_terminal  # batch jobs and pipes get lines instead of a live bar

        def on_step(s):
            progress.update(
                task,
                total=s["steps"],
                completed=s["step"] + 1,
                epoch=f"{s['epoch'] + 1}/{recipe.epochs}",
                loss=s["loss"],
            )
            if plain and (s["step"] == 0 or (s["step"] + 1) % max(1, s["steps"] // 20) == 0):
                print(
                    f"epoch {s['epoch'] + 1}/{recipe.epochs} step {s['step'] + 1}/{s['steps']}: loss {s['loss']:.4f}",
                    flush=True,
                )

        def on_epoch(r):
            progress.update(task, miou=f"{r['val_miou']:.2f}")
            progress.console.print(
                f"epoch {r['epoch']}/{recipe.epochs}: train loss {r['train_loss']:.4f}, "
                f"val mIoU {r['val_miou']:.2f} (best {r['best_miou']:.2f}), {r['seconds']:.0f} s"
            )

        best = train(
            data,
            recipe,
            args.out,
            resume=args.resume,
            on_step=on_step,
            on_epoch=on_epoch,
            init=init,
            provenance={"command": "cloudmask train " + " ".join(_argv(args))},
        )
    print(
        f"best epoch {best.get('epoch')}: val mIoU {best.get('val_miou')}; weights: {Path(args.out) / 'best.safetensors'}"
    )
    return 0


def _argv(args) -> list[str]:
    skip = {"func", "command", "resume"}
    return [
        f"--{k.replace('_', '-')} {v}"
        for k, v in sorted(vars(args).items())
        if k not in skip and v not in (None, False)
    ]
