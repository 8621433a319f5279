"""A real STAC API on 127.0.0.1 for the demo and the tests: PostgreSQL + PostGIS + pgstac, served by
stac-fastapi-pgstac under uvicorn. Started and stopped by the caller; nothing outlives the ``with`` block.

Needs the Debian packages ``postgresql`` and ``postgresql-15-postgis-3`` (``.ci/run`` and ``make demo``
install them when missing). PostgreSQL refuses to run as root, so as root the server runs as ``postgres``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import StacServerError

PASSWORD = "cloudmask"  # trust auth on 127.0.0.1 only; stac-fastapi-pgstac still requires one to be set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise StacServerError(
            f"PostgreSQL's {name} was not found; install the Debian packages: apt-get install -y postgresql "
            f"postgresql-15-postgis-3"
        )
    return found[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise StacServerError(f"{' '.join(map(str, cmd[:6]))} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def static_files_app():
    """ASGI app serving ``$CLOUDMASK_SERVE_DIR`` read-only with HTTP range requests (for COGs)."""
    from starlette.applications import Starlette
    from starlette.staticfiles import StaticFiles

    app = Starlette()
    app.mount("/", StaticFiles(directory=os.environ["CLOUDMASK_SERVE_DIR"]))
    return app


def _wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, ok=(200,)) -> None:
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise StacServerError(f"{what} did not start: {log.read_text()[-1500:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def local_file_server(folder: str | Path):
    """Serve ``folder`` over HTTP on 127.0.0.1 (uvicorn + Starlette, range requests as COG readers use them,
    404 for missing files) and yield its base URL; stopped on exit."""
    port = _free_port()
    log_path = Path(tempfile.mkdtemp(prefix="cloudmask-files-")) / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "flows.stacserver:static_files_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=dict(os.environ, CLOUDMASK_SERVE_DIR=str(Path(folder).resolve())),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/", proc, log_path, "the file server", ok=(200, 404))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(log_path.parent, ignore_errors=True)


@contextlib.contextmanager
def local_stac_api(collections: list[dict], items: list[dict], workdir: str | Path | None = None):
    """Start PostgreSQL/pgstac and stac-fastapi-pgstac, load ``collections`` and ``items`` (STAC JSON dicts),
    yield the API's URL (``http://127.0.0.1:PORT``), and stop everything on exit."""
    base = Path(tempfile.mkdtemp(prefix="cloudmask-stac-", dir=workdir))
    data, sock = base / "pgdata", base / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        for p in (data, sock):
            shutil.chown(p, "postgres")
    pg_port, api_port = _free_port(), _free_port()
    api = None
    started = False
    try:
        _run(_as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]))
        _run(
            _as_postgres(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(data),
                    "-w",
                    "-l",
                    str(base / "postgres.log"),
                    "-o",
                    f"-p {pg_port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start",
                ]
            )
        )
        started = True
        dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{pg_port}/postgres"
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        pypgstac = [sys.executable, "-m", "pypgstac.pypgstac"]
        _run([*pypgstac, "migrate", "--dsn", dsn], env=env)
        col_file, item_file = base / "collections.ndjson", base / "items.ndjson"
        col_file.write_text("".join(json.dumps(c) + "\n" for c in collections))
        item_file.write_text("".join(json.dumps(i) + "\n" for i in items))
        _run([*pypgstac, "load", "collections", str(col_file), "--dsn", dsn, "--method", "upsert"], env=env)
        if items:
            _run([*pypgstac, "load", "items", str(item_file), "--dsn", dsn, "--method", "upsert"], env=env)
        # numeric comparison and sorting of cloud cover
        _run(
            [
                _pg_bin("psql"),
                dsn,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "SET search_path TO pgstac, public; DELETE FROM queryables WHERE name = 'eo:cloud_cover'; "
                "INSERT INTO queryables (name, definition, property_wrapper) VALUES "
                '(\'eo:cloud_cover\', \'{"type": "number", "minimum": 0, "maximum": 100}\', \'to_float\');',
            ],
            env=env,
        )
        api_env = dict(
            env,
            PGUSER="postgres",
            PGHOST="127.0.0.1",
            PGPORT=str(pg_port),
            PGDATABASE="postgres",
            POSTGRES_USER="postgres",
            POSTGRES_PASS=PASSWORD,
            POSTGRES_HOST_READER="127.0.0.1",
            POSTGRES_HOST_WRITER="127.0.0.1",
            POSTGRES_PORT=str(pg_port),
            POSTGRES_DBNAME="postgres",
        )
        log = open(base / "api.log", "w")
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "stac_fastapi.pgstac.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
                "--log-level",
                "warning",
            ],
            env=api_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{api_port}"
        _wait_http(f"{url}/collections", api, base / "api.log", "stac-fastapi-pgstac")
        yield url
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(10)
            except subprocess.TimeoutExpired:
                api.kill()
        if started:
            subprocess.run(
                _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True
            )
        shutil.rmtree(base, ignore_errors=True)
