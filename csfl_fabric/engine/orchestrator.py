"""The round loop: select -> train -> aggregate -> feedback -> evaluate -> callbacks -> log."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from csfl_callbacks.dispatch import HookDispatcher
from torch import Tensor

from csfl_fabric.aggregation import Aggregator
from csfl_fabric.data.store import ClientData, ClientStore
from csfl_fabric.data.systems import RoundPlan, SystemModel
from csfl_fabric.engine.distributed import Ranks
from csfl_fabric.engine.fabric import Fabric
from csfl_fabric.engine.guard import ClientGuard
from csfl_fabric.engine.loggers import WandbLogger, log_metrics, write_json
from csfl_fabric.engine.rng import global_rng_state, set_global_rng_state
from csfl_fabric.engine.telemetry import participation_summary, selection_metrics, write_participation_csv
from csfl_fabric.errors import RunInterrupted
from csfl_fabric.selection.base import ClientSelector, check_selection
from csfl_fabric.state import (
    ClientHistory,
    ClientResult,
    Feedback,
    Params,
    ProbeTally,
    RunState,
    Selection,
    SelectionContext,
)
from csfl_fabric.training.flat import flat_update
from csfl_fabric.training.sequential import ClientTrainer


@dataclass(frozen=True)
class RoundSettings:
    """The `rounds:` config section."""

    num_rounds: int
    clients_per_round: int
    eval_every: int = 1
    #: The absolute target accuracies, sorted; the summary's ``rounds_to_target`` is that of the lowest.
    target_accuracy: tuple[float, ...] = ()


#: What `Orchestrator.probe` can measure on a client before the round (`SelectionContext.probe`).
PROBE_SIGNALS = ("loss", "update_norm")


class Orchestrator:
    """Runs the rounds of one federated simulation and fires the hooks of `csfl_fabric.callbacks.HOOKS`.

    It holds no method-specific code: the selector, aggregator and trainer are passed in, built by
    `csfl_fabric.build`. Hooks are fired with keyword arguments only, with ``fabric.call``'s semantics
    (see `HookDispatcher`).
    """

    #: Attributes whose ``state_dict()`` a checkpoint holds: a component added later registers here in one line.
    STATEFUL: tuple[str, ...] = ("aggregator", "selector", "systems")

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
        guard: ClientGuard | None = None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.fabric = fabric
        self.call = HookDispatcher(callbacks)
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
        self.run_dir = run_dir
        self.guard = guard or ClientGuard()
        self.ranks = Ranks(fabric)
        # Read once, read-only: `store.num_samples` copies O(clients) on every call (8 MB for 10^6 clients).
        self._num_samples = store.num_samples
        self._num_samples.setflags(write=False)
        self.state = RunState(num_rounds=rounds.num_rounds, history=ClientHistory(store.num_samples))
        self.summary: dict[str, Any] = {}
        # The round's flattened client updates, kept by `_train` only for selectors with `needs_updates`.
        self._updates: dict[int, Tensor] | None = None
        self.probes = ProbeTally()  # the current round's probe costs (`probe`, `probe_gradients`)
        # A declared signal: computed once, and only for selectors that opt in (it reveals the clients' labels).
        self.label_histograms = store.label_histograms() if selector.needs_label_histograms else None
        # Wall seconds and sessions of the run before this session (from the checkpoint resumed from): a resumed
        # run's summary adds up every session that produced its rounds.
        self._wall_before, self._sessions_before = 0.0, 0
        self._session_start: float | None = None

    def run(self) -> RunState:
        """Run from ``state.round`` to the last round (or until a callback sets ``state.should_stop``)."""
        state = self.state
        self._session_start = time.perf_counter()
        status = "failed"
        self.call("on_run_start", state=state, orchestrator=self)
        try:
            while state.round < self.rounds.num_rounds and not state.should_stop:
                self.guard.check_stop()
                self._round(state)
                state.round += 1
                self.ranks.sync_stop(state)
            status = "success"
        except RunInterrupted:
            status = "interrupted"
            raise
        finally:
            try:
                self.call("on_run_end", state=state, orchestrator=self)
            except BaseException:
                status = "failed"  # e.g. the final checkpoint hit a full disk: still write the summary below
                raise
            finally:
                self._write_summary(state, status)
        return state

    def _write_summary(self, state: RunState, status: str) -> None:
        wall = self._wall_seconds()
        self.summary.update(rounds_completed=state.round, stop_reason=state.stop_reason, status=status,
                            wall_seconds=wall, wall_seconds_session=wall - self._wall_before,
                            sessions=self._sessions_before + 1, selector=self.selector_key,
                            sim_total_s=self.systems.total_s, **participation_summary(state.history))  # type: ignore[arg-type]
        try:
            if self.run_dir is not None and self.is_writer:
                write_json(self.run_dir / "summary.json", self.summary)
                write_participation_csv(state.history, self.run_dir / "participation.csv")  # type: ignore[arg-type]
        except OSError:
            if status == "success":
                raise
            # The run is already failing (e.g. a full disk): its own error is the one to report.
        finally:
            for logger in self.fabric.loggers:
                logger.finalize(status)

    def _wall_seconds(self) -> float:
        """Wall seconds of the run so far: earlier sessions (up to the checkpoint resumed from) plus this one."""
        start = self._session_start
        return self._wall_before + (time.perf_counter() - start if start is not None else 0.0)

    @property
    def is_writer(self) -> bool:
        """True in the one process that writes the run directory, checkpoints included: global rank 0."""
        return self.fabric.global_rank == 0

    def _round(self, state: RunState) -> None:
        r = state.round
        started = time.perf_counter()
        state.metrics = {}
        self.probes = ProbeTally()
        self.call("on_round_start", state=state)

        # 1. Select among the available clients, with the selection stream's generator only.
        ctx = self._context(r)
        selection = self._select(ctx)
        self.call("on_selection", state=state, selection=selection)

        # 2. The simulated clock decides who reports (dropouts, deadline, over-commitment); only they train,
        #    each from the same global params, folded into the running sum at once.
        plan = self.systems.plan(selection.ids, self.rounds.clients_per_round)
        results = self._train(plan.apply(selection), r)

        # 3. Aggregate into the new global model (unchanged when no client reported).
        if results:
            self.global_params = self.aggregator.compute()

        # 4. Feedback to the selector and the per-client history.
        state.history.record(r, results, selection.ids, plan.dropped)  # type: ignore[union-attr]
        self.selector.update(Feedback(round=r, selection=selection, results=results, durations=plan.durations,
                                      dropped=plan.dropped, updates=self._updates))
        state.metrics.update(self.selector.metrics())

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
        self.call("on_round_end", state=state, metrics=state.metrics, orchestrator=self)
        log_metrics(self.fabric.loggers, state.metrics, step=r)

    def _train(self, selection: Selection, r: int) -> list[ClientResult]:
        state = self.state
        self.aggregator.reset(self.global_params, absolute=selection.absolute_weights)
        results: dict[int, ClientResult] = {}
        updates: dict[int, Tensor] | None = {} if self.selector.needs_updates else None
        # This rank's share of the cohort (all of it in one process), as positions in the selection.
        share = list(self.ranks.share(selection, self._num_samples))
        # Lazy: the sequential trainer trains a client when it is drawn, the cohort trainer a chunk at a time.
        clients = [self.store.client(int(selection.ids[i]), r) for i in share]
        drawn = _Drawn(self.trainer.fit_many(self.global_params, clients))
        for i, client in zip(share, clients, strict=True):
            client_id = client.client_id
            self.guard.check_stop()  # a signal stops the run between clients, never inside one
            self.call("on_client_start", state=state, client_id=client_id)
            fitted = self.guard.fit(drawn, self.global_params, client, r)  # type: ignore[arg-type]
            if fitted is None:
                continue  # failed or diverged: left out of the aggregate, counted by the guard
            params, result = fitted
            if updates is not None:
                updates[client_id] = flat_update(params, self.global_params)
            weight = float(selection.weights[i]) if selection.weights is not None else float(result.num_samples)
            self.aggregator.update(params, weight)
            del params  # views of the reused model: only the running sum survives the client
            results[i] = result
            self.call("on_client_end", state=state, client_id=client_id, result=result)
        self._updates = updates
        # Sum the ranks' running sums; every rank gets every client's result (and update), in selection order.
        combined = self.ranks.combine(self.aggregator, results, selection, r, updates)
        # After combining, so that every rank sees the same usable count and raises (or not) together.
        state.metrics.update(self.guard.end_round(r, len(selection.ids), len(combined)))
        return combined

    def _context(self, r: int) -> SelectionContext:
        return SelectionContext(
            round=r,
            k=self.systems.num_to_select(self.rounds.clients_per_round),
            available=self.systems.available(r),
            num_samples=self._num_samples,
            history=self.state.history,  # type: ignore[arg-type]
            rng=self.selection_rng,
            probe=lambda ids, batch_size=None, signal="loss": self.probe(ids, r, batch_size, signal),
            profiles=self.systems.profiles,
            batch_size=self.trainer.settings.batch_size,
            probe_gradients=lambda ids: self.probe_gradients(ids, r),
            label_histograms=self.label_histograms,
        )

    def _select(self, ctx: SelectionContext) -> Selection:
        if len(ctx.available) == 0:  # nobody online: an idle round (the clock still waits, see SystemModel.plan)
            return Selection(ids=np.zeros(0, dtype=np.int64))
        selection = self.selector.select(ctx)
        check_selection(selection, ctx, self.selector_key, self.selector.allows_duplicates)
        return selection

    def _log_selection(self, r: int, selection: Selection, plan: RoundPlan) -> None:
        for logger in self.fabric.loggers if self.is_writer else ():
            if isinstance(logger, WandbLogger):
                logger.log_selection(r, selection, plan.durations, plan.status)

    def probe(self, ids: Sequence[int], round_idx: int, batch_size: int | None = None,
              signal: str = "loss") -> np.ndarray:
        """Current loss (or update norm) of each of ``ids``, its cost counted (`ProbeTally`, the clock).

        ``signal="loss"``: the global model's loss, with ``batch_size=None`` on each client's full local data,
        with an int on its first seeded mini-batch. ``signal="update_norm"``: the L2 norm of the update of the
        client's local training from the global model (the same training it would do if selected this round).
        """
        if signal not in PROBE_SIGNALS:
            raise ValueError(f"Expected a probe `signal` in {PROBE_SIGNALS} but got {signal!r}.")
        clients = [self.store.client(int(c), round_idx) for c in ids]
        if signal == "update_norm":
            # It trains: priced as the clients' local training (forward and backward), one download each.
            self.systems.record_probe(ids, train=True)
            norms, processed = [], 0
            for params, result in self.trainer.fit_many(self.global_params, clients):
                # The params are views of the reused model: take the norm before the next client trains.
                norms.append(float(flat_update(params, self.global_params).norm()))
                processed += result.samples_processed
            self._count_probe(ids, 0, gradient_samples=processed)
            return np.array(norms, dtype=float)
        samples = self.store.num_samples[np.asarray(ids, dtype=np.int64)]
        self._count_probe(ids, int((samples if batch_size is None else np.minimum(samples, batch_size)).sum()))
        self.systems.record_probe(ids, batch_size)
        return self.trainer.losses(self.global_params, clients, batch_size)

    def probe_gradients(self, ids: Sequence[int], round_idx: int) -> np.ndarray:
        """Each of ``ids``' full-batch gradient at the global model (one float32 row each), its cost counted."""
        samples = int(self.store.num_samples[np.asarray(ids, dtype=np.int64)].sum())
        self._count_probe(ids, 0, gradient_samples=samples, uploads=len(ids))
        self.systems.record_probe(ids, gradients=True)
        clients = [self.store.client(int(c), round_idx) for c in ids]
        return self.trainer.gradients(self.global_params, clients)

    def _count_probe(self, ids: Sequence[int], forward_samples: int, gradient_samples: int = 0,
                     uploads: int = 0) -> None:
        self.state.metrics["select/probed_clients"] = self.state.metrics.get("select/probed_clients", 0) + len(ids)
        p = self.probes
        p.ids.update(int(c) for c in ids)
        p.forward_samples += forward_samples
        p.gradient_samples += gradient_samples
        p.uploads += uploads

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
        target = self.rounds.target_accuracy[0] if self.rounds.target_accuracy else None
        if target is not None and acc >= target and "rounds_to_target" not in s:
            s["rounds_to_target"] = r + 1
            s["sim_seconds_to_target"] = self.systems.total_s

    def state_dict(self, history: bool = True) -> dict[str, Any]:
        """Everything a resumed run needs to go on bit for bit; meaningful between rounds.

        Global params, per-client history, the selection generator, the summary, every `STATEFUL`
        component, every callback with a ``state_dict`` and the global RNGs. ``round`` is also the
        number of rows of ``metrics.csv`` that belong to this state. ``history=False`` leaves out the
        per-client history (O(clients)), which `ClientHistory.state_dict` can give later as of now.
        """
        return {
            "round": self.state.round,
            "global_params": {k: v.detach().cpu().clone() for k, v in self.global_params.items()},
            **({"history": self.state.history.state_dict()} if history else {}),  # type: ignore[union-attr]
            "selection_rng": copy.deepcopy(self.selection_rng.bit_generator.state),
            "summary": copy.deepcopy(self.summary),
            "components": {name: getattr(self, name).state_dict() for name in self.STATEFUL
                           if getattr(self, name, None) is not None},
            "callbacks": {key: cb.state_dict() for key, cb in self._stateful_callbacks()},
            "rng": global_rng_state(),
            "wall_seconds": self._wall_seconds(),
            "sessions": self._sessions_before + 1,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (the next `run` continues from ``state["round"]``)."""
        self.state.round = int(state["round"])
        # Through the model, so that the global params are laid out as its flat buffer again (`training.flat`).
        self.trainer.load(state["global_params"])
        self.global_params = self.trainer.global_params()
        self.state.history.load_state_dict(state["history"])  # type: ignore[union-attr]
        self.selection_rng.bit_generator.state = state["selection_rng"]
        self.summary = copy.deepcopy(state["summary"])
        for name, sub in state["components"].items():
            getattr(self, name).load_state_dict(sub)
        callbacks = dict(self._stateful_callbacks())
        for key, sub in state["callbacks"].items():
            if key in callbacks:
                callbacks[key].load_state_dict(sub)
        set_global_rng_state(state["rng"])
        # Absent from checkpoints written before sessions were added up.
        self._wall_before, self._sessions_before = float(state.get("wall_seconds", 0.0)), int(state.get("sessions", 0))

    def _stateful_callbacks(self) -> list[tuple[str, Any]]:
        # Keyed by class name (and rank among callbacks of that class), not position: turning the progress bar
        # on or off between a run and its resume must not shift the keys.
        seen: dict[str, int] = {}
        keyed = []
        for cb in self.call.callbacks:
            if hasattr(cb, "state_dict"):
                name = type(cb).__name__
                seen[name] = seen.get(name, 0) + 1
                keyed.append((name if seen[name] == 1 else f"{name}#{seen[name]}", cb))
        return keyed


class _Drawn:
    """``fit`` that draws the next item of a trainer's ``fit_many``, so the fault guard wraps either backend.

    An exception inside a cohort chunk ends the iterator: that client and every later one of the round
    are then reported as failed by the guard.
    """

    def __init__(self, fitted: Iterator[tuple[Params, ClientResult]]) -> None:
        self._fitted = fitted

    def fit(self, global_params: Params, client: ClientData) -> tuple[Params, ClientResult]:
        """The next trained client, which must be ``client``."""
        params, result = next(self._fitted)
        if result.client_id != client.client_id:
            raise RuntimeError(f"Expected client {client.client_id} from the trainer but got {result.client_id}.")
        return params, result
