"""The Python API: `run` a config and get its results back (also what the CLI calls)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csfl_fabric.build import build_run
from csfl_fabric.config import Config, load_config, to_yaml
from csfl_fabric.loggers import read_metrics
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
    """Run one federated simulation.

    Args:
        config: a `Config`, a YAML path or a nested dict with the config's keys.
        overrides: ``key=value`` strings applied on top (ignored when ``config`` is a `Config`).
        callbacks: extra callbacks (objects with any of the ``on_*`` hooks).
        run_dir: where to write; default ``runs/<experiment>/<selector>-seed<k>/``.

    Example:
        >>> result = run("configs/smoke.yaml", ["rounds.num_rounds=1", "logging.dir=/tmp/csfl_doctest"])
        >>> 0.0 <= result.summary["final_acc"] <= 1.0
        True
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    built = build_run(cfg, run_dir=run_dir, callbacks=callbacks)
    writes = built.orchestrator.is_writer
    # Only now, with every object built, does anything touch the disk: bad input leaves no half-written run.
    if writes:
        built.run_dir.mkdir(parents=True, exist_ok=True)
        (built.run_dir / "config.yaml").write_text(to_yaml(cfg))
    built.orchestrator.run()
    return RunResult(run_dir=built.run_dir, config=cfg, metrics=read_metrics(built.run_dir) if writes else [],
                     summary=dict(built.orchestrator.summary), params=built.orchestrator.global_params,
                     global_rank=built.fabric.global_rank)
