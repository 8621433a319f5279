"""The Dask dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) opens the
status page of a LocalCluster while the job runs, takes a screenshot, and finds the job's tasks on the page."""

import shutil
import threading
import time

import pytest
from distributed import Client, LocalCluster

from pipeline.job.execute import run_job

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.slow  # CLI subprocesses, services or clusters: out of the fast subset


# every string held by the page's Bokeh data sources (the task stream, the progress bars)
PAGE_STRINGS = """
const out = [];
for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
  for (const m of doc._all_models.values()) {
    if (m.data) for (const col of Object.values(m.data)) for (const v of col) if (typeof v === 'string') out.push(v);
  }
}
return out;
"""


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (make system-deps)")
def test_dashboard_shows_the_jobs_tasks_in_chromium(api, tmp_path, test_weights_file, spec):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            result = {}
            job = threading.Thread(
                target=lambda: result.update(
                    r=run_job(
                        spec(api, tmp_path / "dash.zarr", test_weights_file, in_flight=1), client, log=lambda _: None
                    )
                )
            )
            job.start()
            browser.get(client.dashboard_link)
            seen, shot, deadline = [], False, time.time() + 120
            while time.time() < deadline and not seen:
                strings = browser.execute_script(PAGE_STRINGS) or []
                seen = [s for s in strings if s.startswith("mask_S2A_MSIL1C_")]
                if job.is_alive() and not shot:
                    shot = browser.save_screenshot(str(tmp_path / "dashboard.png"))
                time.sleep(0.2)
            title = browser.title
            job.join(600)
        finally:
            browser.quit()
    assert title == "Dask: Status"  # Bokeh's status document, not the bare diagnostic shell
    assert shot and (tmp_path / "dashboard.png").stat().st_size > 10_000, "no screenshot taken while the job ran"
    assert seen, "the status page never showed a mask task"
    assert [s.status for s in result["r"].stats].count("ok") == 3
