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


class InputError(CloudmaskError, ValueError):
    """An input array or file does not have the shape, dtype or content expected."""
