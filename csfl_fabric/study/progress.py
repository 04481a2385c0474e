"""The live view of a study: runs done, running and failed, and each running job's round and last accuracy.

Every launcher (local jobs, SLURM) keeps one `JobStatus` per run; the view reads the rest from the run
directories themselves (the last row of ``metrics.csv``), so it shows the same thing wherever the jobs run.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

#: A job's states, in the order the view counts them.
STATES = ("done", "running", "failed", "queued", "skipped")


@dataclass
class JobStatus:
    """One run of a study as its launcher sees it.

    Attributes:
        name: the run directory's name.
        run_dir: the run's fixed directory.
        num_rounds: the run's ``rounds.num_rounds``.
        action: what the study does with the run (``ran``, ``resumed``, ``restarted``).
        state: one of `STATES`.
        where: the device or SLURM job id it runs on (shown in the view).
        error: the last line(s) of the failure, for a failed run.
        log: the job's log file (its stdout and stderr).
    """

    name: str
    run_dir: Path
    num_rounds: int
    action: str = "ran"
    state: str = "queued"
    where: str = ""
    error: str = ""
    log: Path | None = None


def tail_rows(metrics_csv: str | Path) -> list[dict[str, str]]:
    """The last rows of a ``metrics.csv`` as dicts (those in its last 8 KiB; empty if there is no row yet).

    Reads the header and the file's end only, so a long run's file costs the same as a short one's.
    """
    path = Path(metrics_csv)
    try:
        with path.open("rb") as fh:
            header = fh.readline().decode().strip().split(",")
            fh.seek(max(fh.tell(), os.fstat(fh.fileno()).st_size - 8192))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    # The first line may be cut by the seek and the last one may still be being written: keep whole rows only.
    rows = [ln.split(",") for ln in lines]
    return [dict(zip(header, r, strict=True)) for r in rows if len(r) == len(header) and r != header and r[0].isdigit()]


class StudyView:
    """A rich live table of a study, refreshed by the launcher while it waits; silent when stdout is not a terminal.

    Args:
        title: shown above the table (the experiment).
        jobs: the study's runs, updated in place by the launcher.
        console: where to draw (default: a new `Console` on stdout).
    """

    def __init__(self, title: str, jobs: Sequence[JobStatus], console: Console | None = None) -> None:
        self.title = title
        self.jobs = jobs
        self.console = console or Console()
        self._live: Live | None = None

    def __enter__(self) -> StudyView:
        if self.console.is_terminal:
            self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None

    def refresh(self) -> None:
        """Redraw with the jobs' current states and their run directories' last rows."""
        if self._live is not None:
            self._live.update(self.render())

    def counts(self) -> Counter[str]:
        """How many jobs are in each state."""
        return Counter(j.state for j in self.jobs)

    def render(self) -> Any:
        """The view: a line of counts and a table of the running jobs."""
        counts = self.counts()
        line = Text(f"{self.title}: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
                    + f" (of {len(self.jobs)})")
        table = Table(show_header=True, header_style="bold", box=None)
        for column in ("running", "round", "acc", "on"):
            table.add_column(column, justify="left" if column in ("running", "on") else "right")
        for job in (j for j in self.jobs if j.state == "running"):
            rows = tail_rows(job.run_dir / "metrics.csv")
            done = int(rows[-1]["round"]) + 1 if rows else 0
            acc = next((r["eval/acc"] for r in reversed(rows) if r.get("eval/acc")), "")  # eval_every > 1 leaves gaps
            table.add_row(job.name, f"{done}/{job.num_rounds}", _acc(acc), job.where)
        return Group(line, table)


def _acc(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return "-"
    return "-" if math.isnan(value) else f"{value:.3f}"
