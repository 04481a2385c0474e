"""What a study reads back: one `RunRecord` per run directory, and the `Report` built from them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csfl_fabric.engine.loggers import read_metrics
from csfl_fabric.errors import ConfigError
from csfl_fabric.study.metrics import as_targets
from csfl_fabric.study.settings import settings


@dataclass
class RunRecord:
    """One run directory as the report sees it."""

    run_dir: Path
    method: str
    point: str
    seed: int
    status: str
    summary: dict[str, Any]
    rows: list[dict[str, float]] = field(repr=False)
    #: The run's configured ``rounds.target_accuracy`` values (empty when it set none).
    targets: tuple[float, ...] = ()
    #: The run's settings (`csfl_fabric.study.settings.settings` of its config.yaml).
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rounds(self) -> int:
        """Rounds the run completed (rows of metrics.csv while it has no summary)."""
        return int(self.summary.get("rounds_completed", len(self.rows)))

    @property
    def label(self) -> str:
        """The variant: method plus sweep point (and, in a report, every other setting that differs)."""
        return f"{self.method} {self.point}".strip()


@dataclass
class Report:
    """Where the report went and its numbers: ``table[label][metric] = (mean, ci95 half-width, n)``.

    For a time to a target accuracy, ``n`` counts the runs that reached it and ``runs[label]`` all finished
    runs of the variant ("reached in n/m seeds"); ``targets`` are the study's absolute target accuracies,
    chosen as ``target_note`` says, and ``ranking`` orders the variants by the time to the first target.
    """

    report_dir: Path
    table: dict[str, dict[str, tuple[float, float, int]]]
    tests: list[dict[str, Any]]
    plots: list[Path]
    time_unit: str
    targets: tuple[float, ...] = ()
    target_note: str = ""
    runs: dict[str, int] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)
    #: The settings that differ between the runs (each named in the labels of the rows).
    varied: list[str] = field(default_factory=list)
    #: Rounds completed per label (``"50"``, or ``"5-240"`` when its runs differ).
    rounds: dict[str, str] = field(default_factory=dict)
    #: The settings all runs of the comparison share (from its study.yaml; empty without one).
    shared: dict[str, Any] = field(default_factory=dict)


def load_run(run_dir: Path) -> RunRecord | None:
    """Read one run directory (None if it holds no config.yaml)."""
    if not (run_dir / "config.yaml").exists():
        return None
    config = _read(run_dir / "config.yaml", yaml.safe_load)
    try:
        method, seed = config["selector"]["name"], int(config["seed"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"`{run_dir / 'config.yaml'}` is not a run's config (no selector.name or seed); move "
                          "it out of the runs directory.") from None
    summary = _read(run_dir / "summary.json", json.loads) if (run_dir / "summary.json").exists() else {}
    rows = read_metrics(run_dir) if (run_dir / "metrics.csv").exists() else []
    # A comparison tags its runs [method, seed<k>, *sweep point]; other runs have no sweep point.
    tags = config.get("logging", {}).get("tags") or []
    point = " ".join(tags[2:]) if tags[:2] == [method, f"seed{seed}"] else ""
    targets = as_targets(config.get("rounds", {}).get("target_accuracy"))
    return RunRecord(run_dir, method, point, seed, summary.get("status", "unfinished"), summary, rows, targets,
                     settings(config))


def _read(path: Path, parse: Any) -> Any:
    # A file broken by hand or by a disk error: one line naming it, not a traceback from the parser.
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = str(e).splitlines()[0]
        raise ConfigError(f"`{path}` cannot be read ({type(e).__name__}: {reason}); fix or delete it (a run's "
                          "summary.json is rewritten when it is resumed).") from None


def load_runs(directory: str | Path, only: Sequence[Path] | None = None) -> list[RunRecord]:
    """Every run directory below ``directory`` (or just ``only``), sorted by path."""
    found = sorted(p.parent for p in Path(directory).rglob("config.yaml"))
    dirs = sorted(Path(p) for p in only) if only is not None else found
    records = [load_run(d) for d in dirs if "wandb" not in d.parts and d.name != ".compare"]
    return [r for r in records if r is not None]
