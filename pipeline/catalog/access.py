"""How the job reaches the providers' storage: GDAL settings for ``s3://`` and ``https://`` assets, and signed
Planetary Computer URLs.

``access_for(items)`` -> ``Access``: GDAL's standard AWS settings taken from the environment (endpoint, region,
unsigned access, requester pays, profile; credentials stay where GDAL and boto3 look for them: the environment,
``~/.aws``, an instance role), requester pays switched on where an item says ``storage:requester_pays``, HTTP
retries for https. The job's tasks carry an ``Access`` to every worker, where ``access.env(href)`` applies it to the
reads. Secrets are never part of ``Access``, never logged and never stored; ``redact`` strips signatures from
URLs that end up in messages. boto3 (the ``providers`` extra) is optional: without it GDAL finds credentials in
the environment and ``~/.aws`` itself; with it, rasterio's AWS session adds boto3's whole credentials chain.

Planetary Computer's Azure blobs need a SAS token: ``sign(item)`` signs a copy with the ``planetary-computer``
package (the ``providers`` extra) when each scene's work is built, so long jobs never run on expired tokens.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from pipeline.errors import ConfigError

# GDAL/AWS settings that are not secrets, passed on from the environment of the process that starts the job
SETTINGS = (
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_NO_SIGN_REQUEST",
    "AWS_REQUEST_PAYER",
    "AWS_PROFILE",
    "GDAL_HTTP_MAX_RETRY",
    "GDAL_HTTP_RETRY_DELAY",
    "GDAL_HTTP_TIMEOUT",
    "CPL_VSIL_CURL_CHUNK_SIZE",
)
DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
}
SIGNED_HOSTS = ".blob.core.windows.net"


@dataclass(frozen=True)
class Access:
    """GDAL settings ``gdal`` (sorted ``(name, value)`` pairs, no secrets) and whether assets are in requester-pays
    buckets (``requester_pays``)."""

    gdal: tuple[tuple[str, str], ...]
    requester_pays: bool = False

    def __dask_tokenize__(self):
        return ("Access", self.gdal, self.requester_pays)

    def aws(self) -> dict:
        """Arguments of rasterio's ``AWSSession`` (credentials from the process's own environment)."""
        g = dict(self.gdal)
        out: dict = {"requester_pays": self.requester_pays}
        if g.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
            out["aws_unsigned"] = True
        if g.get("AWS_S3_ENDPOINT"):
            out["endpoint_url"] = g["AWS_S3_ENDPOINT"]
        if g.get("AWS_PROFILE"):
            out["profile_name"] = g["AWS_PROFILE"]
        region = g.get("AWS_REGION") or g.get("AWS_DEFAULT_REGION")
        if region:
            out["region_name"] = region
        return out

    @contextmanager
    def env(self, href: str):
        """These settings for the pipeline's own ``rasterio.open(href)``: with an AWS session for ``s3://`` hrefs
        (``_aws_session``)."""
        import rasterio

        session = {}
        if href.startswith(("s3://", "/vsis3/")) and _has_boto3():
            session = {"session": _aws_session(self.aws())}
        with rasterio.Env(**session, **dict(self.gdal)):
            yield


_SESSIONS = threading.local()


def _aws_session(options: dict):
    """rasterio's ``AWSSession`` for ``options``, one per thread: making one builds a boto3 session and its
    credentials chain, which cost more CPU than the window read it was made for (the session refreshes expiring
    credentials itself)."""
    from rasterio.session import AWSSession

    key = tuple(sorted(options.items()))
    sessions = _SESSIONS.__dict__.setdefault("by_options", {})
    if key not in sessions:
        sessions[key] = AWSSession(**options)
    return sessions[key]


def needs_signing(item, keys) -> bool:
    """Whether any of ``item``'s assets ``keys`` (those the job reads) is a Planetary Computer blob."""
    return any(urlparse(item.assets[k].href).netloc.endswith(SIGNED_HOSTS) for k in keys)


def requester_pays(item) -> bool:
    """Whether ``item`` says its assets are in requester-pays buckets: ``storage:requester_pays`` (storage
    extension v1, on the item or an asset) or the ``requester_pays`` of a scheme an asset refers to (v2:
    ``storage:refs`` -> ``storage:schemes``, what pystac migrates v1 items to)."""
    schemes = item.properties.get("storage:schemes") or {}
    if item.properties.get("storage:requester_pays") is True:
        return True
    for asset in item.assets.values():
        extra = asset.extra_fields
        if extra.get("storage:requester_pays") is True:
            return True
        if any((schemes.get(ref) or {}).get("requester_pays") is True for ref in extra.get("storage:refs") or ()):
            return True
    return False


def access_for(items, environ=None) -> Access:
    """The settings ``items`` (pystac Items) need, with the environment's GDAL/AWS settings (``environ``:
    default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    gdal = dict(DEFAULTS, **{k: environ[k] for k in SETTINGS if environ.get(k)})
    rp = environ.get("AWS_REQUEST_PAYER", "").lower() == "requester" or any(requester_pays(i) for i in items)
    if rp:
        gdal["AWS_REQUEST_PAYER"] = "requester"
    return Access(tuple(sorted(gdal.items())), requester_pays=rp)


@functools.lru_cache(maxsize=1)
def _has_boto3() -> bool:
    """Whether boto3 (the ``providers`` extra) can be imported here."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False
    return True


def require_signing() -> None:
    """Raise unless the ``planetary-computer`` package is importable."""
    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        raise ConfigError(
            "these items' assets are Planetary Computer blobs that must be signed: install the "
            "providers extra: pip install 'cloudmask-pipeline[providers]' (a subscription key is optional: "
            "PC_SDK_SUBSCRIPTION_KEY)"
        ) from None


def sign(item):
    """A copy of ``item`` whose Azure blob hrefs carry a fresh SAS token (planetary-computer's cache renews
    tokens that have under a minute left)."""
    import planetary_computer

    try:
        return planetary_computer.sign(item, copy=True)
    except Exception as exc:  # requests' errors after the SDK's retries
        from pipeline.errors import InputError

        raise InputError(
            f"item {item.id}: could not sign its Planetary Computer URLs: {type(exc).__name__}: "
            f"{redact(exc)} (token endpoint: PC_SDK_SAS_URL, default the Planetary Computer's)"
        ) from exc


def read_failure(what: str, href: str, exc: BaseException) -> str:
    """One line saying that ``what`` (e.g. "item X: asset 'B04' (B04)") could not be read from ``href``, why, and,
    for an S3 read that was refused, what to set."""
    hint = ""
    if str(href).startswith("s3://") and re.search(r"403|Access ?Denied|Forbidden", str(exc), re.I):
        hint = " (s3 access refused: set AWS credentials; for a requester-pays bucket also AWS_REQUEST_PAYER=requester)"
    return f"{what} could not be read ({redact(href)}): {redact(exc)}{hint}"


def redact(text: str) -> str:
    """``text`` with the query strings of URLs (SAS tokens, signatures) replaced by ``?…``."""
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*?(?=:?(?:\s|$)|['\"])", r"\1?…", str(text))
