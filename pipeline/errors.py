"""One exception hierarchy. Every message says what was wrong and what to do about it."""


class CloudmaskError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(CloudmaskError, ValueError):
    """A setting has a value the pipeline cannot use."""


class UnknownModelError(ConfigError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class WeightsError(CloudmaskError):
    """A weights file is missing, unreadable, unsafe or not in the project's format."""


class WeightsMismatchError(WeightsError):
    """A weights file's bands or classes differ from what the data or caller needs."""


class WeightsChangedError(WeightsError):
    """The weights file a job checked holds other content now: the job stops."""


class InputError(CloudmaskError, ValueError):
    """An input array or file does not have the shape, dtype or content expected."""


class PreflightError(CloudmaskError):
    """The items found cannot be run with this model: nothing was started."""


class StacError(CloudmaskError):
    """The STAC API could not be used: unreachable, unknown collection, or nothing found."""


class StacServerError(CloudmaskError):
    """The local STAC API could not be started."""


class StoreLockedError(CloudmaskError):
    """Another job is writing this store."""


class LockWriteError(CloudmaskError):
    """The store's lock cannot be written (a full disk, a read-only store): nothing was started."""


class LeaseLostError(CloudmaskError):
    """This job's lease on an object-storage store was taken over: it must stop writing."""


class JobStopped(CloudmaskError):
    """The job's own bookkeeping cannot go on (its lease was lost, the store cannot be written, the weights
    changed): it stopped; what it finished is recorded, nothing is recorded wrong."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (locks released, clusters closed); the CLI then exits 143."""


_stop_requested: list[int] = []


def request_stop(signum: int) -> None:
    """Record a stop signal, then raise at once (``Terminated`` or ``KeyboardInterrupt``). The exception raised
    from a signal handler can be swallowed where it lands (a ``__del__``, a C library's callback); the record
    survives, and the job raises it again at its next check (:func:`raise_if_stopped`)."""
    _stop_requested.append(signum)
    raise_if_stopped()


def raise_if_stopped() -> None:
    """Raise the stop a signal asked for, if one did (checked between scenes by long loops)."""
    import signal

    if _stop_requested:
        raise KeyboardInterrupt() if _stop_requested[-1] == signal.SIGINT else Terminated()


def stop_requested() -> int | None:
    """The signal number of the last stop asked for, or None."""
    return _stop_requested[-1] if _stop_requested else None
