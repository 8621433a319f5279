"""Where a store lives: ``location_of(out) -> Location``, a local folder or an object-storage prefix.

``--out`` is a local path (``~`` expanded), a ``file://`` URL, an ``s3://bucket/prefix`` URL (AWS S3 or any
S3-compatible service: ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` names its endpoint; credentials come from the
usual AWS chain on the client and on every worker), or ``memory://name`` (fsspec's in-process store: tests and
single-process runs). Every location offers the same few operations the store's bookkeeping needs (read, write
whole objects, list, delete) and the arguments xarray and zarr take to open it, so the store's code is one for all.
Other protocols (``gs://``, ``az://`` ...) are refused: the store's lock needs conditional writes, implemented
here for local folders, S3 and memory only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

OBJECT_STORES = ("s3", "memory")


@dataclass(frozen=True)
class Location:
    """A store's place: ``url`` as shown to users and given to xarray/zarr, ``protocol`` (``file``, ``s3``,
    ``memory``), ``root`` the path inside the fsspec filesystem, ``options`` the fsspec storage options (the S3
    endpoint; never credentials)."""

    url: str
    protocol: str
    root: str
    options: dict = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self):
        import fsspec

        return fsspec.filesystem(self.protocol, **self.options)

    def key(self, *parts: str) -> str:
        """The fsspec path of ``parts`` below the root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def zarr_args(self) -> dict:
        """``store=`` (and ``storage_options=``) for ``xr.open_zarr``/``Dataset.to_zarr``/``zarr.open_group``."""
        return {"store": self.root} if self.local else {"store": self.url, "storage_options": dict(self.options)}

    def zarr_store(self):
        """A zarr ``Store`` of the location (for zarr functions without ``storage_options``)."""
        if self.local:
            return self.root
        import zarr

        return zarr.storage.FsspecStore.from_url(self.url, storage_options=dict(self.options))

    # -- whole objects ---------------------------------------------------------------------------------
    def read(self, *parts: str) -> bytes | None:
        """The bytes of an object or file, None where there is none."""
        try:
            return self.fs.cat_file(self.key(*parts))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def write(self, data: bytes, *parts: str) -> None:
        """Write an object whole: readers see the old bytes or the new ones, never a part (a local file is
        written beside and renamed; an object-storage PUT is atomic)."""
        path = self.key(*parts)
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a write cut short (a full disk) leaves nothing behind

    def delete(self, *parts: str) -> None:
        try:
            self.fs.rm_file(self.key(*parts))
        except FileNotFoundError:
            pass

    def exists(self, *parts: str) -> bool:
        if not self.local:
            self.fs.invalidate_cache()
        return self.fs.exists(self.key(*parts))

    def names(self, *parts: str) -> list[str]:
        """Names of the objects directly below ``parts`` (fresh: listings are never taken from a cache)."""
        fs = self.fs
        if not self.local:
            fs.invalidate_cache()
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(self.key(*parts), detail=False))
        except FileNotFoundError:
            return []

    def remove_tree(self, *parts: str) -> None:
        self.fs.rm(self.key(*parts), recursive=True)


def location_of(out: str | Path, label: str = "--out", writable: bool = True) -> Location:
    """The ``Location`` of ``--out``, checked before any work: a local folder must not be a file and must be
    writable where it would be created (with ``writable`` False: a store that is there to be read, read-only
    too); an object-storage bucket must exist and be reachable. ``label`` names the argument in messages."""
    text = str(out)
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    if protocol == "file":
        return _local(text, label, writable)
    if protocol not in OBJECT_STORES:
        raise ConfigError(
            f"{label} {text}: {protocol}:// stores are not supported (the store's lock needs "
            f"conditional writes, implemented for local folders and s3://, including S3-compatible "
            f"services via AWS_ENDPOINT_URL); write to one of those"
        )
    if protocol == "memory":
        return Location(text, "memory", "/" + text.split("://", 1)[1].strip("/"))
    return _s3(text, label)


def _local(text: str, label: str, writable: bool = True) -> Location:
    path = Path(text.removeprefix("file://")).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} {text} is a file, not a store folder; give a new folder or a store to resume")
    if not writable:
        if not path.is_dir():
            raise ConfigError(f"{label} {text} is not a folder; give the --out of a cloudmask run")
        return Location(str(path), "file", str(path))
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{label} {text}: cannot write in {existing} (no permission, or a read-only file system); "
            f"choose another --out"
        )
    return Location(str(path), "file", str(path))


def s3_options(environ=None) -> dict:
    """fsspec options for S3 from the environment: the endpoint of an S3-compatible service, if one is named."""
    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def _s3(text: str, label: str) -> Location:
    try:
        import s3fs  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{label} {text}: writing to S3 needs s3fs: pip install 'cloudmask-pipeline[providers]'"
        ) from exc
    root = text.split("://", 1)[1].strip("/")
    bucket = root.split("/", 1)[0]
    if "/" not in root:
        raise ConfigError(f"{label} {text}: give a prefix inside the bucket (s3://{bucket}/masks.zarr), not the bucket")
    location = Location(f"s3://{root}", "s3", root, s3_options())
    at = f" at {location.options['endpoint_url']}" if location.options else ""
    try:
        location.fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise ConfigError(f"{label} {text}: bucket {bucket!r} does not exist{at}") from None
    except PermissionError:
        raise ConfigError(f"{label} {text}: these credentials may not use bucket {bucket!r}{at}") from None
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, network: one line naming the bucket
        raise ConfigError(
            f"{label} {text}: cannot reach bucket {bucket!r}{at} ({type(exc).__name__}: "
            f"{str(exc)[:200]}); check the AWS credentials and AWS_ENDPOINT_URL"
        ) from None
    return location
