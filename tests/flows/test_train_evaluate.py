"""``cloudmask train`` (with a real SIGKILL and --resume) and ``cloudmask evaluate`` on real-format fixtures."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipeline.detect.weights import load_weights

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))
TINY = ["--model", "mscloudcam_tiny", "--model-kwargs", '{"img_size": 512}']


def train_cmd(taco, out, *extra):
    return [
        CLOUDMASK,
        "train",
        "--dataset",
        "cloudsen12",
        "--data",
        str(taco),
        "--out",
        str(out),
        *TINY,
        "--epochs",
        "2",
        "--batch",
        "2",
        "--lr",
        "1e-3",
        "--workers",
        "0",
        "--warmup-steps",
        "5",
        "--grad-clip",
        "1.0",
        *extra,
    ]


def state_epoch(out: Path) -> int:
    with safe_open(str(out / "state.safetensors"), "pt") as f:
        return json.loads(f.metadata()["cloudmask.train"])["epoch"]


def tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def uninterrupted(cloudsen12_taco, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "full"
    proc = subprocess.run(train_cmd(cloudsen12_taco, out), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_training_writes_weights_metrics_and_state(uninterrupted):
    out, stdout = uninterrupted
    assert "epoch 2/2" in stdout and "best epoch" in stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(r["train_loss"] > 0 and len(r["val_iou"]) == 4 for r in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    best = load_weights(out / "best.safetensors")
    prov = best.meta.provenance
    assert (
        prov["dataset"].startswith("CloudSEN12+") and prov["recipe"]["lr"] == 1e-3 and prov["recipe"]["batch_size"] == 2
    )
    assert prov["recipe"]["warmup_steps"] == 5 and prov["recipe"]["grad_clip"] == 1.0
    assert prov["metrics"]["val_miou"] == max(r["val_miou"] for r in lines)
    assert best.meta.tile_size == 512 and best.meta.bands[10] == "B10"
    assert state_epoch(out) == 2


def test_killed_mid_epoch_then_resumed_equals_uninterrupted(cloudsen12_taco, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(cloudsen12_taco, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:  # piped, the command prints a line per step: kill on epoch 2's first
        seen.append(line)
        if line.startswith("epoch 2/2 step 1/"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert state_epoch(out) == 1, "the kill must land mid-epoch 2"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    again = subprocess.run(train_cmd(cloudsen12_taco, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr  # no silent overwrite of a run

    resumed = subprocess.run(train_cmd(cloudsen12_taco, out, "--resume"), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 1/2" not in resumed.stdout and "epoch 2/2" in resumed.stdout
    full, _ = uninterrupted
    a, b = tensors(full / "last.safetensors"), tensors(out / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (out / "metrics.jsonl").read_text().count("\n") == 2


def test_fine_tuning_starts_from_the_given_weights(cloudsen12_taco, uninterrupted, tmp_path):
    """--init loads a weights file before the first step (a near-zero learning rate keeps it as it was, where a
    random start, two epochs at 1e-3 away from it, is not) and records its sha256; weights without B10 start an
    L1C model with B10's kernel at zero (recorded); a missing file is refused in one line."""
    from factories import derived_weights

    from pipeline.catalog.sensors import SENTINEL2_L1C, SENTINEL2_L2A

    full, _ = uninterrupted
    out = tmp_path / "ft"
    p = subprocess.run(
        train_cmd(cloudsen12_taco, out, "--init", str(full / "last.safetensors"), "--lr", "1e-12", "--epochs", "1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr
    start, tuned = tensors(full / "last.safetensors"), tensors(out / "last.safetensors")
    assert start.keys() == tuned.keys()
    params = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) > 100  # BatchNorm's running statistics move with any batch, whatever the learning rate
    moved = [k for k in params if not torch.allclose(start[k].float(), tuned[k].float(), atol=1e-6)]
    assert not moved, moved
    assert (
        load_weights(out / "last.safetensors").meta.provenance["init_sha256"]
        == load_weights(full / "last.safetensors").sha256
    )

    l2a = tmp_path / "l2a.safetensors"
    derived_weights(full / "last.safetensors", l2a, {b: b for b in SENTINEL2_L2A.bands}, "sentinel-2", "L2A")
    out = tmp_path / "bands"  # L2A weights start an L1C model: B10's input kernel at zero, the rest as in the file
    p = subprocess.run(
        train_cmd(cloudsen12_taco, out, "--init", str(l2a), "--lr", "1e-12", "--epochs", "1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0 and "lack B10; their input kernels start at zero" in p.stdout, p.stderr
    assert load_weights(out / "last.safetensors").meta.provenance["init_new_bands"] == ["B10"]
    start, tuned = tensors(l2a), tensors(out / "last.safetensors")
    (kernel,) = [k for k, v in tuned.items() if v.ndim > 1 and v.shape[1] == 13]
    b10 = SENTINEL2_L1C.bands.index("B10")
    assert tuned[kernel][:, b10].float().abs().max() < 1e-6
    assert torch.allclose(
        tuned[kernel][:, [i for i in range(13) if i != b10]].float(), start[kernel].float(), atol=1e-6
    )
    p = subprocess.run(
        train_cmd(cloudsen12_taco, tmp_path / "gone", "--init", str(tmp_path / "none.safetensors")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "none.safetensors" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_train_argument_errors(tmp_path, capsys):
    from types import SimpleNamespace

    from flows.cli import main

    def run(*args):  # in this process: each is refused before any training starts
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = main(["train", *args])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        finally:
            for s, handler in handlers.items():  # main's own, for a command's lifetime
                signal.signal(s, handler)
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    p = run("--out", str(tmp_path / "a"))
    assert p.returncode == 2 and "--dataset is required" in p.stderr
    p = run("--dataset", "cloudsen12", "--out", str(tmp_path / "b"))
    assert p.returncode == 2 and "--data is required" in p.stderr
    p = run("--dataset", "cloudsen12", "--data", str(tmp_path / "none.taco"), "--out", str(tmp_path / "c"))
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = run("--recipe", "starter", "--out", str(tmp_path / "d"), "--resume")
    assert p.returncode == 2 and "start without --resume" in p.stderr
    import torch

    from pipeline.detect.infer import cpu_has_native_bf16

    emulated = not torch.cuda.is_available() and not cpu_has_native_bf16()  # the recipe's bf16 only where it is fast
    assert ("training in fp32: this CPU has no native bf16" in p.stdout) == emulated
    p = run("--recipe", "starter", "--out", str(tmp_path / "d"), "--resume", "--bf16")  # asked for: kept
    assert p.returncode == 2 and "no native bf16" not in p.stdout
    p = run("--recipe", "starter", "--out", str(tmp_path / "e"), "--model-kwargs", "{bad")
    assert p.returncode == 2 and "--model-kwargs is not valid JSON" in p.stderr
    p = run("--recipe", "starter", "--out", str(tmp_path / "f"), "--brightness", "1.3,0.8")
    assert p.returncode == 2 and "brightness=(1.3, 0.8); expected (low, high)" in p.stderr
    p = run("--recipe", "starter", "--out", str(tmp_path / "g"), "--brightness", "1.3")
    assert p.returncode == 2 and "expected two gains LOW,HIGH" in p.stderr
    p = run("--dataset", "cloudsen12", "--data", "x.taco", "--out", str(tmp_path / "h"), "--brightness", "0.8,1.3")
    assert p.returncode == 2 and "--dataset starter only" in p.stderr
    p = run("--recipe", "starter", "--out", str(tmp_path / "i"), "--class-weights", "cube")
    assert p.returncode == 2 and "invalid choice: 'cube'" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "j"), "--shadows", "1.5")
    assert p.returncode == 2 and "shadows=1.5; expected the share of chips" in p.stderr
    p = run("--dataset", "cloudsen12", "--data", "x.taco", "--out", str(tmp_path / "k"), "--shadows", "0.5")
    assert p.returncode == 2 and "--dataset starter only" in p.stderr
    p = run("--recipe", "starter", "--out", str(tmp_path / "l"), "--real-l2a", "0.25")
    assert p.returncode == 2 and "--real-l2a mixes real L2A chips" in p.stderr and "--recipe starter)" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "m"), "--real-l2a", "1.5")
    assert p.returncode == 2 and "real_l2a=1.5; expected the share of chips" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "n"), "--translucent")
    assert p.returncode == 2 and "--translucent changes the real L2A land chips: it needs --real-l2a" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "o"), "--land-gain", "1,2")
    assert p.returncode == 2 and "--land-gain changes the real L2A land chips: it needs --real-l2a" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "p"), "--real-l2a", "0.5", "--land-gain", "2,1")
    assert p.returncode == 2 and "land_gain=(2.0, 1.0); expected (low, high) gains" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "q"), "--real-l2a", "0.5", "--land-gain", "2")
    assert p.returncode == 2 and "--land-gain '2': expected two gains LOW,HIGH, e.g. 1,2" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "q"), "--real-l2a", "0.5", "--land-gain", "1,x")
    assert p.returncode == 2 and "--land-gain '1,x' is not a comma-separated list" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "r"), "--snow", "0.5")
    assert p.returncode == 2 and "--snow changes the real L2A land chips: it needs --real-l2a" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "s"), "--real-l2a", "0.5", "--snow", "2")
    assert p.returncode == 2 and "snow=2.0; expected the share of real L2A land chips" in p.stderr
    for name, share in (("t", "1.5"), ("u", "-0.1"), ("v", "nan")):
        p = run("--recipe", "starter", "--out", str(tmp_path / name), "--overcast", share)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert f"overcast={float(share)}; expected the share of chips under a tile-filling cloud" in p.stderr
    p = run("--recipe", "starter-l2a", "--out", str(tmp_path / "w"), "--overcast", "lots")
    assert p.returncode == 2 and "argument --overcast: invalid float value: 'lots'" in p.stderr
    p = run("--dataset", "cloudsen12", "--data", "x.taco", "--out", str(tmp_path / "x"), "--overcast", "0.2")
    assert p.returncode == 2 and "--overcast change the starter's chips" in p.stderr and "starter only" in p.stderr
    assert not any((tmp_path / d).exists() for d in "jklmnopqrstuvwx")


def test_train_on_l8biome_with_ignore_index(l8biome_root, tmp_path):
    out = tmp_path / "l8"
    p = subprocess.run(
        [
            CLOUDMASK,
            "train",
            "--dataset",
            "l8biome",
            "--data",
            str(l8biome_root),
            "--out",
            str(out),
            *TINY,
            "--epochs",
            "1",
            "--batch",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr
    w = load_weights(out / "last.safetensors")
    assert w.meta.bands == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")
    assert (w.meta.sensor, w.meta.level) == ("landsat-oli-tirs", "L1") and w.meta.provenance["dataset"] == "L8Biome"
    # the training chips carry fill labelled 255: counted nowhere, the loss stays finite (without the ignore
    # index, cross-entropy refuses a target of 255 for 4 classes and the run fails)
    from pipeline.training.datasets.l8biome import train_data

    data = train_data(l8biome_root)
    assert data.ignore_index == 255
    assert any((data.train[i][1] == 255).any() for i in range(len(data.train)))
    import torch

    from pipeline.training.loss import deep_supervision_loss

    _, labels = data.train[next(i for i in range(len(data.train)) if (data.train[i][1] == 255).any())]
    y = torch.from_numpy(np.asarray(labels, np.int64))[None]
    with pytest.raises(IndexError):
        deep_supervision_loss(tuple(torch.zeros(1, 4, *y.shape[1:]) for _ in range(3)), y)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(history[-1]["train_loss"])


def test_evaluate_prints_the_paper_table(uninterrupted, cloudsen12_taco, tmp_path):
    out, _ = uninterrupted
    p = subprocess.run(
        [
            CLOUDMASK,
            "evaluate",
            "--weights",
            str(out / "best.safetensors"),
            "--dataset",
            "cloudsen12",
            "--data",
            str(cloudsen12_taco),
            "--paper",
            "--json",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert "Clear" in p.stdout and "mIoU" in p.stdout and "aAcc" in p.stdout
    assert "paper MSCloudCAM (cloudsen12-l1c)" in p.stdout and "75.52" in p.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    cm = s["confusion"]
    assert s["pixels"] == sum(map(sum, cm)) == 2 * 512 * 512  # the two test patches, every pixel labelled
    tp = [cm[i][i] for i in range(4)]
    assert s["aacc"] == pytest.approx(100 * sum(tp) / s["pixels"], abs=0.01)


def test_evaluate_starter_with_teachers_and_brightness(test_weights_file, tmp_path):
    """The held-out scene scored against the teachers' labels and compared with each teacher; with --brightness,
    scaled and its cloud labels re-split by the scaled blue band: brighter, more of the labelled cloud is thick and
    less thin, the clear and shadow labels stay; other datasets refused."""

    def evaluate(*args):
        p = subprocess.run(
            [
                CLOUDMASK,
                "evaluate",
                "--weights",
                str(test_weights_file),
                "--dataset",
                "starter",
                *args,
                "--json",
                str(tmp_path / "b.json"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout, json.loads((tmp_path / "b.json").read_text())

    stdout, got = evaluate("--split", "test", "--teachers")
    assert "agreement with s2cloudless" in stdout and "agreement with ukis-csmask" in stdout
    t = got["teachers"]
    assert t["ukis-csmask"]["classes"] == ["clear", "cloud", "shadow"] and len(t["s2cloudless"]["iou"]) == 2
    assert 0 <= t["s2cloudless"]["agreement"] <= 100
    plain, none = np.asarray(got["confusion"]).sum(axis=1), got["brightness"]  # labelled pixels per class
    _, got = evaluate("--brightness", "1.4")
    bright, gain = np.asarray(got["confusion"]).sum(axis=1), got["brightness"]
    assert none is None and gain == 1.4
    assert bright[1] > plain[1] and bright[2] < plain[2] and bright[1] + bright[2] == plain[1] + plain[2]
    assert bright[0] == plain[0] and bright[3] == plain[3]
    p = subprocess.run(
        [CLOUDMASK, "evaluate", "--dataset", "bigearthnet", "--brightness", "1.4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "for --dataset starter only" in p.stderr


def test_evaluate_refuses_weights_for_other_bands(test_weights_file, l8biome_root):
    p = subprocess.run(
        [
            CLOUDMASK,
            "evaluate",
            "--weights",
            str(test_weights_file),
            "--dataset",
            "l8biome",
            "--data",
            str(l8biome_root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "11 bands but the weights take 13" in p.stderr


def test_evaluate_l2a_weights_per_level(test_weights_file, tmp_path):
    """L2A weights (12 bands) scored on real L2A pixels (bigearthnet-common's patches, ukis-csmask's L2A model as
    the only teacher that runs there), on the held-out L1C scene as simulated L2A, and on that scene as L1C
    with B10 left out; L1C weights on L2A are refused in one line naming the missing band."""
    from factories import derived_weights

    from pipeline.catalog.sensors import SENTINEL2_L2A

    l2a = tmp_path / "l2a.safetensors"
    derived_weights(test_weights_file, l2a, {b: b for b in SENTINEL2_L2A.bands}, "sentinel-2", "L2A")

    def evaluate(*args):
        return subprocess.run(
            [CLOUDMASK, "evaluate", *args, "--json", str(tmp_path / "e.json")],
            capture_output=True,
            text=True,
            timeout=600,
        )

    p = evaluate("--weights", str(l2a), "--dataset", "bigearthnet", "--teachers")
    assert p.returncode == 0, p.stderr
    assert "agreement with ukis-csmask (L2A model)" in p.stdout and "s2cloudless" not in p.stdout
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["teachers"]["ukis-csmask"]["pixels"] == 6 * 120 * 120 and got["dataset"] == "bigearthnet"
    assert 0 < got["pixels"] <= 6 * 120 * 120  # ukis' confident pixels

    p = evaluate("--weights", str(l2a), "--dataset", "reben", "--teachers")  # real L2A with real clouds
    assert p.returncode == 0, p.stderr
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["teachers"]["ukis-csmask"]["pixels"] == 10 * 120 * 120 and got["dataset"] == "reben"
    assert sum(got["confusion"][1]) + sum(got["confusion"][2]) > 5000  # the flagged patches' clouds, by ukis

    p = evaluate("--weights", str(l2a), "--dataset", "starter", "--level", "l2a", "--teachers")
    assert p.returncode == 0, p.stderr
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["dataset"] == "starter-l2a" and list(got["teachers"]) == ["ukis-csmask"]
    assert got["teachers"]["ukis-csmask"]["model"] == "L2A"

    p = evaluate("--weights", str(l2a), "--dataset", "starter", "--teachers")
    assert p.returncode == 0, p.stderr
    assert set(json.loads((tmp_path / "e.json").read_text())["teachers"]) == {"s2cloudless", "ukis-csmask"}

    p = evaluate("--weights", str(test_weights_file), "--dataset", "bigearthnet")
    assert p.returncode == 2 and "have no ['B10']" in p.stderr and len(p.stderr.strip().splitlines()) == 1
