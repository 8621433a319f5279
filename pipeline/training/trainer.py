"""The training loop: the paper's recipe by default, resumable from safetensors state (never pickle).

Everything random is seeded from the recipe's seed and the epoch (chip sampling, shuffling) or restored
from the saved state (torch/numpy/python RNGs), so a run killed mid-epoch and resumed ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.catalog.sensors import CLASS_CODES, CLASS_NAMES
from pipeline.config import InferSpec
from pipeline.detect.infer import Predictor, resolve_device
from pipeline.detect.model import create_model, deep_supervision_loss
from pipeline.detect.weights import Weights, WeightsMeta, save_weights
from pipeline.errors import ConfigError
from pipeline.training.metrics import confusion, scores
from pipeline.training.recipe import CLASS_WEIGHT_POWERS, Recipe  # noqa: F401 (Recipe: also imported from here)


@dataclass
class TrainData:
    """What a dataset reader hands the loop.

    ``train``: a torch Dataset of ``(dn (C, S, S) float32, labels (S, S) int64)`` (optionally with
    ``set_epoch``); ``val``: ``[(dn (C, y, x), labels (y, x))]`` of any size, scored with tiled inference.
    """

    train: torch.utils.data.Dataset
    val: list
    bands: tuple[str, ...]
    dataset: str
    split: str
    sensor: str = "sentinel-2"
    level: str = "L1C"
    ignore_index: int | None = None
    divisor: float = 3000.0
    tile: int = 512
    class_counts: tuple[int, ...] | None = None  # labelled pixels per class of the training set (class weights)
    also_levels: tuple[str, ...] = ()  # other levels the weights suit (WeightsMeta.also_levels)


def class_weights(counts, kind: str | None) -> torch.Tensor | None:
    """``(K,)`` float32 cross-entropy weights from the training set's pixel ``counts`` per class:
    ``(median(counts) / counts) ** power`` with ``power`` of ``kind`` in :data:`CLASS_WEIGHT_POWERS` (0.5 for
    ``"sqrt-inverse"``, 0.25 for ``"root4-inverse"``; a class absent from the labels gets weight 1); None for
    ``kind`` None. Rare classes (thick cloud, shadow in a mostly clear archive) then weigh more without the
    instability of full inverse-frequency weights."""
    if kind is None:
        return None
    if not counts:
        raise ConfigError(f"class_weights={kind!r} needs the training set's class counts; this dataset gives none")
    c = np.asarray(counts, np.float64)
    w = np.where(c > 0, (np.median(c[c > 0]) / np.maximum(c, 1)) ** CLASS_WEIGHT_POWERS[kind], 1.0)
    return torch.tensor(w, dtype=torch.float32)


def init_from(model, source: str | Weights, bands: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Load the weights file ``source`` into ``model`` (fine-tuning); return its sha256 and the training data's
    bands the file lacks. The input kernels (the only tensors with one input channel per band) are matched by band
    name: bands the file has but the data lacks are left out (L1C weights for L2A: B10), bands the data has but the
    file lacks start at zero (L2A weights for L1C: B10), so the model starts computing what the file's did.
    Refused, naming the difference, when the other tensors do not fit."""
    from pipeline.detect.weights import load_weights

    init = source if isinstance(source, Weights) else load_weights(source)
    source = init.source
    have = tuple(init.meta.bands)
    new = tuple(b for b in bands if b not in have)
    state = {k: v.float() for k, v in init.state.items()}
    if have != tuple(bands):
        target = model.state_dict()
        for k, v in state.items():
            if v.ndim > 1 and v.shape[1] == len(have) and k in target and target[k].shape[1] == len(bands):
                kernel = torch.zeros(v.shape[0], len(bands), *v.shape[2:], dtype=v.dtype)
                for i, b in enumerate(bands):
                    if b in have:
                        kernel[:, i] = v[:, have.index(b)]
                state[k] = kernel
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:2]
        raise ConfigError(
            f"--init {source} does not fit the model being trained (model_kwargs "
            f"{init.meta.model_kwargs} in the file): {' '.join(first)}"
        ) from None
    return init.sha256, new


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate_model(model, meta: WeightsMeta, items, device: str = "auto") -> dict:
    """Scores of ``model`` on ``items`` = [(dn, labels)]: one confusion matrix over all of them."""
    weights = Weights(meta=meta, tensors={}, sha256="in-memory", source="in-memory")
    predictor = Predictor(weights, InferSpec(overlap=0, device=device), model=model)
    cm = np.zeros((len(meta.classes),) * 2, np.int64)
    for dn, labels in items:
        pred = predictor.predict(np.asarray(dn), mask_nodata=False).classes  # the paper scores padding too
        cm += confusion(np.asarray(labels), pred, len(meta.classes))
    return dict(scores(cm), confusion=cm.tolist())


# -- resumable state -------------------------------------------------------------------------------------


def save_state(path: Path, model, opt, epoch: int, best: dict, history: list) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_sd = opt.state_dict()
    for pid, st in opt_sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).cpu().contiguous()
    np_state = np.random.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {
        "epoch": epoch,
        "best": best,
        "history": history,
        "param_groups": opt_sd["param_groups"],
        "rng.numpy": [np_state[0], *map(float, np_state[2:])],
        "rng.python": random.getstate(),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"cloudmask.train": json.dumps(meta)})
    os.replace(tmp, path)  # a kill during the write leaves the previous state intact


def load_state(path: Path, model, opt) -> tuple[int, dict, list]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["cloudmask.train"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    kind, pos, has_gauss, cached = meta["rng.numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    version, internal, gauss = meta["rng.python"]
    random.setstate((version, tuple(internal), gauss))
    return meta["epoch"], meta["best"], meta["history"]


def _write_lines(path: Path, records: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


# -- the loop --------------------------------------------------------------------------------------------


def check_out_dir(out: Path, resume: bool) -> Path:
    """The run's state file; refuses to start over an existing run or to resume a missing one."""
    state_path = Path(out) / "state.safetensors"
    if not resume and state_path.exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if resume and not state_path.exists():
        raise ConfigError(f"--resume: {state_path} does not exist; start without --resume")
    return state_path


def train(
    data: TrainData,
    recipe: Recipe,
    out_dir: str | Path,
    resume: bool = False,
    provenance: dict | None = None,
    on_step: Callable[[dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    init: Weights | None = None,
) -> dict:
    """Train, validating after each epoch; write ``best.safetensors`` (best val mIoU), ``last.safetensors``,
    ``metrics.jsonl`` and ``state.safetensors`` (for ``resume``) under ``out_dir``. Returns the best record."""
    out = Path(out_dir)
    state_path = check_out_dir(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(recipe.device)
    seed_everything(recipe.seed)
    # Swin's weights do not depend on its input size, but the context modules (PSP bins, global CAM) see a
    # different share of the scene at another size: the file is saved for the size it was trained at.
    build = dict(recipe.model_kwargs, **({"img_size": recipe.train_size} if recipe.train_size else {}))
    model = create_model(recipe.model, in_chans=len(data.bands), num_classes=len(CLASS_NAMES), **build)
    # ``init``: recipe.init already loaded by the caller (read once); on resume the state overwrites it below
    init_sha256, new_bands = init_from(model, init or recipe.init, data.bands) if recipe.init else (None, ())
    if new_bands:
        print(f"--init: the weights lack {', '.join(new_bands)}; their input kernels start at zero", flush=True)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    weights = class_weights(data.class_counts, recipe.class_weights)
    weights = None if weights is None else weights.to(device)
    start, best, history = 0, {}, []
    if resume:
        start, best, history = load_state(state_path, model, opt)
    meta = WeightsMeta(
        model=recipe.model,
        bands=tuple(data.bands),
        classes=CLASS_NAMES,
        class_codes=CLASS_CODES,
        model_kwargs=recipe.model_kwargs,
        sensor=data.sensor,
        level=data.level,
        also_levels=tuple(data.also_levels),
        normalisation={"kind": "scale", "divisor": data.divisor},
        tile_size=getattr(model, "img_size", data.tile),  # deployed at the size it was trained at
        provenance=dict(
            provenance or {},
            dataset=data.dataset,
            split=data.split,
            recipe=asdict(recipe),
            **({"init_sha256": init_sha256} if init_sha256 else {}),
            **({"init_new_bands": list(new_bands)} if new_bands else {}),
            **({"class_weights": [round(float(w), 4) for w in weights]} if weights is not None else {}),
        ),
    )
    chip = getattr(model, "img_size", meta.tile_size)
    val_meta = replace(meta, tile_size=chip)  # validation runs the in-memory model at its own size
    save_dtype = torch.float16 if recipe.save_dtype == "fp16" else None
    for epoch in range(start, recipe.epochs):
        t0 = time.time()
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            data.train,
            batch_size=recipe.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=recipe.workers,
            generator=torch.Generator().manual_seed(recipe.seed + epoch),
        )
        if len(loader) == 0:
            raise ConfigError(
                f"the training set has {len(data.train)} samples, fewer than one batch of {recipe.batch_size}"
            )
        model.train()
        losses = []
        for step, (x, y) in enumerate(loader):
            if x.shape[-1] != chip or x.shape[-2] != chip:
                raise ConfigError(
                    f"training chips are {tuple(x.shape[-2:])} pixels but model {recipe.model!r} takes "
                    f"{chip}x{chip}; pass --model-kwargs '{{\"img_size\": {x.shape[-1]}}}'"
                )
            x, y = (x / data.divisor).to(device), y.to(device)
            if recipe.warmup_steps:  # a function of the global step only, so a resumed run gets the same rate
                for group in opt.param_groups:
                    group["lr"] = recipe.lr * min(1.0, (epoch * len(loader) + step + 1) / recipe.warmup_steps)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                outputs = model(x)
            loss = deep_supervision_loss(outputs, y, recipe.aux_weight, data.ignore_index, weights)
            loss.backward()
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            losses.append(loss.item())
            if on_step:
                on_step(dict(epoch=epoch, step=step, steps=len(loader), loss=losses[-1]))
        model.eval()
        val = evaluate_model(model, val_meta, data.val, recipe.device) if data.val else {"miou": float("nan")}
        record = dict(
            epoch=epoch + 1,
            train_loss=float(np.mean(losses)),
            val_miou=val["miou"],
            val_iou=val.get("iou"),
            val_aacc=val.get("aacc"),
            seconds=round(time.time() - t0, 1),
        )
        history.append(record)
        _write_lines(out / "metrics.jsonl", history)  # whole history: a resumed run never duplicates a line
        improved = not best or (val["miou"] == val["miou"] and val["miou"] > best.get("val_miou", -1))
        if improved:
            best = record
            save_weights(
                out / "best.safetensors",
                model,
                replace(meta, provenance=dict(meta.provenance, metrics=record)),
                dtype=save_dtype,
            )
        save_weights(
            out / "last.safetensors",
            model,
            replace(meta, provenance=dict(meta.provenance, metrics=record)),
            dtype=save_dtype,
        )
        save_state(state_path, model, opt, epoch + 1, best, history)
        if on_epoch:
            on_epoch(dict(record, best_miou=best.get("val_miou")))
    return best
