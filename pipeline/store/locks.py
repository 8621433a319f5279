"""The store's writer lock, ``<store>/_cloudmask/lock.json``: one job writes a store at a time.

Its record (JSON): ``pid``, ``started`` (the process's start time, so a reused PID is told apart), ``host``,
``job``, ``since``, ``token`` (unique per holding). Two kinds, chosen by where the store is:

- ``FileLock`` (a local or mounted folder): created with ``O_EXCL``; a lock left by a job that is gone (dead or
  reused PID on this host, a file left empty by a failed start) is taken over by exactly one job.
- ``LeaseLock`` (object storage): a lease. Created with a conditional PUT (``If-None-Match: *``); renewed by a
  heartbeat every ``ttl/4`` with ``If-Match`` on the last ETag; a lease not renewed for ``ttl`` seconds (by the
  object store's own clock: the response's ``Date`` minus the object's ``Last-Modified``), or held by a dead or
  reused PID on this host, is taken over with ``If-Match`` on the ETag that was judged stale, so one job wins and
  the others are refused. A holder whose renewal fails (its lease was taken after it stalled) stops before its
  next manifest write (``check()`` raises ``LeaseLostError``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from pipeline.errors import LeaseLostError, LockWriteError, StoreLockedError
from pipeline.store.locations import Location

LOCK = ("_cloudmask", "lock.json")
UNREADABLE_LOCK_S = 30  # a lock file still empty or unreadable after this long was left by a failed start


def lease_seconds() -> float:
    """The lease's time to live: ``CLOUDMASK_LEASE_S`` (seconds), 60 by default."""
    return float(os.environ.get("CLOUDMASK_LEASE_S", "60"))


def record(job: str) -> dict:
    return {
        "pid": os.getpid(),
        "started": _process_start(os.getpid()),
        "host": socket.gethostname(),
        "job": job,
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def refusal(where: str, holder: dict, lock_at: str) -> StoreLockedError:
    gone_hint = (
        f"its lease runs out {holder['ttl_s']:.0f} s after its last renewal, then a new job takes it"
        if holder.get("ttl_s")
        else f"If that job is gone, delete {lock_at}"
    )
    return StoreLockedError(
        f"store {where!r} is being written by another job (pid {holder.get('pid')} on {holder.get('host')}, "
        f"since {holder.get('since')}); wait for it to finish, or write to another --out. {gone_hint}"
    )


def lock_for(location: Location, job: str):
    return FileLock(location, record(job)) if location.local else LeaseLock(location, record(job))


class FileLock:
    """The lock of a store in a folder (see the module's docstring)."""

    def __init__(self, location: Location, me: dict) -> None:
        self.path = Path(location.key(*LOCK))
        self.me = me

    def acquire(self) -> dict | None:
        """None once held, else the live holder's record."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockWriteError(
                f"cannot write the store's lock {self.path}: {exc}; free space on that disk or write to another --out"
            ) from None
        return _acquire(self.path, self.me)

    def check(self) -> None:
        """Raise ``LeaseLostError`` unless the lock file still holds this job's record (it was deleted by hand, or
        taken by a job that judged this one gone)."""
        held = _read_json(self.path)
        if not isinstance(held, dict) or held.get("token") != self.me["token"]:
            raise LeaseLostError(
                f"stopped writing {self.path.parent.parent}: its lock file {self.path} no longer holds "
                f"this job's record (deleted, or taken over by another job); nothing this job "
                f"finished is lost; run it again once no other job writes the store"
            )

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _acquire(lock: Path, me: dict) -> dict | None:
    """Create ``lock`` holding ``me``; None once held, else the live holder's record. A stale lock is taken
    over by one job only: the one that creates the ``.takeover`` marker re-reads it and atomically replaces
    it with its own while the others, seeing the marker or the new holder, are refused."""
    marker = lock.with_name(lock.name + ".takeover")
    holder: dict = {}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except OSError as exc:  # a full disk: no half-written lock to block the next job
                lock.unlink(missing_ok=True)
                raise LockWriteError(
                    f"cannot write the store's lock {lock}: {exc}; free space on that disk or write to another --out"
                ) from None
            return None
        seen = _read_json(lock)
        if not _stale(lock, seen, me):
            return seen if isinstance(seen, dict) else {}
        holder = seen if isinstance(seen, dict) else {}
        try:
            mfd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another job is taking it over now, or one died doing so long ago
            with contextlib.suppress(FileNotFoundError):
                if time.time() - marker.stat().st_mtime > UNREADABLE_LOCK_S:
                    marker.unlink()
            continue
        try:
            again = _read_json(lock) if lock.exists() else None
            if lock.exists() and (again != seen or not _stale(lock, again, me)):
                continue  # it changed hands meanwhile: look again
            tmp = lock.with_name(lock.name + ".tmp")
            try:
                tmp.write_text(json.dumps(me))
                os.replace(tmp, lock)  # atomic replace: there is no moment without a lock
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise LockWriteError(
                    f"cannot write the store's lock {lock}: {exc}; free space on that disk or write to another --out"
                ) from None
            return None
        finally:
            os.close(mfd)
            marker.unlink(missing_ok=True)
    return holder


def _stale(lock: Path, holder, me: dict) -> bool:
    """Whether ``lock`` (content ``holder``) was left by a job that is gone (``gone``), or is a file never
    completed (empty or unreadable for ``UNREADABLE_LOCK_S``: a crash or a full disk as it was written)."""
    if not isinstance(holder, dict):
        try:
            return time.time() - lock.stat().st_mtime > UNREADABLE_LOCK_S
        except FileNotFoundError:
            return True
    return gone(holder, me)


def gone(holder: dict, me: dict) -> bool:
    """Whether the job of lock record ``holder`` is known to be gone: a dead process on this host, or a live
    process id that started at another time (the id was reused: a restarted container's job is PID 1 again)."""
    if holder.get("host") != me["host"]:
        return False
    if not _alive(holder.get("pid")):
        return True
    started = holder.get("started")
    return started is not None and started != _process_start(holder.get("pid"))


class LeaseLock:
    """The lease of a store on object storage (see the module's docstring)."""

    def __init__(self, location: Location, me: dict, ttl: float | None = None) -> None:
        self.location, self.me = location, me
        self.ttl = lease_seconds() if ttl is None else ttl
        self.objects = _objects(location)
        self.etag: str | None = None
        self.lost: str | None = None
        self.renewed = threading.Event()  # set at each renewal (for watchers)
        self._body = json.dumps(dict(me, ttl_s=self.ttl)).encode()
        self._key = location.key(*LOCK)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._renewing = threading.Lock()  # the heartbeat and check() renew one at a time (ETags in order)
        self._renewed_at = time.monotonic()

    def acquire(self) -> dict | None:
        """None once held (and renewed from now on), else the live holder's record."""
        key, body = self._key, self._body
        holder: dict = {}
        for _ in range(5):
            try:
                self.etag = self.objects.put(key, body, if_match=None)
                break
            except PreconditionFailed:
                pass
            try:
                seen, age, data = self.objects.head(key)
            except FileNotFoundError:
                continue  # released meanwhile: try to create it again
            holder = _parse(data)
            if age <= float(holder.get("ttl_s") or self.ttl) and not gone(holder, self.me):  # the holder's own ttl
                return holder
            try:  # expired (or its job is gone): take it over from exactly that holding
                self.etag = self.objects.put(key, body, if_match=seen)
                break
            except (PreconditionFailed, FileNotFoundError):
                continue  # another job took it or it was released: look again
        else:
            return holder
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="cloudmask-lease")
        self._beat.start()
        return None

    def renew(self) -> bool:
        """Renew the lease once (If-Match on this job's last ETag); False, with ``lost`` set, if it was taken."""
        try:
            self.etag = self.objects.put(self._key, self._body, if_match=self.etag)
        except (PreconditionFailed, FileNotFoundError):
            self.lost = (
                "another job took the store's lease over, or its lock object was overwritten or deleted "
                "(this job stalled for longer than the lease, or the lock was changed by hand)"
            )
            return False
        self._renewed_at = time.monotonic()
        self.renewed.set()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                with self._renewing:
                    if self.lost or not self.renew():
                        return
            except Exception as exc:  # noqa: BLE001 - the store unreachable: retry until the lease runs out
                if time.monotonic() - self._renewed_at > self.ttl:
                    self.lost = f"the lease could not be renewed for {self.ttl:.0f} s ({type(exc).__name__}: {exc})"
                    return

    def check(self) -> None:
        """Renew the lease now, conditionally on this job's last ETag: ``LeaseLostError`` if it is not this job's
        any more (taken over, overwritten or deleted), so nothing is recorded after the loss."""
        with self._renewing:
            if not self.lost:
                try:
                    self.renew()
                except Exception:  # the store unreachable: the lease renewed under half a ttl ago is still ours
                    if time.monotonic() - self._renewed_at > self.ttl / 2:
                        raise
        if self.lost:
            raise LeaseLostError(
                f"stopped writing {self.location.url}: {self.lost}; nothing this job finished is "
                f"lost; run it again once the other job is done"
            )

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.etag and not self.lost:
            with contextlib.suppress(PreconditionFailed, FileNotFoundError):
                self.objects.delete(self.location.key(*LOCK), if_match=self.etag)


class PreconditionFailed(Exception):
    """A conditional write found the object other than expected."""


def _objects(location: Location):
    return _S3Objects(location.fs) if location.protocol == "s3" else _MemoryObjects(location.fs)


class _S3Objects:
    """Conditional PUT/DELETE and HEAD on S3 (AWS, or any service that honours ``If-None-Match``/``If-Match``)."""

    def __init__(self, fs) -> None:
        self.fs = fs

    def _call(self, op: str, key: str, **kw):
        bucket, name = key.split("/", 1)
        try:
            return self.fs.call_s3(op, Bucket=bucket, Key=name, **kw)
        except FileExistsError as exc:
            raise PreconditionFailed(str(exc)) from exc
        except OSError as exc:
            response = getattr(exc.__cause__, "response", None) or {}
            if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                raise PreconditionFailed(str(exc)) from exc
            raise

    def put(self, key: str, data: bytes, if_match: str | None) -> str:
        cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        return self._call("put_object", key, Body=data, **cond)["ETag"]

    def head(self, key: str) -> tuple[str, float, bytes]:
        """``(etag, seconds since last written by the server's clock, content)``."""
        got = self._call("head_object", key)
        now = email.utils.parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
        data = self.fs.cat_file(key)  # if it changed since, the conditional write on ``etag`` fails: safe
        return got["ETag"], (now - got["LastModified"]).total_seconds(), data

    def delete(self, key: str, if_match: str) -> None:
        self._call("delete_object", key, IfMatch=if_match)


class _MemoryObjects:
    """The same on fsspec's in-process memory store (one process: a mutex makes check-and-write atomic)."""

    _mutex = threading.Lock()
    _tags: dict[str, tuple[str, float]] = {}

    def __init__(self, fs) -> None:
        self.fs = fs

    def put(self, key: str, data: bytes, if_match: str | None) -> str:
        with self._mutex:
            have = self._tags.get(key) if self.fs.exists(key) else None
            if (if_match is None and have) or (if_match is not None and (not have or have[0] != if_match)):
                raise PreconditionFailed(key)
            self.fs.pipe_file(key, data)
            self._tags[key] = (uuid.uuid4().hex, time.time())
            return self._tags[key][0]

    def head(self, key: str) -> tuple[str, float, bytes]:
        with self._mutex:
            if not self.fs.exists(key) or key not in self._tags:
                raise FileNotFoundError(key)
            etag, written = self._tags[key]
            return etag, time.time() - written, self.fs.cat_file(key)

    def delete(self, key: str, if_match: str) -> None:
        with self._mutex:
            if self._tags.get(key, ("",))[0] != if_match:
                raise PreconditionFailed(key)
            self.fs.rm_file(key)
            del self._tags[key]


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except (ValueError, TypeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _process_start(pid) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        return int(Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
