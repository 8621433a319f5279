"""Tiled prediction on arrays: halo invariance, odd sizes, nodata, precision agreement, model cache."""

import numpy as np
import pytest
import torch

from pipeline.config import InferSpec
from pipeline.errors import ConfigError, InputError
from pipeline.infer import Predictor, get_predictor, predict
from pipeline.model.weights import load_weights
from pipeline.testing import eolearn_scenes, sen12mscr_patch

SPEC = InferSpec(overlap=16, batch_size=4)  # tiny weights: 64 px tiles, stride 48


@pytest.fixture(scope="module")
def predictor(tiny_weights_file):
    return get_predictor(tiny_weights_file, SPEC)


@pytest.fixture(scope="module")
def scene():
    return sen12mscr_patch()  # (13, 256, 256) uint16, cloudy


def test_prediction_types_shapes_and_probabilities(predictor, scene):
    p = predictor.predict(scene, probabilities=True)
    assert p.classes.shape == (256, 256) and p.classes.dtype == np.uint8
    assert set(np.unique(p.classes)) <= {0, 1, 2, 3}
    assert p.probabilities.shape == (4, 256, 256) and p.probabilities.dtype == np.float32
    np.testing.assert_allclose(p.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.probabilities.argmax(0), p.classes)


@pytest.mark.parametrize("cut_y,cut_x", [(96, None), (None, 144), (48, 192)])
def test_whole_equals_parts_with_halo(predictor, scene, cut_y, cut_x):
    """Blocks whose edges sit on the stride, each given a halo of `overlap` pixels, reproduce the whole."""
    whole = predictor.predict(scene, probabilities=True)
    halo = SPEC.overlap
    out = np.full((256, 256), 77, np.uint8)
    ys = [(0, cut_y), (cut_y, 256)] if cut_y else [(0, 256)]
    xs = [(0, cut_x), (cut_x, 256)] if cut_x else [(0, 256)]
    for y0, y1 in ys:
        for x0, x1 in xs:
            hy0, hx0 = max(0, y0 - halo), max(0, x0 - halo)
            hy1, hx1 = min(256, y1 + halo), min(256, x1 + halo)
            part = predictor.predict(scene[:, hy0:hy1, hx0:hx1], offset=(hy0, hx0),
                                     needed=(slice(y0 - hy0, y1 - hy0), slice(x0 - hx0, x1 - hx0)))
            out[y0:y1, x0:x1] = part.classes[y0 - hy0:y1 - hy0, x0 - hx0:x1 - hx0]
    np.testing.assert_array_equal(out, whole.classes)


def test_tile_grid_is_anchored_to_the_scene_not_the_array(predictor, scene):
    """Shifting the array's offset off the stride changes the tiling (so offsets are honoured)."""
    a = predictor.predict(scene, offset=(0, 0), probabilities=True).probabilities
    b = predictor.predict(scene, offset=(0, 24), probabilities=True).probabilities
    assert not np.allclose(a, b)


@pytest.mark.parametrize("shape", [(37, 53), (131, 97), (64, 64), (1, 1), (65, 200)])
def test_odd_sizes_are_padded_and_cropped_back(predictor, scene, shape):
    img = scene[:, : shape[0], : shape[1]]
    p = predictor.predict(img)
    assert p.classes.shape == shape
    assert (p.classes != 255).all()


def test_all_nodata_gives_255(predictor):
    p = predictor.predict(np.zeros((13, 70, 90), np.uint16), probabilities=True)
    assert (p.classes == 255).all() and np.isnan(p.probabilities).all()


def test_nodata_pixels_only_where_every_band_is_zero(predictor, scene):
    img = scene.copy()
    img[:, :10, :] = 0  # outside the swath
    img[3, 50:60, 50:60] = 0  # one band zero: still data
    p = predictor.predict(img)
    assert (p.classes[:10] == 255).all()
    assert (p.classes[10:] != 255).all()


def test_float_input_with_nan_is_nodata(predictor, scene):
    img = scene.astype(np.float32)
    img[:, 5, 5] = np.nan
    p = predictor.predict(img)
    assert p.classes[5, 5] == 255 and (p.classes != 255).sum() == 256 * 256 - 1


def test_wrong_band_count_names_the_expected_bands(predictor, scene):
    with pytest.raises(InputError, match=r"12 bands|13 bands.*'B8A'"):
        predictor.predict(scene[:12])
    with pytest.raises(InputError, match=r"\(band, y, x\)"):
        predictor.predict(scene[0])


def test_tile_size_other_than_the_weights_is_refused(tiny_weights_file):
    with pytest.raises(ConfigError, match="built for 64x64 tiles"):
        Predictor(load_weights(tiny_weights_file), InferSpec(tile=128, overlap=16))
    with pytest.raises(ConfigError, match="overlap=40"):
        Predictor(load_weights(tiny_weights_file), InferSpec(overlap=40))


def test_bad_infer_settings_are_named():
    for kwargs, word in [(dict(precision="fp8"), "fp8"), (dict(device="tpu"), "tpu"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ConfigError, match=word):
            InferSpec(**kwargs)


def test_model_is_built_once_per_process_and_settings(tiny_weights_file):
    a = get_predictor(tiny_weights_file, SPEC)
    assert get_predictor(str(tiny_weights_file), SPEC) is a
    assert get_predictor(load_weights(tiny_weights_file), SPEC) is a
    assert get_predictor(tiny_weights_file, InferSpec(overlap=8)) is not a
    before = a.stats.tiles
    predict(np.ones((13, 64, 64), np.uint16), tiny_weights_file, SPEC)
    assert a.stats.tiles == before + 4  # 64 px on a stride-48 grid: tiles at 0 and 48 in each axis


def test_bf16_agrees_with_fp32_on_real_scenes(tiny_weights_file, scene):
    """Class agreement of bf16 autocast with fp32 on real S2 L1C scenes (reported; must be high)."""
    fp32 = get_predictor(tiny_weights_file, InferSpec(overlap=16, precision="fp32"))
    bf16 = get_predictor(tiny_weights_file, InferSpec(overlap=16, precision="bf16"))
    scenes = [scene] + list(eolearn_scenes())
    same = total = 0
    for img in scenes:
        a, b = fp32.predict(img).classes, bf16.predict(img).classes
        same += int((a == b).sum())
        total += a.size
    agreement = same / total
    print(f"bf16 vs fp32 class agreement on {len(scenes)} real scenes: {agreement:.4%}")
    assert agreement > 0.98


@pytest.mark.gpu
def test_cuda_autocast_agrees_with_cpu(tiny_weights_file, scene):
    cpu = get_predictor(tiny_weights_file, InferSpec(overlap=16, device="cpu")).predict(scene).classes
    gpu = get_predictor(tiny_weights_file, InferSpec(overlap=16, device="cuda")).predict(scene).classes
    assert (cpu == gpu).mean() > 0.98
    assert torch.cuda.is_available()
