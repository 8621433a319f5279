import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pipeline.testing import tiny_weights, write_cloudsen12_taco, write_l8biome  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch sees none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_weights_file(tmp_path_factory):
    """A real weights file of the tiny variant (random init, 64 px tiles, 13 S2 L1C bands)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    tiny_weights(path, seed=0)
    return path


@pytest.fixture(scope="session")
def cloudsen12_taco(tmp_path_factory):
    """A TACO v1 file in CloudSEN12+'s layout (23 samples, 20 of them 509/high), written with tacotoolbox."""
    return write_cloudsen12_taco(tmp_path_factory.mktemp("cloudsen12") / "cloudsen12-l1c.0000.part.taco")


@pytest.fixture(scope="session")
def l8biome_root(tmp_path_factory):
    """An L8Biome folder in torchgeo's layout: 5 real Landsat-8 scenes with fixedmask codes."""
    return write_l8biome(tmp_path_factory.mktemp("l8biome"))
