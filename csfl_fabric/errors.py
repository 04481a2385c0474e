"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations

import signal
from pathlib import Path


class ConfigError(ValueError):
    """A bad config value, key or file; the message names the key, the value and a fix."""


class UnknownNameError(KeyError):
    """A registry lookup miss; the message lists the valid names, closest first."""

    def __str__(self) -> str:
        # KeyError would otherwise wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class InvalidParamsError(TypeError):
    """Constructor params that a registered component does not accept."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or written by a different config."""


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra to install."""


#: What the CLI turns into a one-line message and exit code 2 instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, UnknownNameError, InvalidParamsError, CheckpointError,
                                            MissingExtraError)


class RunFailed(RuntimeError):
    """The run cannot go on (every client of a round failed, or a client diverged under ``on_divergence: abort``).

    The checkpoint callback still writes the state at the start of the failed round.
    """

    #: Set by `csfl_fabric.api` so that the CLI can say which directory to resume.
    run_dir: Path | None = None


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the run stopped at a client boundary after checkpointing."""

    run_dir: Path | None = None

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal (130, 143)."""
        return 128 + self.signum


class RankFailureError(RuntimeError):
    """Another process of a distributed run failed, was killed or timed out; the CLI exits with code 1."""
