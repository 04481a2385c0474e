"""The callback base: every hook is optional and receives keyword arguments only."""

from __future__ import annotations

from typing import Any

#: The hooks the orchestrator fires, in the order they occur within a run.
HOOKS: tuple[str, ...] = (
    "on_run_start",
    "on_round_start",
    "on_selection",
    "on_client_start",
    "on_client_end",
    "on_round_end",
    "on_run_end",
)


class Callback:
    """Base class with no-op hooks; override the ones you need.

    Hooks are dispatched with ``fabric.call``'s semantics (`csfl_callbacks.dispatch.HookDispatcher`),
    which passes each hook only the keyword arguments its signature names, so an override may take fewer
    arguments than listed here.
    A callback adds metrics by writing into ``metrics`` in `on_round_end` and asks the run to stop
    by setting ``state.should_stop = True``.
    """

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        """Called once before the first round (also after a resume)."""

    def on_round_start(self, state: Any) -> None:
        """Called at the start of every round, before selection."""

    def on_selection(self, state: Any, selection: Any) -> None:
        """Called when the round's clients have been selected."""

    def on_client_start(self, state: Any, client_id: int) -> None:
        """Called before a selected client trains."""

    def on_client_end(self, state: Any, client_id: int, result: Any) -> None:
        """Called after a client trained and its params were folded into the aggregate (not for a failed client)."""

    def on_round_end(self, state: Any, metrics: dict[str, float], orchestrator: Any) -> None:
        """Called after aggregation and evaluation; add to ``metrics`` here, before they are logged."""

    def on_run_end(self, state: Any, orchestrator: Any) -> None:
        """Called once when the run ends, normally or not (from a ``finally`` block)."""
