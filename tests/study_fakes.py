"""Callbacks that make one run of a study fail or be preempted (the tests name them as `tests.study_fakes:Class`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


class FailIn:
    """Raises in the first round of the run whose directory is named ``run``."""

    def __init__(self, run: str) -> None:
        self.run = run
        self._fail = False

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        self._fail = orchestrator.run_dir is not None and Path(orchestrator.run_dir).name == self.run

    def on_round_end(self, state: Any, metrics: dict[str, float]) -> None:
        if self._fail:
            raise RuntimeError(f"injected failure in {self.run}")


class PreemptOnce:
    """Sends the preemption signal (SIGUSR2, as SLURM does) to its own process at round ``at`` of run ``run``, once.

    ``marker`` is created when the signal is sent, so the requeued job runs to the end.
    """

    def __init__(self, run: str, at: int, marker: str) -> None:
        self.run, self.at, self.marker = run, at, Path(marker)
        self._armed = False

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        self._armed = Path(orchestrator.run_dir).name == self.run and not self.marker.exists()

    def on_round_start(self, state: Any) -> None:
        if self._armed and state.round == self.at:
            self._armed = False
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGUSR2)
