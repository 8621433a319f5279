"""A local S3-compatible server for tests: moto in server mode (what s3fs and zarr test against) on 127.0.0.1.

moto accepts reads of requester-pays buckets without the ``x-amz-request-payer: requester`` header; AWS refuses
them with 403 AccessDenied. This server adds that check, so a test can tell whether the pipeline sends it:
``python tests/s3server.py PORT [BUCKET ...]`` refuses GET/HEAD on the named buckets without the header.
``s3_server(rp_buckets)`` runs it as a separate process and yields its endpoint (``127.0.0.1:PORT``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied: '
    b"requester pays bucket, x-amz-request-payer missing</Message></Error>"
)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class RequesterPays:
    """WSGI middleware: 403 for reads of ``buckets`` that lack the requester-pays header (path-style URLs)."""

    def __init__(self, app, buckets: set[str]) -> None:
        self.app, self.buckets, self.refused = app, buckets, 0

    def __call__(self, environ, start_response):
        bucket = environ.get("PATH_INFO", "/").lstrip("/").split("/", 1)[0]
        if (
            environ.get("REQUEST_METHOD") in ("GET", "HEAD")
            and bucket in self.buckets
            and environ.get("HTTP_X_AMZ_REQUEST_PAYER", "").lower() != "requester"
        ):
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(DENIED)))])
            return [DENIED]
        return self.app(environ, start_response)


def main(argv: list[str]) -> None:
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    port, buckets = int(argv[0]), set(argv[1:])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = RequesterPays(DomainDispatcherApplication(create_backend_app), buckets)
    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(requester_pays: tuple[str, ...] = ()):
    """Start the server; yield ``(endpoint, boto3 client)``; stop it on exit."""
    import boto3

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, str(port), *requester_pays],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, **CREDENTIALS),
    )
    endpoint = f"127.0.0.1:{port}"
    try:
        for _ in range(200):  # the port opens once the server listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"the S3 server exited with status {proc.returncode}")
            time.sleep(0.05)
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{endpoint}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        yield endpoint, client
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main(sys.argv[1:])
