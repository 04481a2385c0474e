"""Resuming a run from its latest checkpoint: which checkpoint, whether it fits the config, and the W&B id."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from csfl_fabric.engine.checkpoint import list_checkpoints, load_checkpoint
from csfl_fabric.errors import CheckpointError

WANDB_ID_FILE = "wandb_id"


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The folder of a run's checkpoints."""
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest finished checkpoint of a run, or None."""
    found = list_checkpoints(checkpoint_dir(run_dir))
    return found[-1] if found else None


def load_for(config_hash: str, path: Path, excluded: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load the checkpoint at ``path`` and check that it was written by a run whose config hashes to ``config_hash``.

    Args:
        config_hash: `csfl_fabric.config.config_hash` of the config resumed with.
        path: the checkpoint file.
        excluded: the config keys the hash leaves out (named in the error: they may change on a resume).

    Raises:
        CheckpointError: the file is unreadable, or its run's config differs in a key that changes results.
    """
    ckpt = load_checkpoint(path)
    saved = ckpt["meta"].get("config_hash")
    if saved != config_hash:
        raise CheckpointError(
            f"Checkpoint `{path}` was written by a run with a different config (hash {saved}, this config "
            f"{config_hash}). Resume with the run's own config.yaml (only {', '.join(excluded)} may "
            "change), or start a new run in another directory."
        )
    return ckpt


def wandb_id(run_dir: str | Path) -> str:
    """The run's W&B id, read from ``<run_dir>/wandb_id`` so that a resumed run continues the same W&B run."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    # A fresh id; not from the run's seeded streams, so it changes no result. W&B ids are [a-z0-9].
    return secrets.token_hex(4)
