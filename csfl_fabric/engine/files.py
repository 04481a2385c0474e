"""Files a run can trust: atomic writes, a run directory claimed atomically, and a lock held for the run's life.

Every file a run rewrites (config.yaml, wandb_id, summary.json, participation.csv, selection.csv, study.json,
checkpoints, the report's files) goes through `atomic_open`: a temporary file in the same folder, fsynced and
renamed over the target, so a kill or a full disk at any moment leaves either the old or the new file, never half
of one. Append-only logs (metrics.csv) are appended to and cut back on resume instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

try:  # POSIX only; elsewhere runs are not locked (and say so in `RunLock`).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from csfl_fabric.errors import RunDirectoryError

#: errno values that mean "the disk (or the file-size limit) is full": a run stops with one line, not a traceback.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
LOCK_FILE = ".lock"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    On any error the temporary file is removed and ``path`` is untouched; an `OSError` carries ``path`` as its
    ``filename`` (so a full disk names the file it hit).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open(mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or Path(e.filename) == tmp:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # the rename itself must survive a power cut


def atomic_write(path: str | Path, data: str | bytes | memoryview) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically, as `atomic_open` does."""
    text = isinstance(data, str)
    with atomic_open(path, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as fh:
        fh.write(data)


def fsync_dir(dirpath: str | Path) -> None:
    """Flush a folder to disk (fsync), so that a rename or a new entry in it survives a power cut."""
    fd = os.open(dirpath, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_fresh_dir(base: str | Path) -> Path:
    """Create ``base`` or, if it exists, the first free ``base-1``, ``base-2``, ...; returns the folder created.

    ``mkdir`` without ``exist_ok`` is atomic: of two processes asking for the same name at once, one gets
    ``base`` and the other ``base-1``, never both the same folder.
    """
    base = Path(base)
    path, n, retries = base, 1, 0
    while True:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            return path
        except FileExistsError:
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
        except FileNotFoundError:  # a failed run removed the empty parent just now: make it again
            retries += 1
            if retries > 10:
                raise


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, held while a process runs in that directory.

    The lock dies with its process (even under SIGKILL), so a crashed run never leaves a stale lock; the file
    holds the holder's pid and host for the message a second process gets.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fh: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise `RunDirectoryError` naming the process that holds it."""
        if fcntl is None:  # pragma: no cover - Windows
            return self
        while True:
            fh = self.path.open("a+", encoding="utf-8")
            self._take(fh)
            # The holder before us may have removed the file after we opened it: lock the file at the path.
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def check(self) -> None:
        """Raise `RunDirectoryError` if another process holds the lock; changes nothing on disk."""
        if fcntl is None or not self.path.exists():  # a holder always has the file
            return
        with self.path.open(encoding="utf-8") as fh:  # flock needs no write access
            self._take(fh)
            fcntl.flock(fh, fcntl.LOCK_UN)

    def _take(self, fh: IO[str]) -> None:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirectoryError(
                f"Run directory `{self.path.parent}` is in use by {holder} (lock file `{self.path}`); wait "
                "for that run to end, or pass another --run-dir.") from None

    def release(self) -> None:
        """Remove the lock file and let go of the lock (idempotent)."""
        if self._fh is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody else can be using the file
            self._fh.close()
            self._fh = None


class RunDirectory:
    """A run directory this process writes: created atomically (or reused to resume) and locked until `release`.

    Args:
        path: the folder.
        fresh: created by this process (`discard` may remove it again).
        made: the missing parent folders created with it, deepest first.
        lock: the held `RunLock`.
    """

    def __init__(self, path: Path, fresh: bool, made: list[Path], lock: RunLock) -> None:
        self.path, self.fresh, self.made, self.lock = path, fresh, made, lock

    @classmethod
    def claim(cls, path: str | Path | None, default: str | Path, resuming: bool) -> RunDirectory:
        """Create ``default`` (made unique) when ``path`` is None, else use ``path``; lock it.

        Raises:
            RunDirectoryError: another process holds the folder, or it already holds files and this is not a
                resume (a second run there would mix its rows into the first one's files).
            ConfigError: the folder cannot be created.
        """
        target = Path(path if path is not None else default)
        made = [p for p in [target, *target.parents] if not p.exists()][1:]
        try:
            if path is None:
                target, fresh = make_fresh_dir(target), True
            else:
                fresh = not target.exists()
                target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirectoryError(f"Cannot write the run directory `{target}` ({e.strerror or e}). Set "
                                    "`logging.dir` to a writable folder.") from None
        claimed = cls(target, fresh, made, RunLock(target))
        try:
            claimed.lock.acquire()
            held = sorted(p.name for p in target.iterdir() if p.name != LOCK_FILE)
            if held and not resuming:
                raise RunDirectoryError(
                    f"Run directory `{target}` already holds a run ({', '.join(held[:4])}); resume it with "
                    f"`csfl-fabric resume {target}`, or pass a new --run-dir.")
        except BaseException:
            claimed.release()
            claimed.discard_if_empty()
            raise
        return claimed

    def release(self) -> None:
        """Let go of the lock (the folder stays)."""
        self.lock.release()

    def discard(self) -> None:
        """Remove a fresh folder with what the run wrote, and the parents created for it if they are empty."""
        if self.fresh:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_parents()

    def discard_if_empty(self) -> None:
        """Remove a fresh folder (and its created parents) that holds nothing: nothing to resume from there."""
        if self.fresh and self.path.is_dir() and not any(self.path.iterdir()):
            with contextlib.suppress(OSError):
                self.path.rmdir()
            self._remove_parents()

    def _remove_parents(self) -> None:
        for parent in self.made:
            try:
                parent.rmdir()
            except OSError:  # another run lives there now (or it was never made): keep it
                break
