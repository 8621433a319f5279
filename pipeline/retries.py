"""Transient faults of object storage and HTTP, ridden out: ``retrying(fn, ...)`` calls again with backoff.

A fault is transient when the service was unreachable or answered that it is busy (connection refused or reset, a
timeout, HTTP 5xx or 429, S3's SlowDown); a full disk, a refused permission or a missing object is not, and is
raised at once. Used for the block tasks' chunk writes, the job's own records (manifest, statistics, table) and the
band reads, so an outage of seconds inside the lease costs a pause, not a failed scene or job.
"""

from __future__ import annotations

import errno
import re
import time

TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EAGAIN,
}
LASTING_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EROFS,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
}
TRANSIENT_TYPES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "IncompleteRead",
    "ResponseParserError",
    "ConnectionError",
    "TimeoutError",
    "FSTimeoutError",
}
TRANSIENT_TEXT = re.compile(
    r"Connection refused|Connection reset|timed out|Could not connect|Service Unavailable|"
    r"SlowDown|InternalError|RequestTimeout|HTTP response code: (429|5\d\d)|"
    r"Couldn't connect to server|Failed to connect",
    re.I,
)


def transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a fault that may be gone if the same call is made again."""
    seen = 0
    while exc is not None and seen < 8:
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        if code in LASTING_ERRNOS:
            return False
        if code in TRANSIENT_ERRNOS or {c.__name__ for c in type(exc).__mro__} & TRANSIENT_TYPES:
            return True
        if TRANSIENT_TEXT.search(str(exc)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def retrying(fn, *args, seconds: float = 60.0, first: float = 0.5, **kwargs):
    """``fn(*args, **kwargs)``, called again after a transient fault with doubling pauses (from ``first``, at most
    8 s) for up to ``seconds``; the last fault, or any other, is raised."""
    deadline = time.monotonic() + seconds
    pause = first
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not transient(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 8.0)
