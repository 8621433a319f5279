"""``cloudmask weights``: inspect weights files, convert trusted PyTorch checkpoints to safetensors, blend two files."""

from __future__ import annotations

import argparse
import json

from pipeline.catalog.sensors import CLASS_CODES, CLASS_NAMES, get_sensor
from pipeline.errors import WeightsError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "weights",
        help="inspect, convert or blend model weights files",
        description="Inspect weights files, convert a trusted PyTorch checkpoint to the "
        "project's safetensors format, or blend a model with one fine-tuned from it.",
    )
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    info = wsub.add_parser(
        "info",
        help="print a weights file's contract (bands, classes, tile, sha256), recipe and its model card's figures",
    )
    info.add_argument(
        "source",
        nargs="?",
        help="local path or fsspec URL of a .safetensors weights file "
        "(default: the weights cloudmask run uses when given none)",
    )
    info.add_argument(
        "--json",
        action="store_true",
        help="print the file's metadata as JSON, with sha256, source, "
        "recipe and card (its model card's figure tables, or null)",
    )
    info.set_defaults(func=run_info)

    conv = wsub.add_parser(
        "convert",
        help="convert a trusted .pth/.pt checkpoint into a safetensors weights file",
        description="Reads a PyTorch checkpoint with torch.load(weights_only=True) -- tensors only, no code -- "
        "and writes a .safetensors file with the metadata the pipeline needs. Only convert files "
        "you trust.",
        epilog="example: cloudmask weights convert ms_cloudcam_cloudsen12_l1c.pth l1c.safetensors "
        '--sensor sentinel-2-l1c --cam-bypass --provenance \'{"data": "CloudSEN12+ L1C"}\'',
    )
    conv.add_argument(
        "checkpoint", help="the .pth/.pt file (a state dict, or a dict holding one under 'state_dict' or 'model')"
    )
    conv.add_argument("output", help="the .safetensors file to write")
    conv.add_argument("--model", default="mscloudcam", help="registered model name (default: %(default)s)")
    conv.add_argument(
        "--sensor",
        default="sentinel-2-l1c",
        help="band catalogue: sentinel-2-l1c or landsat-8-l1 (default: %(default)s)",
    )
    conv.add_argument(
        "--bands", help="comma-separated band names in the model's input order (default: the sensor's catalogue)"
    )
    conv.add_argument(
        "--cam-bypass", action="store_true", help="the checkpoint comes from the authors' code, which bypasses the CAM"
    )
    conv.add_argument(
        "--divisor", type=float, default=3000.0, help="input normalisation: DN / divisor (default: %(default)s)"
    )
    conv.add_argument("--tile-size", type=int, default=512, help="tile side the model takes (default: %(default)s)")
    conv.add_argument("--provenance", default="{}", help="JSON object: data, recipe, metrics")
    conv.add_argument("--fp16", action="store_true", help="store tensors as float16 (half the size)")
    conv.set_defaults(func=run_convert)

    blend = wsub.add_parser(
        "blend",
        help="interpolate two weights files of one model: (1 - alpha) * A + alpha * B",
        description="Weight-space interpolation (WiSE-FT): every floating tensor becomes (1 - alpha) * A + alpha * B. "
        "With A a model and B one fine-tuned from it, alpha trades what B learnt (alpha 1) against what "
        "A kept (alpha 0); score a few values with 'cloudmask evaluate' and keep the best. Both files "
        "must have the same contract (bands, classes, model); the output keeps B's and records both "
        "files' sha256 and alpha in its provenance.",
        epilog="example: cloudmask weights blend weights/mscloudcam_s2l2a_starter.safetensors "
        "runs/l2a-tuned/last.safetensors blended.safetensors --alpha 0.35 --fp16",
    )
    blend.add_argument("a", metavar="A", help="first weights file (local path or fsspec URL), weight 1 - alpha")
    blend.add_argument("b", metavar="B", help="second weights file, weight alpha; its contract and provenance are kept")
    blend.add_argument("output", metavar="OUTPUT", help="the .safetensors file to write (must not exist yet)")
    blend.add_argument("--alpha", type=float, required=True, help="share of B, 0 to 1")
    blend.add_argument("--fp16", action="store_true", help="store tensors as float16 (half the size)")
    blend.set_defaults(func=run_blend)


def recipe_line(provenance: dict) -> str | None:
    """How the file was made, from its provenance, without the machine's paths: the training command with
    ``--out`` and ``--label-cache`` left out and ``--init PATH`` given as the sha256 of the file it started from; for a
    blend, the two files' sha256 and alpha before it (for a blend of blends, each level's). None when the provenance
    records neither."""
    import shlex

    parts = []
    level, trained = provenance.get("blend"), None  # trained: the file the command below made (a blend's last b)
    while level:  # a blend of blends: each level, outermost first
        a, b, alpha = level["a_sha256"][:8], level["b_sha256"][:8], level["alpha"]
        parts.append(f"blend {1 - alpha:g} × {a}… + {alpha:g} × {b}… (cloudmask weights blend --alpha {alpha:g})")
        trained, level = b, level.get("b_blend")
    command = provenance.get("command")
    if command:
        words, out, i = shlex.split(command), [], 0
        while i < len(words):
            word = words[i]
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
            if word in ("--out", "--label-cache") and value is not None:
                i += 2
                continue
            if word == "--init" and value is not None:
                init = provenance.get("init_sha256")
                out += [word, f"{init[:8]}…" if init else value]
                i += 2
                continue
            if word.startswith("--") and value in ("True", "False"):
                out += [word] if value == "True" else [f"--no-{word[2:]}"]
                i += 2
                continue
            out.append(word)
            i += 1
        recorded = provenance.get("recipe")
        if isinstance(recorded, dict) and recorded.get("bf16") is False and "--bf16" not in out:
            out.append("--no-bf16")  # the recorded command leaves out options that are False
        parts.append((f"{trained}… made by " if trained else "") + " ".join(out))
    elif isinstance(provenance.get("recipe"), dict):
        parts.append(f"recipe {provenance['recipe'].get('name', '?')}")
    return "; ".join(parts) or None


def card_figures(card) -> list[dict]:
    """The figure tables of a model card as JSON: title, command, and each row's figures by column (``clear``,
    ``thick``, ..., ``miou``, ``agreement`` in %, ``pixels``)."""
    from pipeline.detect.cards import name

    def figure(column, value):
        return int(value) if name(column) == "pixels" else value

    return [
        {
            "title": t.title,
            "command": t.command,
            "rows": [
                {"row": row, "figures": {name(c): figure(c, v) for c, v in zip(t.columns, values) if v is not None}}
                for row, values in t.rows
            ],
        }
        for t in card.tables
    ]


def run_info(args: argparse.Namespace) -> int:
    from pipeline.detect.cards import card_for, card_path, name
    from pipeline.detect.weights import default_weights, load_weights

    w = load_weights(args.source or default_weights())
    meta = json.loads(w.meta.to_json())
    card = card_for(w.sha256)
    recipe = recipe_line(meta["provenance"])
    if args.json:
        figures = None if card is None else {"card": str(card_path()), "file": card.file, "tables": card_figures(card)}
        print(json.dumps(dict(meta, sha256=w.sha256, source=w.source, recipe=recipe, card=figures), indent=2))
        return 0
    params = sum(t.numel() for k, t in w.state.items() if t.is_floating_point() and ".running_" not in k)
    also = f" (also {', '.join(meta['also_levels'])} with these bands)" if meta.get("also_levels") else ""
    print(f"file           {w.source}")
    print(f"model          {meta['model']} {meta['model_kwargs'] or ''}".rstrip() + f", {params:,} parameters")
    print(f"sensor/level   {meta['sensor']} {meta['level']}{also}")
    print(f"bands          {', '.join(meta['bands'])} (input DN / {meta['normalisation']['divisor']:g})")
    print(f"classes        {', '.join(f'{c}={n}' for c, n in zip(meta['class_codes'], meta['classes']))}")
    print(f"tile size      {meta['tile_size']} px")
    print(f"sha256         {w.sha256}")
    if recipe:
        print(f"recipe         {recipe}")
    if meta["provenance"].get("dataset"):
        print(f"trained on     {meta['provenance']['dataset']}")
    elif not recipe and meta["provenance"]:
        print(f"provenance     {json.dumps(meta['provenance'])}")  # e.g. what 'weights convert --provenance' was given
    if card is None:
        print(
            "figures        none: no model card names this file's sha256; measure it with 'cloudmask evaluate "
            "--weights FILE ...' on data of its level"
        )
        return 0
    print(
        f"figures        from its model card, {card_path()}: IoU (%) per class against the teachers' labels, "
        f"agreement (%) with each teacher; each table is what its command prints"
    )
    for table in card.tables:
        print(f"  {table.title}")
        print(f"    $ {table.command}")
        for row, values in table.rows:
            cells = "  ".join(
                f"{name(c)} {v:,.0f}"
                if name(c) == "pixels"
                else f"{c} {v:.2f}"
                if name(c) != "agreement"
                else f"agreement {v:.2f} %"
                for c, v in zip(table.columns, values)
                if v is not None
            )
            print(f"    {row:<16}{cells}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from pipeline.detect.weights import WeightsMeta, load_weights, save_weights

    sensor = get_sensor(args.sensor)
    bands = tuple(args.bands.split(",")) if args.bands else sensor.bands
    try:
        provenance = json.loads(args.provenance)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"--provenance is not valid JSON ({exc}): {args.provenance!r}") from exc
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint {args.checkpoint!r} does not exist") from None
    except Exception as exc:
        raise WeightsError(f"{args.checkpoint} could not be read as a tensors-only checkpoint: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    state = {k.removeprefix("module."): v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    meta = WeightsMeta(
        model=args.model,
        bands=bands,
        classes=CLASS_NAMES,
        class_codes=CLASS_CODES,
        model_kwargs={"cam_bypass": True} if args.cam_bypass else {},
        sensor=sensor.name,
        level=sensor.level,
        normalisation={"kind": "scale", "divisor": args.divisor},
        tile_size=args.tile_size,
        provenance=provenance,
    )
    sha = save_weights(args.output, state, meta, dtype=torch.float16 if args.fp16 else None)
    try:
        load_weights(args.output).build_model()
    except WeightsError:
        import os

        os.remove(args.output)
        raise
    print(f"wrote {args.output} (sha256 {sha})")
    return 0


def run_blend(args: argparse.Namespace) -> int:
    import os

    import torch

    from pipeline.detect.weights import blend_weights, load_weights, save_weights

    if not 0.0 <= args.alpha <= 1.0:
        raise WeightsError(f"--alpha {args.alpha}; expected the share of B, 0 to 1")
    if os.path.exists(args.output):
        raise WeightsError(f"{args.output} exists; blend writes a new file: remove it or choose another name")
    state, meta = blend_weights(load_weights(args.a), load_weights(args.b), args.alpha)
    sha = save_weights(args.output, state, meta, dtype=torch.float16 if args.fp16 else None)
    load_weights(args.output).build_model()
    print(f"wrote {args.output} (sha256 {sha}): {1 - args.alpha:g} x {args.a} + {args.alpha:g} x {args.b}")
    return 0
