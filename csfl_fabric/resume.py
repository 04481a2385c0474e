"""Resuming a run from its latest checkpoint: which checkpoint, whether it fits the config, and restoring it."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csfl_fabric.callbacks.checkpoint import list_checkpoints, load_checkpoint
from csfl_fabric.config import Config, to_dict
from csfl_fabric.errors import CheckpointError
from csfl_fabric.loggers import CSVMetricsLogger

if TYPE_CHECKING:
    from csfl_fabric.build import Run

#: Keys that may differ between a checkpoint's run and its resume: they do not change what is computed.
#: (``rounds.num_rounds`` may grow, to extend a finished run.)
HASH_EXCLUDED = ("resume", "logging", "checkpoint", "memory", "rounds.num_rounds")
WANDB_ID_FILE = "wandb_id"


def config_hash(config: Config) -> str:
    """A hash of the config keys that decide the results (everything but `HASH_EXCLUDED`)."""
    tree = to_dict(config)
    for key in HASH_EXCLUDED:
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The folder of a run's checkpoints."""
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest finished checkpoint of a run, or None."""
    found = list_checkpoints(checkpoint_dir(run_dir))
    return found[-1] if found else None


def load_for(config: Config, path: Path) -> dict[str, Any]:
    """Load the checkpoint at ``path`` and check that it was written by a run of ``config``.

    Raises:
        CheckpointError: the file is unreadable, or its run's config differs in a key that changes results.
    """
    ckpt = load_checkpoint(path)
    saved = ckpt["meta"].get("config_hash")
    if saved != config_hash(config):
        raise CheckpointError(
            f"Checkpoint `{path}` was written by a run with a different config (hash {saved}, this config "
            f"{config_hash(config)}). Resume with the run's own config.yaml (only {', '.join(HASH_EXCLUDED)} may "
            "change), or start a new run in another directory."
        )
    return ckpt


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Put a built run into the checkpoint's state; ``metrics.csv``/``timing.csv`` keep only its rows."""
    state = ckpt["state"]
    run.orchestrator.load_state_dict(state)
    for logger in run.fabric.loggers:
        if isinstance(logger, CSVMetricsLogger):
            logger.truncate(state["round"])


def wandb_id(run_dir: str | Path) -> str:
    """The run's W&B id, read from ``<run_dir>/wandb_id`` so that a resumed run continues the same W&B run."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    # A fresh id; not from the run's seeded streams, so it changes no result. W&B ids are [a-z0-9].
    return secrets.token_hex(4)
