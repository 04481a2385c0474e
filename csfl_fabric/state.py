"""Value objects passed between components: no behaviour beyond bookkeeping."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

#: A model's weights and buffers by name (a state dict).
Params = dict[str, Tensor]


@dataclass(frozen=True)
class ClientResult:
    """What one client's local training reports back.

    Attributes:
        client_id: the client.
        num_samples: samples in the client's training set (FedAvg's weight).
        num_steps: optimizer steps taken.
        samples_processed: samples seen over all local steps (drives simulated compute time).
        loss: mean per-sample training loss over the local steps.
        loss_sq_sum: sum of squared per-sample losses over the local steps (Oort's statistical utility).
        param_norm: L2 norm of the trained floating-point params, read with the losses in the client's one host
            sync; NaN or inf when they diverged. None when the trainer did not measure it (the fault guard then
            checks the params itself).
    """

    client_id: int
    num_samples: int
    num_steps: int
    samples_processed: int
    loss: float
    loss_sq_sum: float
    param_norm: float | None = None

    @property
    def diverged(self) -> bool:
        """True when the training loss, or the measured norm of the params, is NaN or infinite."""
        return not (math.isfinite(self.loss) and (self.param_norm is None or math.isfinite(self.param_norm)))


@dataclass
class ClientHistory:
    """Per-client bookkeeping over the run, one array entry per client: the run's one participation counter.

    ``times_selected`` counts every selection (a client drawn twice in a round counts twice, dropped ones
    too), ``times_completed`` the updates that reached the server, ``times_dropped`` the selected clients
    that did not report (dropouts, deadline misses, over-commitment cuts); a client whose training failed
    or diverged is selected but neither completed nor dropped. ``last_loss`` and ``last_round`` are those
    of the client's latest completed update.
    """

    num_samples: np.ndarray
    last_loss: np.ndarray = field(init=False)
    last_round: np.ndarray = field(init=False)
    times_selected: np.ndarray = field(init=False)
    times_completed: np.ndarray = field(init=False)
    times_dropped: np.ndarray = field(init=False)

    #: The counters, in the order of `participation.csv`'s columns after ``client_id``.
    COUNTS = ("times_selected", "times_completed", "times_dropped")
    #: Every array a checkpoint holds.
    KEYS = ("last_loss", "last_round", *COUNTS)

    def __post_init__(self) -> None:
        n = len(self.num_samples)
        self.last_loss = np.full(n, np.nan)
        self.last_round = np.full(n, -1, dtype=np.int64)
        for key in self.COUNTS:
            setattr(self, key, np.zeros(n, dtype=np.int64))
        #: `record` calls so far; with `state_dict(before_last_record=True)` a round-start snapshot need not copy
        #: these O(clients) arrays every round (10^6 clients: 17 ms a round) to be exact after the round's record.
        self.records = 0
        self._before_last: tuple[np.ndarray, dict[str, np.ndarray]] | None = None

    def record(self, round_idx: int, results: Sequence[ClientResult], selected: np.ndarray | None = None,
               dropped: np.ndarray | None = None) -> None:
        """Count one round: the ``results`` that arrived, the ``selected`` ids and the ``dropped`` ids.

        ``selected`` may repeat an id (sampling with replacement); it defaults to the results' clients, and
        ``dropped`` to none.
        """
        completed = np.array([r.client_id for r in results], dtype=np.int64)
        selected = completed if selected is None else selected
        dropped = np.zeros(0, dtype=np.int64) if dropped is None else dropped
        touched = np.unique(np.concatenate([completed, np.asarray(selected, dtype=np.int64),
                                            np.asarray(dropped, dtype=np.int64)]))
        self._before_last = (touched, {key: getattr(self, key)[touched].copy() for key in self.KEYS})
        self.records += 1
        for counts, ids in ((self.times_selected, selected), (self.times_completed, completed),
                            (self.times_dropped, dropped)):
            np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
        for r in results:
            self.last_loss[r.client_id] = r.loss
            self.last_round[r.client_id] = round_idx

    def state_dict(self, before_last_record: bool = False) -> dict[str, Any]:
        """Arrays to checkpoint; ``before_last_record``: as they were before the latest `record` call."""
        state = {key: getattr(self, key).copy() for key in self.KEYS}
        if before_last_record and self._before_last is not None:
            ids, old = self._before_last
            for key, values in old.items():
                state[key][ids] = values
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict`."""
        self.last_loss = np.asarray(state["last_loss"], dtype=float).copy()
        self._before_last = None
        for key in ("last_round", *self.COUNTS):
            setattr(self, key, np.asarray(state[key], dtype=np.int64).copy())


@dataclass(frozen=True)
class SelectionContext:
    """Everything a selector may look at when it picks the clients of one round.

    Attributes:
        round: the round index (0-based).
        k: how many clients to select.
        available: ids of the clients that may be selected this round (sorted).
        num_samples: training samples per client, indexed by client id (all clients).
        history: per-client history (last loss, times selected, last round seen).
        rng: the selection stream's seeded generator; selectors draw from it only.
        probe: ``probe(ids, batch_size=None)`` returns the current loss of the global model on each given
            client: on its full local data, or with ``batch_size=b`` on its first seeded mini-batch of b
            samples of this round (its cost is counted).
        profiles: per-client system profiles (`csfl_fabric.data.systems.SystemProfiles`: speeds, bandwidths,
            expected compute and transfer seconds, the deadline), or None.
    """

    round: int
    k: int
    available: np.ndarray
    num_samples: np.ndarray
    history: ClientHistory
    rng: np.random.Generator
    probe: Callable[..., np.ndarray]
    profiles: Any = None


@dataclass(frozen=True)
class Selection:
    """A selector's answer.

    Attributes:
        ids: the selected client ids, in training order.
        probs: inclusion probabilities of the selected clients, for logging and unbiased re-weighting.
        scores: the selector's scores of the selected clients, for logging.
        weights: aggregation weights that replace the sample counts (e.g. 1/m for a simple average).
    """

    ids: np.ndarray
    probs: np.ndarray | None = None
    scores: np.ndarray | None = None
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class Feedback:
    """What a selector learns after a round: the selection and what the trained clients reported.

    Attributes:
        round: the round index.
        selection: what the selector returned.
        results: reports of the clients that completed (in training order).
        durations: simulated seconds of each selected client, aligned with ``selection.ids`` (also for the
            clients that did not report: what they would have taken), or None without a system model.
        dropped: ids of selected clients that did not report (dropouts, deadline misses, over-commitment cuts).
        updates: each trained client's flattened update (its params minus the global params it started
            from, float32, on the CPU), only when the selector sets ``needs_updates``; else None.
    """

    round: int
    selection: Selection
    results: Sequence[ClientResult]
    durations: np.ndarray | None = None
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    updates: dict[int, Tensor] | None = None


@dataclass
class RunState:
    """The mutable state of a run, handed to every hook."""

    round: int = 0
    num_rounds: int = 0
    should_stop: bool = False
    stop_reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    history: ClientHistory | None = None
