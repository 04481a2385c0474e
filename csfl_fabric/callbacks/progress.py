"""A rich progress bar over rounds with the latest accuracy and loss."""

from __future__ import annotations

from typing import Any

from csfl_callbacks.base import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichProgress(Callback):
    """Shows one bar for the run: rounds done, elapsed and remaining time, accuracy and loss."""

    def __init__(self, description: str = "rounds") -> None:
        self.description = description
        self._progress: Progress | None = None
        self._task: Any = None
        self._acc = float("nan")

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Start the bar (at the resumed round, after a resume); in a distributed run, on global rank 0 only."""
        if orchestrator.fabric.global_rank != 0:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), transient=False,
        )
        self._task = self._progress.add_task(self.description, total=state.num_rounds, completed=state.round,
                                             stats="")
        self._progress.start()

    def on_round_end(self, state: Any, metrics: dict[str, float]) -> None:
        """Advance by one round and show the latest figures."""
        if self._progress is None:
            return
        self._acc = metrics.get("eval/acc", self._acc)
        stats = f"acc {self._acc:.3f}  loss {metrics.get('train/loss', float('nan')):.3f}"
        self._progress.update(self._task, completed=state.round + 1, stats=stats)

    def on_run_end(self) -> None:
        """Stop the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
