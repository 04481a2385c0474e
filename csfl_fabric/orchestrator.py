"""The round loop: select -> train -> aggregate -> feedback -> evaluate -> callbacks -> log."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import Tensor

from csfl_fabric.aggregation import Aggregator
from csfl_fabric.data.store import ClientStore
from csfl_fabric.data.systems import RoundPlan, SystemModel
from csfl_fabric.loggers import WandbLogger, write_json
from csfl_fabric.selection.base import ClientSelector, check_selection
from csfl_fabric.state import ClientHistory, ClientResult, Feedback, Params, RunState, Selection, SelectionContext
from csfl_fabric.telemetry import Participation, selection_metrics
from csfl_fabric.trainer import ClientTrainer


@dataclass(frozen=True)
class RoundSettings:
    """The `rounds:` config section."""

    num_rounds: int
    clients_per_round: int
    eval_every: int = 1
    target_accuracy: float | None = None


def flat_update(params: Params, global_params: Params) -> Tensor:
    """A client's update as one float32 CPU vector: its floating-point entries minus the global ones.

    >>> flat_update({"w": torch.tensor([3.0, 1.0])}, {"w": torch.tensor([1.0, 1.0])})
    tensor([2., 0.])
    """
    deltas = [(t.float() - global_params[k].float()).reshape(-1) for k, t in params.items() if t.is_floating_point()]
    return torch.cat(deltas).cpu()


class Orchestrator:
    """Runs the rounds of one federated simulation and fires the hooks of `csfl_fabric.callbacks.HOOKS`.

    It holds no method-specific code: the selector, aggregator and trainer are passed in, built by
    `csfl_fabric.build`. Hooks go through ``fabric.call`` with keyword arguments only.
    """

    def __init__(
        self,
        *,
        fabric: Fabric,
        store: ClientStore,
        trainer: ClientTrainer,
        selector: ClientSelector,
        selector_key: str,
        aggregator: Aggregator,
        global_params: Params,
        test_data: tuple[Tensor, Tensor],
        rounds: RoundSettings,
        selection_rng: np.random.Generator,
        systems: SystemModel,
        run_dir: Path | None = None,
    ) -> None:
        self.fabric = fabric
        self.store = store
        self.trainer = trainer
        self.selector = selector
        self.selector_key = selector_key
        self.aggregator = aggregator
        self.global_params = global_params
        self.test_data = test_data
        self.rounds = rounds
        self.selection_rng = selection_rng
        self.systems = systems
        self.participation = Participation(store.num_clients)
        self.run_dir = run_dir
        self.state = RunState(num_rounds=rounds.num_rounds, history=ClientHistory(store.num_samples))
        self.summary: dict[str, Any] = {}
        # The round's flattened client updates, kept by `_train` only for selectors with `needs_updates`.
        self._updates: dict[int, Tensor] | None = None

    def run(self) -> RunState:
        """Run from ``state.round`` to the last round (or until a callback sets ``state.should_stop``)."""
        state = self.state
        started = time.perf_counter()
        status = "failed"
        self.fabric.call("on_run_start", state=state, orchestrator=self)
        try:
            while state.round < self.rounds.num_rounds and not state.should_stop:
                self._round(state)
                state.round += 1
            status = "success"
        finally:
            self.fabric.call("on_run_end", state=state, orchestrator=self)
            self.summary.update(rounds_completed=state.round, stop_reason=state.stop_reason, status=status,
                                wall_seconds=time.perf_counter() - started, selector=self.selector_key,
                                sim_total_s=self.systems.total_s, **self.participation.summary())
            if self.run_dir is not None and self.fabric.global_rank == 0:
                write_json(self.run_dir / "summary.json", self.summary)
                self.participation.write_csv(self.run_dir / "participation.csv")
            for logger in self.fabric.loggers:
                logger.finalize(status)
        return state

    def _round(self, state: RunState) -> None:
        r = state.round
        started = time.perf_counter()
        state.metrics = {}
        self.fabric.call("on_round_start", state=state)

        # 1. Select among the available clients, with the selection stream's generator only.
        ctx = self._context(r)
        selection = self._select(ctx)
        self.fabric.call("on_selection", state=state, selection=selection)

        # 2. The simulated clock decides who reports (dropouts, deadline, over-commitment); only they train,
        #    each from the same global params, folded into the running sum at once.
        plan = self.systems.plan(selection.ids, self.rounds.clients_per_round)
        results = self._train(plan.apply(selection), r)

        # 3. Aggregate into the new global model (unchanged when no client reported).
        if results:
            self.global_params = self.aggregator.compute()

        # 4. Feedback to the selector and the per-client history.
        state.history.record(r, results)  # type: ignore[union-attr]
        self.selector.update(Feedback(round=r, selection=selection, results=results, durations=plan.durations,
                                      dropped=plan.dropped, updates=self._updates))
        self.participation.record(selection.ids, np.array([c.client_id for c in results], np.int64), plan.dropped)

        # 5. Metrics, with evaluation every `eval_every` rounds and always in the last one.
        state.metrics.update(self._round_metrics(selection, results))
        state.metrics.update(selection_metrics(selection, len(ctx.available)))
        state.metrics.update(self.systems.metrics(plan))
        self._log_selection(r, selection, plan)
        if (r + 1) % self.rounds.eval_every == 0 or r == self.rounds.num_rounds - 1:
            state.metrics.update(self.trainer.evaluate(self.global_params, *self.test_data))
            self._track_accuracy(r, state.metrics["eval/acc"])
        state.metrics["time/wall_round_s"] = time.perf_counter() - started

        # 6. Callbacks may add metrics or ask to stop; then one log call per round.
        self.fabric.call("on_round_end", state=state, metrics=state.metrics, orchestrator=self)
        self.fabric.log_dict(state.metrics, step=r)

    def _train(self, selection: Selection, r: int) -> list[ClientResult]:
        state = self.state
        self.aggregator.reset(self.global_params)
        results: list[ClientResult] = []
        updates: dict[int, Tensor] | None = {} if self.selector.needs_updates else None
        ids = selection.ids.tolist()
        # Lazy: the sequential trainer trains a client when its item is drawn, the cohort trainer a chunk at a time.
        fitted = self.trainer.fit_many(self.global_params, [self.store.client(c, r) for c in ids])
        for i, client_id in enumerate(ids):
            self.fabric.call("on_client_start", state=state, client_id=client_id)
            params, result = next(fitted)
            if updates is not None:
                updates[client_id] = flat_update(params, self.global_params)
            weight = float(selection.weights[i]) if selection.weights is not None else float(result.num_samples)
            self.aggregator.update(params, weight)
            del params  # views of the reused model: only the running sum survives the client
            results.append(result)
            self.fabric.call("on_client_end", state=state, client_id=client_id, result=result)
        self._updates = updates
        return results

    def _context(self, r: int) -> SelectionContext:
        return SelectionContext(
            round=r,
            k=self.systems.num_to_select(self.rounds.clients_per_round),
            available=self.systems.available(r),
            num_samples=self.store.num_samples,
            history=self.state.history,  # type: ignore[arg-type]
            rng=self.selection_rng,
            probe=lambda ids, batch_size=None: self.probe(ids, r, batch_size),
            profiles=self.systems.profiles,
        )

    def _select(self, ctx: SelectionContext) -> Selection:
        if len(ctx.available) == 0:  # nobody online: an idle round (the clock still waits, see SystemModel.plan)
            return Selection(ids=np.zeros(0, dtype=np.int64))
        selection = self.selector.select(ctx)
        check_selection(selection, ctx, self.selector_key, self.selector.allows_duplicates)
        return selection

    def _log_selection(self, r: int, selection: Selection, plan: RoundPlan) -> None:
        for logger in self.fabric.loggers if self.fabric.global_rank == 0 else ():
            if isinstance(logger, WandbLogger):
                logger.log_selection(r, selection, plan.durations, plan.status)

    def probe(self, ids: Sequence[int], round_idx: int, batch_size: int | None = None) -> np.ndarray:
        """Current loss of the global model on each of ``ids`` (counted in ``select/probed_clients`` and the clock).

        ``batch_size=None`` evaluates each client's full local data; an int, its first seeded mini-batch.
        """
        self.state.metrics["select/probed_clients"] = self.state.metrics.get("select/probed_clients", 0) + len(ids)
        self.systems.record_probe(ids, batch_size)
        clients = [self.store.client(int(c), round_idx) for c in ids]
        return self.trainer.losses(self.global_params, clients, batch_size)

    @staticmethod
    def _round_metrics(selection: Selection, results: Sequence[ClientResult]) -> dict[str, float]:
        samples = sum(r.samples_processed for r in results)
        loss = sum(r.loss * r.samples_processed for r in results) / samples if samples else math.nan
        return {"train/loss": loss, "select/num_selected": float(len(selection.ids))}

    def _track_accuracy(self, r: int, acc: float) -> None:
        s = self.summary
        s["final_acc"] = acc
        if acc > s.get("best_acc", -math.inf):
            s.update(best_acc=acc, best_round=r)
        target = self.rounds.target_accuracy
        if target is not None and acc >= target and "rounds_to_target" not in s:
            s["rounds_to_target"] = r + 1
            s["sim_seconds_to_target"] = self.systems.total_s
