"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value, key or file; the message names the key, the value and a fix."""


class UnknownNameError(KeyError):
    """A registry lookup miss; the message lists the valid names, closest first."""

    def __str__(self) -> str:
        # KeyError would otherwise wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class InvalidParamsError(TypeError):
    """Constructor params that a registered component does not accept."""


#: What the CLI turns into a one-line message and exit code 2 instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, UnknownNameError, InvalidParamsError)


class RankFailureError(RuntimeError):
    """Another process of a distributed run failed, was killed or timed out; the CLI exits with code 1."""
