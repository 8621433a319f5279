"""The ``cloudmask`` console script: help, benchmark figures, weights tools and error messages."""

import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from pipeline.detect.model import create_model
from pipeline.detect.weights import load_weights

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset

CLOUDMASK = str(Path(sys.executable).with_name("cloudmask"))


def run(*args, check=True):
    proc = subprocess.run([CLOUDMASK, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli(capsys):
    """``cloudmask`` in this process (``flows.cli.main``, its signal handlers put back after): for argument errors,
    which need no fresh process. Returns ``(returncode, stdout, stderr)`` as ``run`` does."""
    from flows.cli import main

    def call(*args):
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        capsys.readouterr()
        try:
            code = main(list(args))
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


def test_help_lists_the_subcommands():
    out = run("--help").stdout
    for word in ("benchmark", "weights"):
        assert word in out
    assert "benchmark model" in run("benchmark", "model", "--help").stdout  # examples in the epilog


def test_benchmark_model_prints_and_writes_figures(tmp_path):
    import torch

    from pipeline.detect.infer import cpu_has_native_bf16

    # default precisions: bf16 only where it runs in hardware (emulated on a CPU without it, one 512 px batch
    # took over 10 minutes)
    native = torch.cuda.is_available() or cpu_has_native_bf16()
    precisions = ["fp32", "bf16"] if native else ["fp32"]
    out = run(
        "benchmark",
        "model",
        "--model",
        "mscloudcam_tiny",
        "--batch-sizes",
        "1,2",
        "--repeats",
        "1",
        "--json",
        str(tmp_path / "b.json"),
    ).stdout
    assert ("this CPU has no native bf16" in out) != native
    assert "406,327 parameters" in out and "GMAC" in out and "ms/tile" in out and "Mpx/s" in out
    figures = json.loads((tmp_path / "b.json").read_text())
    assert [(r["batch"], r["precision"]) for r in figures["rows"]] == [(b, p) for b in (1, 2) for p in precisions]
    assert all(r["ms_per_tile"] > 0 and r["mpx_per_s"] > 0 for r in figures["rows"])
    assert figures["params"] == 406_327 and figures["device"] == "cpu"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-sizes", "a,b"], "--batch-sizes 'a,b' is not a comma-separated list"),
        (["--precisions", "fp8"], "precision='fp8'"),
        (["--model", "unet"], "unknown model 'unet'"),
        (["--repeats", "0"], "--repeats 0 must be >= 1"),
        (["--batch-sizes", "0"], "every batch size must be at least 1"),
    ],
)
def test_benchmark_bad_arguments_say_what_to_fix(args, message):
    proc = (
        run("benchmark", "model", "--model", "mscloudcam_tiny", *args, check=False)
        if "--model" not in args
        else run("benchmark", "model", *args, check=False)
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_benchmark_on_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run("benchmark", "model", "--model", "mscloudcam_tiny", "--device", "cuda", check=False)
    assert proc.returncode == 2 and "torch sees no CUDA GPU" in proc.stderr


def test_weights_info(test_weights_file):
    out = run("weights", "info", str(test_weights_file)).stdout
    assert "mscloudcam_tiny" in out and "B8A" in out and "DN / 3000" in out and "3=cloud_shadow" in out
    assert "figures        none" in out  # no model card names the test model's sha256
    meta = json.loads(run("weights", "info", str(test_weights_file), "--json").stdout)
    assert meta["sha256"] == load_weights(test_weights_file).sha256 and meta["card"] is None


def test_weights_info_shows_what_a_user_needs_and_the_cards_figures(cli, monkeypatch):
    """The shipped starters: contract, sha256, the recipe without the machine's paths, and their model card's figures
    with each table's command; not the run's folders or its last epoch's validation scores."""
    from pipeline.detect.cards import read_cards

    monkeypatch.delenv("CLOUDMASK_WEIGHTS", raising=False)
    root = Path(__file__).resolve().parents[2]
    l1c, l2a = read_cards(root / "weights" / "README.md")
    figures = {(row, column): value for row, column, value in l1c.tables[0].figures()}
    out = cli("weights", "info").stdout  # the L1C starter
    for text in (
        "mscloudcam {'norm': 'group'}",
        "sentinel-2 L1C",
        "B8A, B09, B10",
        "DN / 3000",
        "3=cloud_shadow",
        "tile size      256 px",
        l1c.sha256,
        "--recipe starter",
        "--init ",
        "--shadows 1.0",
        f"$ {l1c.tables[0].command}",
        f"Thick {figures['teacher labels', 'Thick']:.2f}",
        f"agreement {figures['s2cloudless', 'agreement (%)']:.2f} %",
    ):
        assert text in out, text
    assert "runs/" not in out and "val_miou" not in out and "val_iou" not in out
    info = json.loads(cli("weights", "info", str(root / "weights" / l2a.file), "--json").stdout)
    assert info["level"] == "L2A" and info["also_levels"] == ["L1C"] and "B10" not in info["bands"]
    assert "runs/" not in info["recipe"] and info["recipe"].startswith("blend 0.16 × 73fb3877… + 0.84 × 9a2dbbe7…")
    assert info["card"]["file"] == l2a.file
    assert [t["command"] for t in info["card"]["tables"]] == [t.command for t in l2a.tables]
    reben = next(t for t in info["card"]["tables"] if "reben" in t["command"])
    assert reben["rows"][0] == {
        "row": "teacher labels",
        "figures": {
            "pixels": 142202,
            "clear": 91.72,
            "thick": 68.87,
            "thin": 33.41,
            "shadow": 27.16,
            "miou": 55.29,
            "agreement": 90.43,
        },
    }


def test_weights_convert_a_trusted_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("mscloudcam_tiny")
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "m.pth"
    )
    out = tmp_path / "m.safetensors"
    run(
        "weights",
        "convert",
        str(tmp_path / "m.pth"),
        str(out),
        "--model",
        "mscloudcam_tiny",
        "--tile-size",
        "64",
        "--fp16",
        "--provenance",
        '{"data": "test"}',
    )
    w = load_weights(out)
    assert w.meta.provenance == {"data": "test"} and w.meta.tile_size == 64
    torch.testing.assert_close(
        w.build_model().state_dict()["decoder.head.weight"],
        model.state_dict()["decoder.head.weight"],
        atol=1e-3,
        rtol=1e-3,
    )
    bad = run(
        "weights",
        "convert",
        str(tmp_path / "m.pth"),
        str(tmp_path / "x.safetensors"),
        "--provenance",
        "{oops",
        check=False,
    )
    assert bad.returncode == 2 and "--provenance is not valid JSON" in bad.stderr
    wrong = run("weights", "convert", str(tmp_path / "m.pth"), str(tmp_path / "y.safetensors"), check=False)
    assert wrong.returncode == 2 and "do not fit model 'mscloudcam'" in wrong.stderr
    assert not (tmp_path / "y.safetensors").exists()  # nothing half-usable left behind


def test_weights_blend(tmp_path, test_weights_file):

    from pipeline.detect.weights import save_weights

    a = load_weights(test_weights_file)
    moved = tmp_path / "moved.safetensors"  # the test model with every value moved: another file, one contract
    save_weights(moved, {k: v * 0.5 + 0.01 if v.is_floating_point() else v for k, v in a.state.items()}, a.meta)
    out = tmp_path / "blend.safetensors"
    said = run("weights", "blend", str(moved), str(test_weights_file), str(out), "--alpha", "0.4", "--fp16")
    assert "sha256" in said.stdout and "0.4 x" in said.stdout
    a, b, w = load_weights(moved), a, load_weights(out)
    assert w.meta.provenance["blend"] == {"alpha": 0.4, "a_sha256": a.sha256, "b_sha256": b.sha256}
    key = "decoder.head.weight"
    torch.testing.assert_close(
        w.state[key].float(), 0.6 * a.state[key].float() + 0.4 * b.state[key].float(), atol=2e-3, rtol=2e-3
    )
    before = out.read_bytes()
    again = run("weights", "blend", str(moved), str(test_weights_file), str(out), "--alpha", "0.5", check=False)
    assert again.returncode == 2 and "exists" in again.stderr and out.read_bytes() == before
    wrong = run(
        "weights",
        "blend",
        str(moved),
        str(test_weights_file),
        str(tmp_path / "x.safetensors"),
        "--alpha",
        "40",
        check=False,
    )
    assert wrong.returncode == 2 and "--alpha 40.0; expected the share of B, 0 to 1" in wrong.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_run_without_weights_fails_before_starting_a_cluster(tmp_path):
    proc = run(
        "run",
        "--stac-url",
        "http://127.0.0.1:9",
        "--collection",
        "c",
        "--out",
        str(tmp_path / "o.zarr"),
        "--weights",
        str(tmp_path / "none.safetensors"),
        check=False,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert "Dask dashboard" not in proc.stdout and not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("chunk", ["0", "-5"])
def test_run_with_a_block_side_under_one_pixel_fails_before_the_search(tmp_path, chunk, cli):
    """Refused before the STAC API is asked (it is not there: that error would come otherwise) and before any store."""
    proc = cli(
        "run",
        "--stac-url",
        "http://127.0.0.1:9",
        "--collection",
        "c",
        "--out",
        str(tmp_path / "o.zarr"),
        "--chunk",
        chunk,
    )
    assert proc.returncode == 2 and f"chunk={chunk} must be at least 1" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    "text,message",
    [
        ("stac_url: [x\n", "is not valid YAML (line 2, column 1: expected ',' or ']'"),
        ("stac_url: x\n  out: : y\n", "is not valid YAML (line 2, column 6: mapping values are not allowed here)"),
        ("- stac_url\n- out\n", "holds a list; expected a mapping of keys to values"),
        ("\udcff", "is not valid YAML ('utf-8' codec can't decode byte 0xff"),
    ],
)
@pytest.mark.parametrize("command", ["job", "cluster"])
def test_a_settings_file_that_is_not_a_yaml_mapping_is_named_with_what_is_wrong(tmp_path, text, message, command, cli):
    """A job file (``--config``) or a cluster recipe that does not parse, or holds no mapping: one line naming the
    file and the place, no traceback, nothing started."""
    path = tmp_path / "settings.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    args = (
        ["run", "--config", str(path)]
        if command == "job"
        else [
            "run",
            "--stac-url",
            "http://127.0.0.1:9",
            "--collection",
            "c",
            "--out",
            str(tmp_path / "o.zarr"),
            "--cluster",
            str(path),
        ]
    )
    proc = cli(*args)
    what = "job file" if command == "job" else "cluster recipe"
    assert proc.returncode == 2 and f"{what} '{path}' {message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.zarr").exists()  # main prints no traceback: it raises


@pytest.mark.parametrize(
    "line,message",
    [
        ("chunk: abc", "chunk: 'abc'; expected a whole number, e.g. chunk: 4096"),
        ("chunk: 512.5", "chunk: 512.5; expected a whole number"),
        ("workers: two", "workers: 'two'; expected a whole number"),
        ("max_cloud: lots", "max_cloud: 'lots'; expected a number, e.g. max_cloud: 30"),
        ("model: unet", "model: 'unet'; expected one of mscloudcam, s2cloudless, ukis-csmask"),
        ("intersects: [1, 2]", "intersects: [1, 2]; expected a mapping"),
        ("strict: maybe", "strict: 'maybe'; expected true or false, e.g. strict: true"),
        (
            "no_overcast_check: maybe",
            "no_overcast_check: 'maybe'; expected true or false, e.g. no_overcast_check: true",
        ),
        ("bbox: [a, 1, 2, 3]", "bbox: ['a', 1, 2, 3]; expected four numbers"),
        ("collection: [a, b]", "collection: ['a', 'b']; expected text"),
    ],
)
def test_a_job_file_value_of_the_wrong_kind_is_named(tmp_path, cli, line, message):
    """Each field is checked for what it holds (YAML gives numbers, true/false, lists and dates, not only text):
    one line naming the file, key and value, before the search (the STAC API is not there)."""
    path = tmp_path / "job.yaml"
    path.write_text(f"stac_url: http://127.0.0.1:9\ncollection: c\nout: {tmp_path / 'o.zarr'}\n{line}\n")
    proc = cli("run", "--config", str(path))
    assert proc.returncode == 2 and f"{path}: {message}" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_the_command_line_and_the_job_file_come_from_the_specs_fields(tmp_path):
    """One description: every field of the specs that users set is an option of `cloudmask run` (a mapping only in
    the job file) and a job-file key, there are no others, and a job file giving every key reaches each field."""
    import argparse

    from flows.cli import build_parser
    from flows.settings import SPECS, Launch, job_spec, launch, resolve
    from pipeline.config import InferSpec, JobSpec, SearchSpec, settings_of

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {a.dest for a in sub.choices["run"]._actions if a.option_strings} - {"help", "config"}
    described = {name: (spec, f, how) for spec in SPECS for name, f, how in settings_of(spec)}
    assert options == {n for n, (_, _, how) in described.items() if how.kind != "mapping"}
    # a job file with a value for every key, other than each default; the spec holds each one
    values = {
        "stac_url": "http://127.0.0.1:9",
        "collection": "c",
        "out": str(tmp_path / "o.zarr"),
        "bbox": [1, 2, 3, 4],
        "intersects": None,
        "datetime": "2024-01-01/2024-02-01",
        "max_cloud": 30.0,
        "limit": 7,
        "tile": 128,
        "overlap": 16,
        "batch_size": 3,
        "device": "cpu",
        "precision": "fp32",
        "threads": 2,
        "no_overcast_check": True,
        "profile": "s2-l1c-demo",
        "model": "mscloudcam",
        "weights": "w.safetensors",
        "chunk": 1024,
        "in_flight": 5,
        "strict": True,
        "probabilities": True,
        "verify": True,
        "max_grid": 20000,
        "allowed_hrefs": ["s3://a/*"],
        "scheduler": "tcp://127.0.0.1:1",
        "cluster": "slurm",
        "cluster_options": {"cores": 8},
        "workers": 3,
    }
    assert set(values) == set(described)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(values))
    s = resolve(argparse.Namespace(config=str(path)))
    spec, where = job_spec(s), launch(s)
    objects = {SearchSpec: spec.search, InferSpec: spec.infer, JobSpec: spec, Launch: where}
    held = {name: getattr(objects[cls], f.name) for name, (cls, f, _) in described.items()}
    held["bbox"], held["allowed_hrefs"] = list(held["bbox"]), list(held["allowed_hrefs"])
    assert held == values
    for name, (cls, f, _) in described.items():  # and each value differs from the field's default
        if name not in ("model", "intersects"):  # weights need mscloudcam; intersects excludes bbox
            assert values[name] != f.default, name
    # the command line wins over the job file, field by field
    s = resolve(argparse.Namespace(config=str(path), chunk=2048, precision=None))
    assert job_spec(s).chunk == 2048 and job_spec(s).infer.precision == "fp32"


def test_a_peer_is_a_model_setting_not_a_weights_path(tmp_path, cli):
    """`--model ukis-csmask` picks the peer from the detector table; naming a peer as weights is a file that does not
    exist, and a peer with --weights is refused, each before any search."""
    from pipeline.config import JobSpec, SearchSpec
    from pipeline.errors import ConfigError
    from pipeline.job.execute import job_weights

    search = SearchSpec("http://127.0.0.1:9", "sentinel-2-l2a")
    assert job_weights(JobSpec(search, str(tmp_path / "o.zarr"), model="ukis-csmask")) == "ukis-csmask"
    with pytest.raises(ConfigError, match="model ukis-csmask brings its own trained model; drop --weights w.pt"):
        JobSpec(search, str(tmp_path / "o.zarr"), model="ukis-csmask", weights="w.pt")
    with pytest.raises(ConfigError, match="model 'unet': expected one of mscloudcam, s2cloudless, ukis-csmask"):
        JobSpec(search, str(tmp_path / "o.zarr"), model="unet")
    base = ["run", "--stac-url", "http://127.0.0.1:9", "--collection", "c", "--out", str(tmp_path / "o.zarr")]
    proc = cli(*base, "--weights", "ukis-csmask")
    assert proc.returncode == 2 and "ukis-csmask" in proc.stderr and "does not exist" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_a_job_file_date_written_unquoted_is_searched_as_that_date(tmp_path):
    """``datetime: 2024-06-01`` is a date to YAML, not text: it reaches the search as the ISO date."""
    import argparse

    from flows.run import job_spec, settings

    path = tmp_path / "job.yaml"
    path.write_text("stac_url: http://127.0.0.1:9\ncollection: c\nout: o.zarr\ndatetime: 2024-06-01\nchunk: 512\n")
    spec = job_spec(settings(argparse.Namespace(config=str(path))))
    assert spec.search.datetime == "2024-06-01" and spec.chunk == 512


@pytest.mark.parametrize(
    "option,name,message",
    [
        ("--csv", "missing/t.csv", "its folder '{tmp}/missing' does not exist"),
        ("--parquet", "t.xlsx", "use a .csv or .parquet suffix"),
    ],
)
def test_stats_refuses_a_table_file_it_cannot_write_before_reading_the_store(tmp_path, option, name, message, cli):
    """The store is not even read (it does not exist here: that error would come otherwise)."""
    proc = cli("stats", str(tmp_path / "none.zarr"), option, str(tmp_path / name))
    assert proc.returncode == 2 and message.format(tmp=tmp_path) in proc.stderr, proc.stderr
    assert not proc.stdout and not (tmp_path / "missing").exists()


def test_weights_info_on_missing_file():
    proc = run("weights", "info", "/nonexistent/w.safetensors", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_run_settings_carry_precision_and_the_default_overlap():
    from flows.settings import defaults, job_spec

    base = dict(defaults(), stac_url="http://127.0.0.1:1", collection="c", out="x.zarr")
    assert job_spec(base).infer.precision == "auto" and job_spec(base).infer.overlap is None
    spec = job_spec(dict(base, precision="fp32", overlap=16))
    assert (spec.infer.precision, spec.infer.overlap) == ("fp32", 16)
    bad = run(
        "run",
        "--stac-url",
        "http://127.0.0.1:1",
        "--collection",
        "c",
        "--out",
        "x.zarr",
        "--precision",
        "fp8",
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice: 'fp8'" in bad.stderr


def test_help_and_argument_errors_do_not_load_torch():
    """The command line answers --help and refuses bad arguments without loading torch (seconds): every command's
    parser is built, and a train and an evaluate argument error are raised, in a process where torch stays out."""
    code = (
        "import sys; from flows.cli import build_parser, main; build_parser()\n"
        "codes = [main(['train', '--out', 'x']), main(['evaluate', '--dataset', 'bigearthnet', '--brightness', '2'])]\n"
        "print(codes, 'torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[2,", "2]", "False"], p.stdout + p.stderr
