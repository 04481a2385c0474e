"""What a study reads back: one `RunRecord` per run directory, and the `Report` built from them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    """Where the report went and its numbers: ``table[label][metric] = (mean, ci95 half-width, n)``."""

    report_dir: Path
    table: dict[str, dict[str, tuple[float, float, int]]]
    tests: list[dict[str, Any]]
    plots: list[Path]
    time_unit: str
    #: The settings that differ between the runs (each named in the labels of the rows).
    varied: list[str] = field(default_factory=list)
    #: Rounds completed per label (``"50"``, or ``"5-240"`` when its runs differ).
    rounds: dict[str, str] = field(default_factory=dict)
    #: The settings all runs of the comparison share (from its study.yaml; empty without one).
    shared: dict[str, Any] = field(default_factory=dict)


def load_run(run_dir: Path) -> RunRecord | None:
    """Read one run directory (None if it holds no config.yaml)."""
    from csfl_fabric.engine.loggers import read_metrics  # Lightning (the logger's base class): not for `runs --help`

    if not (run_dir / "config.yaml").exists():
        return None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    method, seed = config["selector"]["name"], int(config["seed"])
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    rows = read_metrics(run_dir) if (run_dir / "metrics.csv").exists() else []
    # A comparison tags its runs [method, seed<k>, *sweep point]; other runs have no sweep point.
    tags = config.get("logging", {}).get("tags") or []
    point = " ".join(tags[2:]) if tags[:2] == [method, f"seed{seed}"] else ""
    return RunRecord(run_dir, method, point, seed, summary.get("status", "unfinished"), summary, rows, settings(config))


def load_runs(directory: str | Path, only: Sequence[Path] | None = None) -> list[RunRecord]:
    """Every run directory below ``directory`` (or just ``only``), sorted by path."""
    found = sorted(p.parent for p in Path(directory).rglob("config.yaml"))
    dirs = sorted(Path(p) for p in only) if only is not None else found
    records = [load_run(d) for d in dirs if "wandb" not in d.parts and d.name != ".compare"]
    return [r for r in records if r is not None]
