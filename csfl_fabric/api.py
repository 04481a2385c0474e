"""The Python API: `run` a config (or `resume` a run) and get its results back (also what the CLI calls)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csfl_callbacks.memory import release_memory

from csfl_fabric.build import Run, build_run, default_run_dir
from csfl_fabric.config import HASH_EXCLUDED, Config, config_hash, load_config, to_yaml
from csfl_fabric.engine.files import DISK_FULL, RunDirectory, RunLock, atomic_write
from csfl_fabric.engine.loggers import read_metrics
from csfl_fabric.engine.resume import WANDB_ID_FILE, latest_checkpoint, load_for
from csfl_fabric.engine.signals import stop_on_signals
from csfl_fabric.errors import USER_ERRORS, CheckpointError, ConfigError, DiskFullError
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
        run_dir: where to write; default a fresh ``runs/<experiment>/<selector>-seed<k>-<hash>/``
            (`csfl_fabric.build.run_name`). An existing ``run_dir`` that holds files is refused unless resumed.

    Raises:
        RunDirectoryError: ``run_dir`` holds another run, or another process is running there.
        RunInterrupted: SIGINT/SIGTERM stopped the run (after a checkpoint).
        RunFailed: every client of a round failed, or a client diverged with ``on_divergence: abort``.
        DiskFullError: the disk filled up; the message names the file and the last good checkpoint.

    Example:
        >>> result = run("configs/smoke.yaml", ["rounds.num_rounds=1", "logging.dir=/tmp/csfl_doctest"])
        >>> 0.0 <= result.summary["final_acc"] <= 1.0
        True
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    target = Path(run_dir) if run_dir is not None else None
    ckpt = None
    if cfg.resume == "auto":
        candidate = target or default_run_dir(cfg)
        path = latest_checkpoint(candidate)
        if path is not None:
            target, ckpt = candidate, _checkpoint_for(cfg, path)
    return _run_in(cfg, target, ckpt, callbacks)


def resume(run_dir: str | Path, overrides: Sequence[str] = (), callbacks: Sequence[Any] = ()) -> RunResult:
    """Continue a run from its latest checkpoint with its own ``config.yaml`` (plus ``overrides``).

    The resumed run ends with the same ``metrics.csv`` and final params as a run that was never stopped.

    Raises:
        ConfigError: ``run_dir`` is not a run directory.
        CheckpointError: it has no checkpoint, the checkpoint is corrupt or unsafe, the overrides change the
            results, or ``rounds.num_rounds`` is below the checkpoint's round.
        RunDirectoryError: another process is running in ``run_dir``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"`{run_dir}` is not a run directory (no config.yaml). Pass a folder under "
                          "runs/<experiment>/.")
    RunLock(run_dir).check()  # a run still going there is the news, not its missing or older checkpoints
    cfg = load_config(run_dir / "config.yaml", overrides)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"Run directory `{run_dir}` has no checkpoint to resume from (checkpoints/round-*.pt); "
                              "start it again with `csfl-fabric run`.")
    return _run_in(cfg, run_dir, _checkpoint_for(cfg, path), callbacks)


def _checkpoint_for(cfg: Config, path: Path) -> dict[str, Any]:
    ckpt = load_for(config_hash(cfg), path, HASH_EXCLUDED)
    ckpt["path"] = path
    done = ckpt["state"].get("round") if isinstance(ckpt["state"], dict) else None
    if not isinstance(done, int):
        raise CheckpointError(f"Checkpoint `{path}` does not fit this run (no round number in its state); delete it "
                              "to resume from the previous checkpoint, or start a new run.")
    if cfg.rounds.num_rounds < done:
        raise CheckpointError(f"Expected `rounds.num_rounds` >= {done} (checkpoint `{path.name}` holds {done} "
                              f"finished rounds) but got {cfg.rounds.num_rounds}: a resume cannot go back. Start a "
                              "new run for fewer rounds.")
    return ckpt


def _run_in(cfg: Config, target: Path | None, ckpt: dict[str, Any] | None, callbacks: Sequence[Any]) -> RunResult:
    """Claim the run directory, build and run; a user error before the first round leaves no run directory."""
    # Only the process that becomes global rank 0 writes: it claims the folder before Fabric starts the others,
    # which learn the path from rank 0 (`build_run`'s broadcast).
    claim = RunDirectory.claim(target, default_run_dir(cfg), resuming=ckpt is not None) if _first_process() \
        else None
    built = None
    try:
        built = build_run(cfg, run_dir=claim.path if claim else target, callbacks=callbacks)
        if claim is None and built.orchestrator.is_writer:  # the environment guessed wrong: claim rank 0's path now
            claim = RunDirectory.claim(built.run_dir, built.run_dir, resuming=ckpt is not None)
        elif claim is not None and not built.orchestrator.is_writer:  # not rank 0 after all: rank 0's path rules
            claim.release()
            claim.discard_if_empty()
            claim = None
        return _execute(built, ckpt)
    except USER_ERRORS:
        # A mistake found before any round finished (a model that does not fit, a selector breaking its contract
        # in round 0): nothing worth keeping, and a half-written folder would look like an unfinished run.
        if claim is not None and (built is None or built.orchestrator.state.round == 0):
            claim.discard()
        raise
    finally:
        if claim is not None:
            claim.release()
            claim.discard_if_empty()
        # Several runs in one process (a comparison) must not accumulate: the run's objects are unreachable once
        # `_execute` returns; collect them now, not at some later automatic collection.
        release_memory(passes=1)


def _first_process() -> bool:
    # Before Fabric launches, only the environment says which process becomes global rank 0: torchrun and SLURM
    # set RANK / SLURM_PROCID in every process, Fabric's own launcher LOCAL_RANK (and NODE_RANK) in those it starts.
    keys = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    rank = next((os.environ[k] for k in keys if k in os.environ), "0")
    return rank == "0" and os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) == "0"


def _execute(built: Run, ckpt: dict[str, Any] | None) -> RunResult:
    writes = built.orchestrator.is_writer  # global rank 0 writes for the whole distributed run
    if ckpt is not None:
        _restore(built, ckpt)  # before anything is written: a checkpoint that does not fit changes nothing
    if writes:
        _prepare_run_dir(built)
    if ckpt is not None:
        for logger in built.fabric.loggers:
            if hasattr(logger, "truncate"):  # metrics.csv/timing.csv and the W&B selection table: the checkpoint's rows
                logger.truncate(ckpt["state"]["round"])
    orchestrator = built.orchestrator
    try:
        with stop_on_signals(orchestrator.guard):
            orchestrator.run()
            orchestrator.guard.check_stop()  # a signal during the last round still exits as interrupted
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        full = e if isinstance(e, DiskFullError) else \
            DiskFullError(e.errno, e.strerror or "", e.filename, latest_checkpoint(built.run_dir))
        full.run_dir = built.run_dir
        raise full from None
    except BaseException as e:
        with contextlib.suppress(AttributeError):
            e.run_dir = built.run_dir  # type: ignore[attr-defined]  # for the CLI's "resume with" line
        raise
    return RunResult(run_dir=built.run_dir, config=built.config, metrics=read_metrics(built.run_dir) if writes else [],
                     summary=dict(orchestrator.summary), params=dict(orchestrator.global_params),
                     global_rank=built.fabric.global_rank)


def _restore(built: Run, ckpt: dict[str, Any]) -> None:
    """Put a built run into the checkpoint's state (in memory only)."""
    try:
        saved, model = ckpt["state"]["global_params"], built.orchestrator.global_params
        wrong = [k for k in model if k not in saved or tuple(saved[k].shape) != tuple(model[k].shape)]
        if wrong or len(saved) != len(model):  # copy_ would broadcast some wrong shapes silently
            k = (wrong or sorted(set(saved) - set(model)))[0]
            raise ValueError(f"global_params[{k!r}] has shape {tuple(saved[k].shape) if k in saved else None}, the "
                             f"model {tuple(model[k].shape) if k in model else None}")
        built.orchestrator.load_state_dict(ckpt["state"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        # A checkpoint edited by hand, or written by other code under the same config hash.
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise CheckpointError(f"Checkpoint `{ckpt['path']}` does not fit this run ({reason}); delete it to resume "
                              "from the previous checkpoint, or start a new run.") from None


def _prepare_run_dir(built: Run) -> None:
    # Only now, with every object built and every check passed, is anything written (atomically: a kill here
    # leaves the previous config.yaml, which a resume needs).
    try:
        built.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(built.run_dir / "config.yaml", to_yaml(built.config))
        atomic_write(built.run_dir / WANDB_ID_FILE, built.wandb_id + "\n")
    except OSError as e:
        raise ConfigError(f"Cannot write the run directory `{built.run_dir}` ({e.strerror or e}). Set "
                          "`logging.dir` to a writable folder.") from None
