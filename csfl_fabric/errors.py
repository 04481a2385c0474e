"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations

import errno
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


class SelectorError(ValueError):
    """A selector (often a researcher's own plug-in) returned a selection that breaks the contract."""


class RunDirectoryError(ConfigError):
    """A run directory that is in use by another process, or already holds a run that is not being resumed."""


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra to install."""


#: What the CLI turns into a one-line message and exit code 2 instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, UnknownNameError, InvalidParamsError, CheckpointError,
                                            SelectorError, MissingExtraError)


class DiskFullError(OSError):
    """The disk (or the file-size limit) filled up while the run wrote ``filename``; the CLI exits with code 1.

    ``last_checkpoint`` is the newest complete checkpoint (None if there is none yet); ``run_dir`` is set by
    `csfl_fabric.api` so that the message can say what to resume.
    """

    run_dir: Path | None = None

    def __init__(self, err: int, strerror: str, filename: str | None, last_checkpoint: Path | None = None) -> None:
        super().__init__(err, strerror, filename)
        self.last_checkpoint = last_checkpoint

    def __str__(self) -> str:
        what = "no space left on device" if self.errno != errno.EFBIG else "the file size limit was reached"
        last = f"`{self.last_checkpoint}`" if self.last_checkpoint else "none (no round was checkpointed yet)"
        then = f"resume with: csfl-fabric resume {self.run_dir}" if self.last_checkpoint and self.run_dir else \
            "run it again"
        return (f"{what} while writing `{self.filename or 'a file of the run'}` ({self.strerror}); the last good "
                f"checkpoint is {last}; free space and {then}")


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
