import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pipeline.testing import tiny_weights  # noqa: E402


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
