"""The checkpoint format: files written atomically, listed and read back safely.

A checkpoint is ``{"format", "meta", "state"}`` saved with `torch.save`: ``state`` is the
orchestrator's ``state_dict()`` (anything with ``state_dict``/``load_state_dict`` works) and ``meta``
what the writer wants to check on resume (the config hash). Files are ``round-000012.pt`` under the
run's ``checkpoints/``, written through `csfl_fabric.engine.files.atomic_write`, so a kill during the write
leaves the previous checkpoint as the latest one.

Loading uses ``torch.load(weights_only=True)``: a checkpoint someone hands you cannot run code. What the safe
loader does not accept is stored in a form it does: NumPy arrays of numbers (selector state, the history)
as tensors on their memory (``{"__numpy_array__": tensor}``: as bytes each would be copied into the pickle,
which for 10^6 clients' history, 40 MB, raised a write's peak by ~200 MB), other NumPy arrays and scalars (the
NumPy generator's state) as ``{"__csfl_numpy__": dtype, shape, raw bytes}``; both are rebuilt exactly on load.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csfl_fabric.engine.files import DISK_FULL, atomic_write
from csfl_fabric.errors import CheckpointError, DiskFullError

FORMAT = 2  # 2: NumPy values encoded for the safe loader (format 1 pickled them)
_NAME = re.compile(r"round-(\d+)\.pt")
_NUMPY = "__csfl_numpy__"
_PLAIN = (str, int, float, bool, bytes, type(None), torch.Tensor, torch.dtype, torch.device)
_ARRAY = "__numpy_array__"  # a NumPy array of numbers, stored as a tensor on its memory


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


def encode(obj: Any, where: str = "state") -> Any:
    """``obj`` with every NumPy array and scalar replaced by a form ``torch.load(weights_only=True)`` accepts.

    >>> decode(encode({"a": np.arange(3, dtype=np.uint32)}))["a"]
    array([0, 1, 2], dtype=uint32)

    Raises:
        TypeError: ``obj`` holds something else the safe loader would refuse (named by its path).
    """
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf" and obj.dtype.isnative:
        shared = obj.flags.c_contiguous and obj.flags.writeable  # else a copy (torch wants both)
        return {_ARRAY: torch.from_numpy(obj if shared else obj.copy(order="C"))}
    if isinstance(obj, (np.ndarray, np.generic)):
        a = np.asarray(obj)
        if a.dtype.hasobject:
            raise TypeError(f"Checkpoint value `{where}` is a NumPy array of Python objects; store numbers.")
        return {_NUMPY: (a.dtype.str, list(a.shape), a.tobytes(), isinstance(obj, np.generic))}
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, Mapping):
        return {k: encode(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"Checkpoint value `{where}` is a {type(obj).__name__}; a `state_dict()` may hold tensors, "
                    "NumPy arrays, numbers, strings, bytes, None, lists, tuples and dicts.")


def decode(obj: Any) -> Any:
    """Undo `encode`."""
    if isinstance(obj, dict):
        if _ARRAY in obj and len(obj) == 1:
            return obj[_ARRAY].numpy()
        if _NUMPY in obj and len(obj) == 1:
            dtype, shape, raw, scalar = obj[_NUMPY]
            a = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
            return a[()] if scalar else a
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any] | None = None) -> int:
    """Write a checkpoint atomically (temporary file, fsync, rename); returns its size in bytes.

    The file is serialised in memory first, so that a full disk surfaces as one `DiskFullError` naming the
    file (torch's own writer reports it as an internal zip error).

    Raises:
        DiskFullError: no space left (or the file-size limit reached); the previous checkpoint is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "meta": encode(meta or {}, "meta"), "state": encode(state)}, buffer)
    try:
        atomic_write(path, buffer.getbuffer())
    except OSError as e:
        if e.errno in DISK_FULL:
            last = [p for p in list_checkpoints(path.parent) if p != path]
            raise DiskFullError(e.errno, e.strerror or "", str(path), last[-1] if last else None) from None
        raise
    return path.stat().st_size


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with the safe loader (nothing in the file is executed).

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, of an unknown format, or holds
            objects the safe loader refuses (as a tampered or foreign file would).
    """
    path = Path(path)
    fix = f"delete `{path}` to resume from the previous checkpoint, or start a new run"
    try:
        with warnings.catch_warnings():  # a raw pickle (not a torch file) also warns about its protocol: one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint `{path}` does not exist.") from None
    except pickle.UnpicklingError as e:
        culprit = re.search(r"GLOBAL (\S+)", str(e))
        if "Weights only load failed" not in str(e) or culprit is None:
            raise CheckpointError(f"Checkpoint `{path}` is corrupt or not a checkpoint (UnpicklingError); {fix}.") \
                from None
        # The safe loader refused a global: a tampered or foreign file (or one of format 1, which pickled NumPy).
        raise CheckpointError(f"Checkpoint `{path}` asks to load `{culprit.group(1)}`, which a checkpoint never "
                              f"holds; it was refused and nothing in it ran. Do not trust this file; {fix}.") from None
    except Exception as e:  # noqa: BLE001 - truncated, garbage, not a zip: all mean the same to the user
        raise CheckpointError(f"Checkpoint `{path}` is corrupt or not a checkpoint ({type(e).__name__}); {fix}.") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state" not in ckpt:
        raise CheckpointError(f"`{path}` is not a csfl_fabric checkpoint of format {FORMAT}; {fix}.")
    return decode(ckpt)
