"""Progress over rounds: a live rich bar on a terminal, one plain line every few rounds in a log file or pipe."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from csfl_callbacks.base import Callback

#: Without a terminal, a line about every this share of the run (and for the first and last round).
PLAIN_SHARE = 0.1


class RichProgress(Callback):
    """Shows the run's rounds done, elapsed and remaining time, accuracy and loss.

    On a terminal this is a live rich bar. When stdout is not a terminal (a log file, a pipe, a SLURM job) a
    live bar would print nothing until the run ends, so it prints one plain line every ``every`` rounds instead
    (default: about every tenth of the run) and a last line with the final figures.

    Args:
        description: the run's name, shown first.
        every: rounds between plain lines; 0 picks about a tenth of the run.
        live: force the live bar (True) or plain lines (False); default: live when stdout is a terminal.
    """

    def __init__(self, description: str = "rounds", every: int = 0, live: bool | None = None) -> None:
        self.description = description
        self.every = every
        self.live = live
        self._progress: Any = None
        self._task: Any = None
        self._plain = False
        self._acc = float("nan")
        self._best = float("nan")
        self._started = 0.0
        self._total = 0

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Start the bar (at the resumed round, after a resume); in a distributed run, on global rank 0 only."""
        if orchestrator.fabric.global_rank != 0:
            return
        self._started, self._total = time.perf_counter(), state.num_rounds
        live = sys.stdout.isatty() if self.live is None else self.live
        if not live:
            self._plain = True
            self.every = self.every or max(1, math.ceil(state.num_rounds * PLAIN_SHARE))
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), transient=False,
        )
        self._task = self._progress.add_task(self.description, total=state.num_rounds, completed=state.round,
                                             stats="")
        self._progress.start()

    def on_round_end(self, state: Any, metrics: dict[str, float]) -> None:
        """Advance by one round and show the latest figures (a plain line every ``every`` rounds)."""
        self._acc = metrics.get("eval/acc", self._acc)
        if not math.isnan(self._acc) and not self._acc <= self._best:
            self._best = self._acc
        stats = f"acc {self._acc:.3f}  loss {metrics.get('train/loss', float('nan')):.3f}"
        done = state.round + 1
        if self._progress is not None:
            self._progress.update(self._task, completed=done, stats=stats)
        elif self._plain and (done % self.every == 0 or done in (1, self._total)):
            print(f"{self.description}  round {done}/{self._total}  {stats}  {self._elapsed()}", flush=True)

    def on_run_end(self, state: Any) -> None:
        """Stop the bar; without a terminal, print the final figures."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self._plain:
            print(f"{self.description}  finished {state.round}/{self._total} rounds  final acc {self._acc:.3f}  "
                  f"best acc {self._best:.3f}  {self._elapsed()}", flush=True)
            self._plain = False

    def _elapsed(self) -> str:
        return f"{time.perf_counter() - self._started:.1f} s"
