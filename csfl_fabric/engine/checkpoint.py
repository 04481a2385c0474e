"""The checkpoint format: files written atomically, listed and read back.

A checkpoint is ``{"format", "meta", "state"}`` saved with `torch.save`: ``state`` is the
orchestrator's ``state_dict()`` (anything with ``state_dict``/``load_state_dict`` works) and ``meta``
what the writer wants to check on resume (the config hash). Files are ``round-000012.pt`` under the
run's ``checkpoints/``; a temporary file is written, fsynced and renamed, so a kill during the write
leaves the previous checkpoint as the latest one. NumPy arrays in the state are written as tensors sharing
their memory (and read back as arrays): a pickled array is copied into the pickle's in-memory buffer, which for
10^6 clients' history (40 MB) raised the write's peak by ~200 MB.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csfl_fabric.errors import CheckpointError

FORMAT = 1
_NAME = re.compile(r"round-(\d+)\.pt")
_ARRAY = "__numpy_array__"  # marks a NumPy array stored as a tensor


def _pack(obj: Any) -> Any:
    """``obj`` with every NumPy array of a dtype torch holds replaced by a marked tensor on the same memory."""
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pack(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf" and obj.dtype.isnative:
        shared = obj.flags.c_contiguous and obj.flags.writeable  # else a copy (torch wants both)
        return {_ARRAY: torch.from_numpy(obj if shared else obj.copy(order="C"))}
    return obj


def _unpack(obj: Any) -> Any:
    """The inverse of `_pack`: the marked tensors as NumPy arrays again."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _ARRAY in obj:
            return obj[_ARRAY].numpy()
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unpack(v) for v in obj)
    return obj


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
            torch.save({"format": FORMAT, "meta": meta or {}, "state": _pack(state)}, fh)
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
    return {**ckpt, "state": _unpack(ckpt["state"])}
