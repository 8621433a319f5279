"""``cloudmask benchmark precision|pipeline|memory``: each runs its real path (real scenes; the demo archive or
a full-size scene behind the local STAC API on a local Dask worker) and prints and writes figures that hang
together. Run here with the tiny model and small sizes; the figures in the README come from the same commands
with the defaults."""

import json

import pytest
from test_cli import run  # tests/flows is on sys.path (pytest prepend import mode)

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset


def test_precision_benchmark_compares_each_mode_with_fp32_on_real_scenes(test_weights_file, tmp_path):
    out = run(
        "benchmark",
        "precision",
        "--weights",
        str(test_weights_file),
        "--precisions",
        "fp32,bf16",
        "--scenes",
        "sen12mscr-ROIs1868-p30,eolearn-0",
        "--per-scene",
        "--json",
        str(tmp_path / "p.json"),
    ).stdout
    assert "--precision auto here:" in out and "same class" in out and "eolearn-0" in out
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert rows[0]["same_class_pct"] == 100.0 and rows[0]["speedup"] == 1.0  # the reference against itself
    assert 90.0 < rows[1]["same_class_pct"] <= 100.0 and rows[1]["ms_per_tile"] > 0 and rows[1]["tiles"] > 0
    assert set(rows[1]["per_scene"]) == {"sen12mscr-ROIs1868-p30", "eolearn-0"}
    bad = run("benchmark", "precision", "--precisions", "bf16,fp32", check=False)
    assert bad.returncode == 2 and "the first must be fp32" in bad.stderr
    bad = run("benchmark", "precision", "--scenes", "nowhere", check=False)
    assert bad.returncode == 2 and "unknown ['nowhere']" in bad.stderr


def test_pipeline_benchmark_runs_the_job_per_model_on_one_worker(test_weights_file, tmp_path):
    out = run(
        "benchmark",
        "pipeline",
        "--out",
        str(tmp_path),
        "--models",
        "mscloudcam,ukis-csmask",
        "--weights",
        str(test_weights_file),
        "--json",
        str(tmp_path / "b.json"),
    ).stdout
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["scenes"] == 2 and figures["threads"] >= 1 and "one local worker" in out
    ours, ukis = figures["rows"]
    assert (ours["model"], ukis["model"]) == ("mscloudcam", "ukis-csmask")
    for row in (ours, ukis):
        assert 0 < row["forward_s"] < row["wall_s"] and 0 < row["efficiency"] < 1
        assert 0 <= row["other_tasks_during_model_s"] <= row["other_tasks_s"] and row["other_tasks_s"] > 0
        assert row["before_first_forward_s"] > 0 and row["after_last_forward_s"] > 0
        assert row["mpx_per_s"] == pytest.approx(figures["mpx"] / row["wall_s"])
    # the tiny model's 64 px tiles with the default overlap of 8 px: at least the non-overlapping count
    assert ours["tile"] == 64 and ours["tiles_run"] >= ours["tiles_needed"] > 0 and ours["overlap_overhead"] >= 1
    assert figures["ratios"]["ukis-csmask"] == pytest.approx(ours["mpx_per_s"] / ukis["mpx_per_s"])
    assert "MSCloudCAM / ukis-csmask:" in out and "s2cloudless" not in figures["ratios"]
    for model in ("mscloudcam", "ukis-csmask"):  # each model wrote its own complete store
        table = (tmp_path / f"{model}.zarr" / "_cloudmask" / "scenes.csv").read_text()
        assert table.count(",ok,") == 2


def test_memory_benchmark_reports_worker_memory_scene_after_scene(test_weights_file, tmp_path):
    out = run(
        "benchmark",
        "memory",
        "--out",
        str(tmp_path),
        "--size",
        "600",
        "--scenes",
        "2",
        "--weights",
        str(test_weights_file),
        "--json",
        str(tmp_path / "m.json"),
    ).stdout
    figures = json.loads((tmp_path / "m.json").read_text())
    assert [r["after"] for r in figures["rows"]] == ["[1/2]", "[2/2]"]
    assert 0.2 < figures["peak_gb"] < 4 and figures["peak_gb"] == max(r["peak_gb"] for r in figures["rows"])
    assert all(0 < r["rss_gb"] <= r["peak_gb"] for r in figures["rows"])
    assert figures["tiles"] > 0 and 0 < figures["forward_s"] < figures["wall_s"]
    assert 0 <= figures["other_tasks_during_model_s"] <= figures["other_tasks_s"] and figures["other_tasks_s"] > 0
    assert "peak worker memory" in out and "limit 4.0 GB" in out
    items = json.loads((tmp_path / "fullsize-600" / "items.json").read_text())["features"]
    assert len(items) == 2 and items[0]["assets"]["B02"]["proj:shape"] == [600, 600]
    assert items[0]["assets"]["B01"]["proj:shape"] == [100, 100]  # 60 m band at its native resolution
    assert items[0]["assets"]["B02"]["href"] == items[1]["assets"]["B02"]["href"]  # one scene, two acquisitions


def read_masks(store) -> list:
    """Every scene's mask (y, x) of a store, over all its grid groups."""
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = xr.open_datatree(str(store), engine="zarr")
    return [node["mask"][t] for node in tree.subtree if "mask" in node for t in range(node.sizes["time"])]


def test_scale_benchmark_prints_real_and_simulated_figures(test_weights_file, tmp_path):
    out = run(
        "benchmark",
        "scale",
        "--out",
        str(tmp_path),
        "--scenes",
        "1,2",
        "--gpus",
        "2,3",
        "--sim-scenes",
        "6",
        "--latency",
        "0.9",
        "--read-seconds",
        "0.9",
        "--weights",
        str(test_weights_file),
        "--json",
        str(tmp_path / "s.json"),
    ).stdout
    figures = json.loads((tmp_path / "s.json").read_text())
    real, sim = figures["real"], figures["simulated"]
    assert [r["scenes"] for r in real] == [1, 2] and all(r["ok"] == r["scenes"] for r in real)
    assert all(0 < r["forward_s"] < r["wall_s"] and r["client_peak_mib"] > 100 for r in real)
    for n in (1, 2):  # every run wrote its own masks (a re-run in the same process once reused the first's writes)
        assert all((v.values != 255).any() for v in read_masks(tmp_path / f"real-{n}.zarr")), n
    assert "marginal_s_per_scene" in real[1] and real[1]["non_model_per_scene_s"] > 0
    for row, w in zip(sim, (2, 3)):
        # full-size scenes: the test model's 48 px stride gives 4,080 px blocks, 3 x 3 of them
        assert row["gpus"] == w and row["ok"] == 6 and row["blocks_per_scene"] == 9
        # each scene held a GPU 0.9 s (0.1 s a block): 6 scenes on w GPUs take at least 6 x 0.9 / w, and the GPUs
        # were busy that long, no more, within the job
        assert row["wall_s"] >= 6 * 0.9 / w and 0.1 < row["gpu_busy"] <= 1
        assert row["gpu_busy"] * w * row["wall_s"] == pytest.approx(6 * 0.9, rel=0.1)
        assert set(row["cpu_s_per_scene"]) == {"client", "scheduler", "workers"}
    # 2 GPUs keep 4 scenes in flight: the last 2 are submitted once GPUs ran; 3 GPUs take all 6 at once
    assert sim[0]["gpu_busy"] <= sim[0]["gpu_busy_steady"] <= 1 and sim[1]["gpu_busy_steady"] is None
    assert sim[1]["worker_processes"] == 1
    # every scene of the simulation is counted and recorded: one class per block, so the fractions vary
    import pandas as pd

    table = pd.read_csv(tmp_path / "sim-3.zarr" / "_cloudmask" / "scenes.csv")
    assert len(table) == 6 and (table["status"] == "ok").all() and (table["valid_pixels"] == 10980**2).all()
    assert (table[["pct_clear", "pct_thick_cloud", "pct_thin_cloud", "pct_cloud_shadow"]] > 5).all().all()
    assert "SIMULATED W=  2 GPUs x 0.90 s/scene" in out and "real   N=    2" in out
    bad = run("benchmark", "scale", "--latency", "0", check=False)
    assert bad.returncode == 2 and "--latency 0.0 must be positive" in bad.stderr


def test_read_benchmark_prints_the_read_path_next_to_the_decode_floor(tmp_path):
    out = run(
        "benchmark",
        "read",
        "--out",
        str(tmp_path),
        "--size",
        "1024",
        "--formats",
        "cog,jp2",
        "--warp",
        "--json",
        str(tmp_path / "r.json"),
    ).stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["format"] for r in rows] == ["cog", "jp2"]
    for row in rows:  # the starter's 224 px stride: 1,024 px is one 896 px block and a 128 px remainder: 1 block
        assert row["blocks"] == 1 and row["decode_floor_s"] > 0 and row["read_path_s"] > 0
        assert row["read_over_floor"] == pytest.approx(row["read_path_s"] / row["decode_floor_s"])
        assert row["cpu_upsampling_s"] > 0 and row["warp_s"] > row["read_path_s"]
    assert "the job's read path" in out and "cores reading" in out
    bad = run("benchmark", "read", "--formats", "png", check=False)
    assert bad.returncode == 2 and "expected some of cog, jp2" in bad.stderr


def test_overcast_benchmark_shows_what_the_check_adds_and_what_it_costs(tmp_path):
    """The shipped L1C starter on eo-learn's haze (scene 1) as it lies (a patch with an edge: not looked at again)
    and mirrored to fill a tile (looked at again, called cloud); an unknown scene is refused before any work."""
    out = run(
        "benchmark", "overcast", "--scenes", "eolearn-1", "--levels", "L1C", "--json", str(tmp_path / "o.json")
    ).stdout
    figures = json.loads((tmp_path / "o.json").read_text())
    lies, mirrored = figures["rows"]
    assert lies["scene"] == "eolearn-1" and lies["far_views"] == 0 and lies["cloud_with"] == lies["cloud_without"]
    assert mirrored["scene"] == "eolearn-1 mirrored to 256 px" and mirrored["far_views"] >= 1
    assert mirrored["cloud_without"] < 90 <= mirrored["cloud_with"]
    assert 0 < mirrored["made_cloud"] <= mirrored["cloud_with"] - mirrored["cloud_without"] + 0.5
    assert figures["far_views"] == mirrored["far_views"] and "tiles looked at again" in out
    assert lies["slots_with"] == lies["slots_without"] and mirrored["slots_with"] > mirrored["slots_without"]
    bad = run("benchmark", "overcast", "--scenes", "eolearn-9", check=False)
    assert bad.returncode == 2 and "unknown ['eolearn-9']" in bad.stderr
    nowhere = run("benchmark", "overcast", "--json", str(tmp_path / "no" / "o.json"), check=False)
    assert nowhere.returncode == 2 and "does not exist; create it first" in nowhere.stderr  # before any work
