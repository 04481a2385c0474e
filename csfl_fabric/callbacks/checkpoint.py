"""Checkpoints written atomically every n rounds and at the end; the files and how to read them back.

A checkpoint is ``{"format", "meta", "state"}`` saved with `torch.save`: ``state`` is the
orchestrator's ``state_dict()`` (anything with ``state_dict``/``load_state_dict`` works) and ``meta``
what the writer wants to check on resume (the config hash). Files are ``round-000012.pt`` under the
run's ``checkpoints/``; a temporary file is written, fsynced and renamed, so a kill during the write
leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from csfl_fabric.callbacks.base import Callback
from csfl_fabric.errors import CheckpointError

FORMAT = 1
_NAME = re.compile(r"round-(\d+)\.pt")


def checkpoint_path(dirpath: str | Path, round_idx: int) -> Path:
    """Where the checkpoint of the state before round ``round_idx`` goes."""
    return Path(dirpath) / f"round-{round_idx:06d}.pt"


def list_checkpoints(dirpath: str | Path) -> list[Path]:
    """Finished checkpoints in ``dirpath``, oldest first (temporary files are never listed)."""
    d = Path(dirpath)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any] | None = None) -> int:
    """Write a checkpoint atomically (temporary file, fsync, rename); returns its size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as fh:
            torch.save({"format": FORMAT, "meta": meta or {}, "state": state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)  # the rename itself must survive a power cut
    return path.stat().st_size


def _fsync_dir(dirpath: Path) -> None:
    fd = os.open(dirpath, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or of an unknown format.
    """
    path = Path(path)
    fix = f"delete `{path}` to resume from the previous checkpoint, or start a new run"
    try:
        # Not weights_only: the state holds NumPy arrays and generator states; it is our own file.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint `{path}` does not exist.") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"Checkpoint `{path}` is corrupt or not a checkpoint ({type(e).__name__}); {fix}.") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state" not in ckpt:
        raise CheckpointError(f"`{path}` is not a csfl_fabric checkpoint of format {FORMAT}; {fix}.")
    return ckpt


class Checkpoint(Callback):
    """Saves the orchestrator's state every ``every_n_rounds`` rounds and when the run ends, keeping the last ``keep``.

    The state is taken at round starts (between rounds, once the previous round is logged). When a run
    ends inside a round (a signal, every client failed, an error), the checkpoint holds the state at
    that round's start, so the resumed run replays the whole round exactly.

    Args:
        dirpath: the folder of the checkpoint files (``<run_dir>/checkpoints``).
        every_n_rounds: save before every round that is a multiple of this; 0 saves only at the end.
        keep: how many of the newest checkpoints to keep (>= 1).
        meta: saved alongside the state and checked on resume (e.g. the config hash).
    """

    def __init__(self, dirpath: str | Path, every_n_rounds: int = 0, keep: int = 2,
                 meta: dict[str, Any] | None = None) -> None:
        if every_n_rounds < 0 or keep < 1:
            raise ValueError(f"Expected `every_n_rounds` >= 0 and `keep` >= 1 but got {every_n_rounds} and {keep}.")
        self.dirpath = Path(dirpath)
        self.every_n_rounds = every_n_rounds
        self.keep = keep
        self.meta = meta or {}
        self.bytes_written = 0
        self._orchestrator: Any = None
        self._snapshot: dict[str, Any] | None = None
        self._start = 0

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Remember the orchestrator and the round the run (re)starts at."""
        self._orchestrator, self._start, self._snapshot = orchestrator, state.round, None

    def on_round_start(self, state: Any) -> None:
        """Take the between-rounds state; save it every ``every_n_rounds`` (not the one just resumed from).

        Round 0 counts, so that a run killed before its first multiple of n can still be resumed.
        """
        self._snapshot = self._orchestrator.state_dict()
        n = self.every_n_rounds
        if n and state.round % n == 0 and (state.round > self._start or state.round == 0):
            self._save(self._snapshot)

    def on_run_end(self, state: Any, orchestrator: Any = None) -> None:
        """Save the final state, or the current round's start state when the run ended inside a round."""
        if self._orchestrator is None:
            return
        inside_round = self._snapshot is not None and self._snapshot["round"] == state.round
        self._save(self._snapshot if inside_round else self._orchestrator.state_dict())  # type: ignore[arg-type]

    def _save(self, state: dict[str, Any]) -> None:
        if self._orchestrator.fabric.global_rank != 0:
            return
        self.bytes_written += save_checkpoint(checkpoint_path(self.dirpath, state["round"]), state, self.meta)
        for old in list_checkpoints(self.dirpath)[: -self.keep]:
            old.unlink()
