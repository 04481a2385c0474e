"""The Python API: `run` a config (or `resume` a run) and get its results back (also what the CLI calls)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csfl_callbacks.memory import release_memory

from csfl_fabric.build import Run, build_run, run_name
from csfl_fabric.config import HASH_EXCLUDED, Config, config_hash, load_config, to_yaml
from csfl_fabric.engine.loggers import read_metrics
from csfl_fabric.engine.resume import WANDB_ID_FILE, latest_checkpoint, load_for
from csfl_fabric.engine.signals import stop_on_signals
from csfl_fabric.errors import CheckpointError, ConfigError, RunFailed, RunInterrupted
from csfl_fabric.state import Params


@dataclass
class RunResult:
    """What a finished run leaves: its directory, per-round metrics, summary and final global params.

    In a distributed run every process gets one; ``metrics`` are read back on global rank 0 only (the
    process that wrote them) and are empty elsewhere, while ``params`` and ``summary`` are the same everywhere.
    """

    run_dir: Path
    config: Config
    metrics: list[dict[str, float]]
    summary: dict[str, Any]
    params: Params
    global_rank: int = 0


def run(
    config: Config | str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    run_dir: str | Path | None = None,
) -> RunResult:
    """Run one federated simulation; with ``resume: auto`` continue the run directory's checkpoint if it has one.

    Args:
        config: a `Config`, a YAML path or a nested dict with the config's keys.
        overrides: ``key=value`` strings applied on top (ignored when ``config`` is a `Config`).
        callbacks: extra callbacks (objects with any of the ``on_*`` hooks).
        run_dir: where to write; default ``runs/<experiment>/<selector>-seed<k>/`` (a fresh one unless resuming).

    Raises:
        RunInterrupted: SIGINT/SIGTERM stopped the run (after a checkpoint).
        RunFailed: every client of a round failed, or a client diverged with ``on_divergence: abort``.

    Example:
        >>> result = run("configs/smoke.yaml", ["rounds.num_rounds=1", "logging.dir=/tmp/csfl_doctest"])
        >>> 0.0 <= result.summary["final_acc"] <= 1.0
        True
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    ckpt = None
    if cfg.resume == "auto":
        candidate = Path(run_dir) if run_dir is not None else Path(cfg.logging.dir) / cfg.experiment / run_name(cfg)
        path = latest_checkpoint(candidate)
        if path is not None:
            run_dir, ckpt = candidate, load_for(config_hash(cfg), path, HASH_EXCLUDED)
    try:
        return _execute(build_run(cfg, run_dir=run_dir, callbacks=callbacks), ckpt)
    finally:
        # Several runs in one process (a comparison) must not accumulate: the run's objects are unreachable once
        # `_execute` returns; collect them now, not at some later automatic collection.
        release_memory(passes=1)


def resume(run_dir: str | Path, overrides: Sequence[str] = (), callbacks: Sequence[Any] = ()) -> RunResult:
    """Continue a run from its latest checkpoint with its own ``config.yaml`` (plus ``overrides``).

    The resumed run ends with the same ``metrics.csv`` and final params as a run that was never stopped.

    Raises:
        ConfigError: ``run_dir`` is not a run directory.
        CheckpointError: it has no checkpoint, the checkpoint is corrupt, or the overrides change the results.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"`{run_dir}` is not a run directory (no config.yaml). Pass a folder under "
                          "runs/<experiment>/.")
    cfg = load_config(run_dir / "config.yaml", overrides)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"Run directory `{run_dir}` has no checkpoint to resume from (checkpoints/round-*.pt); "
                              "start it again with `csfl-fabric run`.")
    try:
        return _execute(build_run(cfg, run_dir=run_dir, callbacks=callbacks),
                        load_for(config_hash(cfg), path, HASH_EXCLUDED))
    finally:
        release_memory(passes=1)


def _execute(built: Run, ckpt: dict[str, Any] | None) -> RunResult:
    writes = built.orchestrator.is_writer  # global rank 0 writes for the whole distributed run
    if writes:
        _prepare_run_dir(built)
    if ckpt is not None:
        _restore(built, ckpt)
    orchestrator = built.orchestrator
    try:
        with stop_on_signals(orchestrator.guard):
            orchestrator.run()
            orchestrator.guard.check_stop()  # a signal during the last round still exits as interrupted
    except (RunInterrupted, RunFailed) as e:
        e.run_dir = built.run_dir  # for the CLI's "resume with" line
        raise
    return RunResult(run_dir=built.run_dir, config=built.config, metrics=read_metrics(built.run_dir) if writes else [],
                     summary=dict(orchestrator.summary), params=dict(orchestrator.global_params),
                     global_rank=built.fabric.global_rank)


def _restore(built: Run, ckpt: dict[str, Any]) -> None:
    """Put a built run into the checkpoint's state; ``metrics.csv``/``timing.csv`` keep only its rows."""
    state = ckpt["state"]
    built.orchestrator.load_state_dict(state)
    for logger in built.fabric.loggers:
        if hasattr(logger, "truncate"):  # the CSV files and the W&B selection table
            logger.truncate(state["round"])


def _prepare_run_dir(built: Run) -> None:
    # Only now, with every object built and every check passed, does anything touch the disk.
    try:
        built.run_dir.mkdir(parents=True, exist_ok=True)
        (built.run_dir / "config.yaml").write_text(to_yaml(built.config))
        (built.run_dir / WANDB_ID_FILE).write_text(built.wandb_id + "\n")
    except OSError as e:
        raise ConfigError(f"Cannot write the run directory `{built.run_dir}` ({e.strerror or e}). Set "
                          "`logging.dir` to a writable folder.") from None
