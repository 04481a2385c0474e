"""The checkpoint format: files written atomically, listed and read back.

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
