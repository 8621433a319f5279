"""CloudSEN12+ TACO reader on a fixture written by the format's own tooling (tacotoolbox 0.5.2 / pytortilla)."""

import numpy as np
import pytest
import rasterio

from pipeline.errors import InputError
from pipeline.training.datasets.cloudsen12 import CloudSEN12, pad_to_512, paper_split


def test_fixture_is_a_taco_v1_container(cloudsen12_taco):
    assert cloudsen12_taco.read_bytes()[:2] == b"WX"  # TACO magic, as the published .part.taco files


def test_paper_split_sizes():
    sizes = {k: len(range(10_000)[s]) for k, s in paper_split(10_000).items()}
    assert sizes == {"train": 8500, "val": 500, "test": 1000}


def test_filter_and_sequential_split(cloudsen12_taco):
    splits = {s: CloudSEN12(cloudsen12_taco, s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 17, "val": 1, "test": 2}
    table = splits["train"].table  # the filtered subset: distractors gone, order kept
    assert len(table) == 20
    assert set(table["real_proj_shape"]) == {509} and set(table["label_type"]) == {"high"}
    ids = list(table["tortilla:id"])
    assert ids == sorted(ids) and "ROI_00002" not in ids and "ROI_00003" not in ids  # 2000 / scribble
    assert list(splits["test"].rows) == [18, 19]


def test_official_split_uses_data_split_column(cloudsen12_taco):
    sizes = {s: len(CloudSEN12(cloudsen12_taco, s, split_mode="official")) for s in ("train", "val", "test")}
    assert sizes == {"train": 7, "val": 7, "test": 6}


def test_items_are_padded_real_patches(cloudsen12_taco):
    ds = CloudSEN12(cloudsen12_taco, "train")
    dn, labels = ds[0]
    assert dn.shape == (13, 512, 512) and dn.dtype == np.uint16
    assert labels.shape == (512, 512) and labels.dtype == np.uint8
    assert (dn[:, :, :3] == 0).all() and (dn[:, -3:, :] == 0).all()  # zeros on the left and bottom
    assert (dn[:, :509, 3:] > 0).all(axis=0).mean() > 0.99  # real data elsewhere
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert (labels[:, :3] == 0).all()
    # the pixels are those of the sample's own GeoTIFF inside the TACO
    row = int(ds.rows[0])
    with rasterio.open(ds.table.read(row).read(0)) as src:
        np.testing.assert_array_equal(src.read(), dn[:, :509, 3:])


def test_pad_to_512_refuses_larger_patches():
    with pytest.raises(InputError, match="larger than 512"):
        pad_to_512(np.zeros((13, 600, 600)))


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        CloudSEN12(tmp_path / "nope.taco")
    (tmp_path / "junk.taco").write_bytes(b"not a taco file at all" * 10)
    with pytest.raises(InputError, match="junk.taco.*not a TACO"):
        CloudSEN12(tmp_path / "junk.taco")


def test_label_values_outside_the_codes_are_refused(tmp_path):
    import pytortilla
    import tacotoolbox
    from factories import _write_tif
    from tacotoolbox.specification import Contact, Extent

    img = _write_tif(tmp_path / "img.tif", np.full((13, 509, 509), 900, np.uint16))
    lab = _write_tif(tmp_path / "lab.tif", np.full((509, 509), 7, np.uint8))
    inner = pytortilla.datamodel.Samples(
        samples=[
            pytortilla.datamodel.Sample(id="s2l1c", path=img, file_format="GTiff"),
            pytortilla.datamodel.Sample(id="target", path=lab, file_format="GTiff"),
        ]
    )
    t = pytortilla.create(inner, tmp_path / "s.tortilla", nworkers=1, quiet=True)
    top = pytortilla.datamodel.Samples(
        samples=[
            pytortilla.datamodel.Sample(
                id="ROI_bad", path=t, file_format="TORTILLA", data_split="train", real_proj_shape=509, label_type="high"
            )
        ]
    )
    col = tacotoolbox.datamodel.Collection(
        id="bad",
        dataset_version="0",
        description="bad labels",
        licenses=["cc-by-4.0"],
        extent=Extent(spatial=[[0.0, 0.0, 1.0, 1.0]], temporal=[["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z"]]),
        providers=[Contact(name="t")],
        task="semantic-segmentation",
    )
    path = tacotoolbox.create(col, top, tmp_path / "bad.taco", nworkers=1, quiet=True)
    with pytest.raises(InputError, match=r"'ROI_bad'.*label values \[7\]"):
        CloudSEN12(path, "test")[0]
