"""The `Checkpoint` callback: the orchestrator's state every n rounds and at the end (format: `engine.checkpoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csfl_callbacks.base import Callback

from csfl_fabric.engine.checkpoint import checkpoint_path, list_checkpoints, save_checkpoint


class Checkpoint(Callback):
    """Saves the orchestrator's state every ``every_n_rounds`` rounds and when the run ends, keeping the last ``keep``.

    The state is taken at round starts (between rounds, once the previous round is logged). When a run
    ends inside a round (a signal, every client failed, an error), the checkpoint holds the state at
    that round's start, so the resumed run replays the whole round exactly.

    Args:
        dirpath: the folder of the checkpoint files (``<run_dir>/checkpoints``).
        every_n_rounds: save before every round that is a multiple of this; 0 saves only at the end.
        keep: how many of the newest checkpoints to keep (>= 1).
        meta: saved alongside the state and checked on resume (e.g. the config hash).
    """

    def __init__(self, dirpath: str | Path, every_n_rounds: int = 0, keep: int = 2,
                 meta: dict[str, Any] | None = None) -> None:
        if every_n_rounds < 0 or keep < 1:
            raise ValueError(f"Expected `every_n_rounds` >= 0 and `keep` >= 1 but got {every_n_rounds} and {keep}.")
        self.dirpath = Path(dirpath)
        self.every_n_rounds = every_n_rounds
        self.keep = keep
        self.meta = meta or {}
        self.bytes_written = 0
        self._orchestrator: Any = None
        self._snapshot: dict[str, Any] | None = None
        self._records = 0  # the history's record count when the snapshot was taken
        self._start = 0
        self._failed = False  # a write failed (a full disk): the run ends; do not try again on the way out

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Remember the orchestrator and the round the run (re)starts at."""
        self._orchestrator, self._start, self._snapshot = orchestrator, state.round, None

    def on_round_start(self, state: Any) -> None:
        """Take the between-rounds state; save it every ``every_n_rounds`` (not the one just resumed from).

        Round 0 counts, so that a run killed before its first multiple of n can still be resumed. The
        per-client history is left out of a snapshot that is not saved at once: it changes only in the
        round's one `ClientHistory.record`, which it can undo, so the round costs O(selected clients), not
        O(clients), here.
        """
        n = self.every_n_rounds
        save = bool(n and state.round % n == 0 and (state.round > self._start or state.round == 0))
        self._snapshot = self._orchestrator.state_dict(history=save)
        self._records = self._orchestrator.state.history.records
        if save:
            self._save(self._snapshot)

    def on_run_end(self, state: Any, orchestrator: Any = None) -> None:
        """Save the final state, or the current round's start state when the run ended inside a round."""
        if self._orchestrator is None or self._failed:
            return
        snapshot = self._snapshot
        inside_round = snapshot is not None and snapshot["round"] == state.round
        self._save(self._round_start(snapshot) if inside_round else self._orchestrator.state_dict())  # type: ignore[arg-type]

    def _round_start(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The snapshot, with the history as it was when it was taken."""
        if "history" in snapshot:
            return snapshot
        history = self._orchestrator.state.history
        recorded = history.records - self._records
        if recorded not in (0, 1):
            raise RuntimeError(f"Expected at most one history record in round {snapshot['round']} but got {recorded}.")
        return {**snapshot, "history": history.state_dict(before_last_record=recorded == 1)}

    def _save(self, state: dict[str, Any]) -> None:
        if self._orchestrator.fabric.global_rank != 0:
            return
        try:
            self.bytes_written += save_checkpoint(checkpoint_path(self.dirpath, state["round"]), state, self.meta)
        except BaseException:
            self._failed = True
            raise
        for old in list_checkpoints(self.dirpath)[: -self.keep]:
            old.unlink()
