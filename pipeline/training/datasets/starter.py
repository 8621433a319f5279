"""The starter distillation set: every real S2 L1C scene here, labelled by the two teachers.

Split by whole scenes: **test** = the SEN12MS-CR patch (cumulus and shadows, all four classes);
**val** = eo-learn scenes 1 (cloudy) and 3 (clear), used to pick the best epoch; **train** = the rest.
Teacher labels are computed by :func:`pipeline.training.pseudolabels.teacher_labels` and cached as ``.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.training.datasets.scenes import SCENES, Scene, all_scenes
from pipeline.training.pseudolabels import RULE_VERSION, teacher_labels

SPLITS = {"test": ("sen12mscr-ROIs1868-p30",), "val": ("eolearn-1", "eolearn-3")}


def split_of(name: str) -> str:
    return next((s for s, names in SPLITS.items() if name in names), "train")


def scenes_of(split: str) -> list[Scene]:
    """The whole scenes of one split (``train``, ``val`` or ``test``)."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split {split!r}; expected train, val or test")
    return all_scenes([name for name in SCENES if split_of(name) == split])


def labelled_scenes(split: str, cache_dir: str | Path | None = None) -> list[tuple[Scene, np.ndarray]]:
    """``[(scene, labels (y, x) uint8)]`` of one split; labels from the cache when present."""
    out = []
    for scene in scenes_of(split):
        cached = Path(cache_dir) / f"{scene.name}.labels-v{RULE_VERSION}.npz" if cache_dir else None
        if cached is not None and cached.exists():
            labels = np.load(cached)["labels"]
        else:
            labels = teacher_labels(scene.dn, scene.resolution_m)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(cached, labels=labels)
        out.append((scene, labels))
    return out
