"""The safetensors weights format: round trip, URLs, refusal of pickles, corrupt files and mismatches."""

import functools
import hashlib
import http.server
import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.catalog.sensors import CLASS_NAMES, SENTINEL2_L1C
from pipeline.detect.model import create_model
from pipeline.detect.weights import WeightsMeta, blend_weights, load_weights, save_weights
from pipeline.errors import WeightsChangedError, WeightsError, WeightsMismatchError


def test_round_trip_keeps_tensors_metadata_and_sha(random_weights_file):
    w = load_weights(random_weights_file)
    assert w.sha256 == hashlib.sha256(random_weights_file.read_bytes()).hexdigest()
    assert w.meta.model == "mscloudcam_tiny"
    assert w.meta.bands == SENTINEL2_L1C.bands
    assert w.meta.classes == CLASS_NAMES and w.meta.class_codes == (0, 1, 2, 3)
    assert w.meta.normalisation == {"kind": "scale", "divisor": 3000.0}
    assert w.meta.tile_size == 64 and w.meta.provenance["recipe"].startswith("random init")
    torch.manual_seed(0)
    reference = create_model("mscloudcam_tiny").state_dict()
    model = w.build_model()
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_fp16_file_is_half_the_size_and_predicts_the_same(tmp_path, test_weights_file):
    """The test model (classes vary) saved in fp32 and fp16 gives the same classes on a real cloudy scene."""
    from pipeline.training.datasets.scenes import sen12mscr_patch

    source = load_weights(test_weights_file)
    model = source.build_model()
    save_weights(tmp_path / "a.safetensors", model, source.meta)
    save_weights(tmp_path / "h.safetensors", model, source.meta, dtype=torch.float16)
    full, half = (tmp_path / "a.safetensors").stat().st_size, (tmp_path / "h.safetensors").stat().st_size
    assert half < 0.6 * full
    dn = sen12mscr_patch().astype(np.float32) / 3000  # (13, 256, 256) -> 16 tiles of 64 px
    x = torch.from_numpy(dn.reshape(13, 4, 64, 4, 64).transpose(1, 3, 0, 2, 4).reshape(16, 13, 64, 64).copy())
    with torch.inference_mode():
        ref = load_weights(tmp_path / "a.safetensors").build_model()(x).argmax(1)
        got = load_weights(tmp_path / "h.safetensors").build_model()(x).argmax(1)
    assert len(torch.unique(ref)) >= 3
    assert (ref == got).float().mean() > 0.99


def test_fp16_keeps_tensors_that_would_overflow_in_fp32(tmp_path):
    model = create_model("mscloudcam_tiny").eval()
    model.psp.fuse[1].running_var.fill_(103_734.5)  # seen in a real run: above float16's 65504
    meta = WeightsMeta(
        model="mscloudcam_tiny", bands=SENTINEL2_L1C.bands, classes=CLASS_NAMES, class_codes=(0, 1, 2, 3), tile_size=64
    )
    save_weights(tmp_path / "h.safetensors", model, meta, dtype=torch.float16)
    state = load_weights(tmp_path / "h.safetensors").state
    assert state["psp.fuse.1.running_var"].dtype == torch.float32
    assert torch.isfinite(state["psp.fuse.1.running_var"]).all()
    assert state["decoder.head.weight"].dtype == torch.float16


def test_load_from_file_url(test_weights_file):
    w = load_weights(test_weights_file.as_uri())
    assert w.meta.model == "mscloudcam_tiny"


def test_load_from_http_url_through_fsspec_cache(test_weights_file, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(test_weights_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{test_weights_file.name}"
        w = load_weights(url, cache_dir=tmp_path / "cache", expected_sha256=load_weights(test_weights_file).sha256)
        assert w.source == url
        assert any((tmp_path / "cache").iterdir())
        with pytest.raises(WeightsError, match="could not fetch weights"):
            load_weights(url + ".missing", cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()


def test_pickle_checkpoints_are_refused_with_conversion_advice(tmp_path):
    state = create_model("mscloudcam_tiny").state_dict()
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(WeightsError, match="never unpickles.*cloudmask weights convert"):
        load_weights(tmp_path / "model.pth")
    # renaming a pickle does not sneak it past the check
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.pth").read_bytes())
    with pytest.raises(WeightsError, match="pickle"):
        load_weights(tmp_path / "model.safetensors")


def test_corrupt_and_truncated_files_are_refused(test_weights_file, tmp_path):
    data = test_weights_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weights(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(test_weights_file, expected_sha256="0" * 64)


def test_file_without_contract_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(WeightsError, match="no 'cloudmask' metadata"):
        load_weights(tmp_path / "bare.safetensors")


def test_band_and_class_mismatch_name_both_lists(test_weights_file):
    l8 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"]
    with pytest.raises(WeightsMismatchError) as err:
        load_weights(test_weights_file, bands=l8)
    msg = str(err.value)
    assert "'B8A'" in msg and "'B9'" in msg and "bands" in msg
    with pytest.raises(WeightsMismatchError, match=r"classes.*'cloud_shadow'.*\['clear', 'cloud'\]"):
        load_weights(test_weights_file, classes=["clear", "cloud"])
    load_weights(test_weights_file, bands=list(SENTINEL2_L1C.bands), classes=list(CLASS_NAMES))


def test_tensors_that_do_not_fit_the_model_are_refused(tmp_path):
    meta = WeightsMeta(
        model="mscloudcam_tiny",
        bands=SENTINEL2_L1C.bands[:3],
        classes=CLASS_NAMES,
        class_codes=(0, 1, 2, 3),
        tile_size=64,
    )
    save_weights(tmp_path / "w.safetensors", create_model("mscloudcam_tiny"), meta)  # 13-band tensors, 3 bands
    with pytest.raises(WeightsError, match=r"(?s)do not fit model .*size mismatch"):
        load_weights(tmp_path / "w.safetensors").build_model()


def test_metadata_is_plain_json_in_the_safetensors_header(test_weights_file):
    from safetensors import safe_open

    with safe_open(str(test_weights_file), "pt") as f:
        meta = json.loads(f.metadata()["cloudmask"])
    assert meta["bands"][10] == "B10" and meta["tile_size"] == 64


def test_fine_tuning_starts_from_a_file_and_keeps_the_kernels_of_its_own_bands(test_weights_file):
    """``init_from`` (``cloudmask train --init``): the 13-band L1C test weights start a 12-band L2A model with
    every tensor as in the file and the input kernels of the 12 bands (B10's left out, the others in the model's
    band order); a band the file lacks starts at zero (the model computes what the file's did); tensors of another
    shape are refused."""
    from pipeline.errors import ConfigError
    from pipeline.training.datasets.boa import BOA_MAP
    from pipeline.training.trainer import init_from

    src = load_weights(test_weights_file)
    bands = tuple(reversed(BOA_MAP))  # another order than the file's, so a mere truncation would not pass
    model = create_model(src.meta.model, in_chans=len(bands), num_classes=4, **src.meta.model_kwargs)
    assert init_from(model, str(test_weights_file), bands) == (src.sha256, ())
    got = model.state_dict()
    kernels = [k for k, v in src.state.items() if v.ndim > 1 and v.shape[1] == 13]
    assert len(kernels) == 1
    for k, v in src.state.items():
        want = v[:, [SENTINEL2_L1C.bands.index(b) for b in bands]] if k in kernels else v
        assert torch.equal(got[k], want.float()), k

    bands = ("B13", *SENTINEL2_L1C.bands)  # a band the file lacks, first, so that a mere append would not pass
    model = create_model(src.meta.model, in_chans=14, num_classes=4, **src.meta.model_kwargs)
    assert init_from(model, str(test_weights_file), bands) == (src.sha256, ("B13",))
    (kernel,) = kernels
    got = model.state_dict()[kernel]
    assert (got[:, 0] == 0).all() and torch.equal(got[:, 1:], src.state[kernel].float())
    x = torch.rand(1, 14, 64, 64)
    y = x.clone()
    y[:, 0] = 5.0  # the new band changes nothing at the start
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), model(y), atol=1e-5)

    model = create_model(
        src.meta.model, in_chans=13, num_classes=4, **{**src.meta.model_kwargs, "context_channels": 32}
    )
    with pytest.raises(ConfigError, match="does not fit the model being trained"):
        init_from(model, str(test_weights_file), SENTINEL2_L1C.bands)


def test_blend_mixes_each_tensor_and_records_both_files(tmp_path, test_weights_file):
    """WiSE-FT interpolation of two different files: each floating tensor is (1 - alpha) a + alpha b, exact at the ends."""
    a = load_weights(test_weights_file)
    torch.manual_seed(0)
    moved = {k: v + torch.randn_like(v) if v.is_floating_point() else v for k, v in a.state.items()}  # "fine-tuned"
    save_weights(tmp_path / "b.safetensors", moved, replace(a.meta, provenance={"recipe": "moved"}))
    b = load_weights(tmp_path / "b.safetensors")
    floating = [k for k, v in a.state.items() if v.is_floating_point()]
    assert all(not torch.equal(a.state[k], b.state[k]) for k in floating)
    state, meta = blend_weights(a, b, 0.25)
    for key in floating:
        torch.testing.assert_close(state[key], 0.75 * a.state[key].float() + 0.25 * b.state[key].float())
    assert meta.provenance == dict(b.meta.provenance, blend={"alpha": 0.25, "a_sha256": a.sha256, "b_sha256": b.sha256})
    assert meta.bands == b.meta.bands and meta.tile_size == b.meta.tile_size
    for alpha, ends in ((0.0, a), (1.0, b)):
        state, _ = blend_weights(a, b, alpha)
        assert all(torch.equal(state[k], ends.state[k].float()) for k in floating), alpha


def test_a_blend_of_blends_records_and_shows_each_level(tmp_path, test_weights_file):
    """The outer blend keeps the inner one's record, and ``weights info``'s recipe line names both levels, then the
    training command that made the innermost second file (not as if the inner blend were that command's output)."""
    from flows.weights import recipe_line

    a = load_weights(test_weights_file)
    trained = dict(a.meta.provenance, command="cloudmask train --recipe starter-l2a --epochs 3")
    save_weights(tmp_path / "b.safetensors", a.state, replace(a.meta, provenance=trained))
    b = load_weights(tmp_path / "b.safetensors")
    save_weights(tmp_path / "inner.safetensors", *blend_weights(a, b, 0.8))
    inner = load_weights(tmp_path / "inner.safetensors")
    save_weights(tmp_path / "c.safetensors", a.state, replace(a.meta, provenance={"recipe": "another"}))
    c = load_weights(tmp_path / "c.safetensors")  # the outer blend's first file, not the inner one's
    assert len({a.sha256, b.sha256, c.sha256, inner.sha256}) == 4
    _, meta = blend_weights(c, inner, 0.84)
    assert meta.provenance["blend"] == {
        "alpha": 0.84,
        "a_sha256": c.sha256,
        "b_sha256": inner.sha256,
        "b_blend": {"alpha": 0.8, "a_sha256": a.sha256, "b_sha256": b.sha256},
    }
    line = recipe_line(meta.provenance)
    assert line.startswith(
        f"blend 0.16 × {c.sha256[:8]}… + 0.84 × {inner.sha256[:8]}… (cloudmask weights blend --alpha 0.84); "
        f"blend 0.2 × {a.sha256[:8]}… + 0.8 × {b.sha256[:8]}… (cloudmask weights blend --alpha 0.8); "
        f"{b.sha256[:8]}… made by cloudmask train --recipe starter-l2a --epochs 3"
    ), line


def test_blend_refuses_other_contracts_and_alphas_outside_0_1(tmp_path, test_weights_file):
    a = load_weights(test_weights_file)
    with pytest.raises(WeightsError, match=r"alpha=1.5; expected the share of the second file, 0 to 1"):
        blend_weights(a, a, 1.5)
    keep = [i for i, b in enumerate(a.meta.bands) if b != "B10"]  # an L2A-like file: B10's input weights dropped
    embed = "backbone.body.patch_embed.proj.weight"
    save_weights(
        tmp_path / "l2a.safetensors",
        dict(a.state, **{embed: a.state[embed][:, keep].contiguous()}),
        replace(a.meta, bands=tuple(a.meta.bands[i] for i in keep)),
    )
    with pytest.raises(WeightsMismatchError, match=r"differ in bands .*'B10'"):
        blend_weights(a, load_weights(tmp_path / "l2a.safetensors"), 0.5)
    shaped = dict(a.state, **{"decoder.head.weight": torch.zeros(1)})
    save_weights(tmp_path / "shape.safetensors", shaped, a.meta)
    with pytest.raises(WeightsError, match=r"decoder.head.weight: declared \(4, 8, 1, 1\), in the file \(1,\)"):
        load_weights(tmp_path / "shape.safetensors")  # such a file does not load; blending in memory refuses it too
    with pytest.raises(WeightsMismatchError, match=r"tensor decoder.head.weight has shape"):
        blend_weights(a, replace(a, tensors=shaped), 0.5)


def test_a_passed_architecture_check_is_remembered_per_file_and_contract(tmp_path, test_weights_file):
    """Loading weights whose model must be rebuilt to be checked imports timm (seconds per client): once a file
    passed, later loads skip the build; a file whose contract differs is checked (and refused) all the same."""
    import subprocess
    import sys

    probe = (
        "import sys; from pipeline.detect.weights import load_weights; load_weights(sys.argv[1]); "
        "print('timm' in sys.modules)"
    )
    env = {**__import__("os").environ, "CLOUDMASK_CACHE": str(tmp_path / "cache")}

    def built(path) -> bool:
        p = subprocess.run([sys.executable, "-c", probe, str(path)], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip() == "True"

    assert built(test_weights_file)  # checked: the model was built on the meta device
    assert len(list((tmp_path / "cache" / "checked-architectures").iterdir())) == 1
    assert not built(test_weights_file)  # remembered
    honest = load_weights(test_weights_file)
    edited = tmp_path / "edited.safetensors"
    kwargs = dict(honest.meta.model_kwargs, context_channels=32)  # tensors of 64 channels, declaring 32
    save_weights(edited, honest.state, replace(honest.meta, model_kwargs=kwargs))
    p = subprocess.run([sys.executable, "-c", probe, str(edited)], env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "describe another model than its tensors" in p.stderr
    assert len(list((tmp_path / "cache" / "checked-architectures").iterdir())) == 1  # a refusal is not remembered
    # the honest file's contract over other tensors (a model of 32 context channels): checked again, and refused
    other = create_model(honest.meta.model, in_chans=13, num_classes=4, **{**kwargs, "norm": "group"}).state_dict()
    swapped = tmp_path / "swapped.safetensors"
    save_weights(swapped, other, honest.meta)
    p = subprocess.run([sys.executable, "-c", probe, str(swapped)], env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "describe another model than its tensors" in p.stderr


def test_a_files_contract_is_read_without_its_tensors_and_a_later_change_is_refused(tmp_path, test_weights_file):
    """What a job's client does with a weights file (its record, contract and the job's plan modules) imports no torch
    and reads no tensor; the tensors, read where the model is built, must still be the content the record was made of."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; import flows.cli, flows.run, pipeline.job.execute, pipeline.store.integrity\n"
        "from pipeline.detect.detectors import detector_weights\n"
        f"w = detector_weights({str(test_weights_file)!r}); w.check(bands=w.meta.bands)\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules), len(w.shapes), 'state' in vars(w))"
    )
    env = dict(os.environ, CLOUDMASK_CACHE=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)]
    runs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env))
    assert all(p.returncode == 0 for p in runs), runs[-1].stderr[-2000:]
    first, again = (p.stdout.split() for p in runs)
    # the first load builds the tiny model (on the meta device) to check its arguments; once remembered, none of it
    assert first[:2] == ["['timm',", "'torch']"] and again[0] == "[]", (first, again)
    assert int(again[-2]) > 100 and again[-1] == "False"  # every tensor's shape known, none read

    copy = tmp_path / "w.safetensors"
    copy.write_bytes(test_weights_file.read_bytes())
    w = load_weights(copy)
    other = load_weights(test_weights_file)
    assert w.state.keys() == other.state.keys() and all(torch.equal(w.state[k], other.state[k]) for k in w.state)
    changed = load_weights(copy)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # a tensor's last byte: the header still reads
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsChangedError, match="changed since it was loaded"):
        changed.build_model()
