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
        grad_mean: mean of the mini-batch gradients over the local steps (flat float32, CPU), and
        grad_sq_mean: mean of their squared L2 norms; both only for selectors that set ``needs_grad_stats``
            (DELTA's gradient diversity and local variance), else None.
    """

    client_id: int
    num_samples: int
    num_steps: int
    samples_processed: int
    loss: float
    loss_sq_sum: float
    param_norm: float | None = None
    grad_mean: Tensor | None = field(default=None, compare=False, repr=False)
    grad_sq_mean: float | None = None

    @property
    def grad_sigma(self) -> float | None:
        """Norm of the std of the mini-batch gradients: sqrt(mean ||g_b||^2 - ||mean g_b||^2) (None if not measured).

        >>> import torch
        >>> ClientResult(0, 2, 2, 2, 0.0, 0.0, grad_mean=torch.tensor([1.0, 0.0]), grad_sq_mean=5.0).grad_sigma
        2.0
        """
        if self.grad_mean is None or self.grad_sq_mean is None:
            return None
        return math.sqrt(max(self.grad_sq_mean - float(self.grad_mean.double().square().sum()), 0.0))

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
        probe: ``probe(ids, batch_size=None, signal="loss")`` returns, for each given client, the current loss of
            the global model on its full local data (or with ``batch_size=b`` on its first seeded mini-batch of b
            samples of this round); with ``signal="update_norm"`` the L2 norm of the update its local training
            from the global model would send (it trains; the round's training of the same client is identical).
            Its cost is counted: one model download per probed client, the forward FLOPs (the training FLOPs for
            ``update_norm``), and the simulated time (`ProbeTally`, ``cost/probe_*``), energy and bytes.
        profiles: per-client system profiles (`csfl_fabric.data.systems.SystemProfiles`: speeds, bandwidths,
            expected compute and transfer seconds, energy, the deadline and the round budgets), or None.
        batch_size: the local training batch size (``train.batch_size``), for mini-batch probes; None outside a run.
        probe_gradients: ``probe_gradients(ids)`` returns, as a float32 array of one row per id, each client's
            full-batch gradient of its mean training loss at the current global model (DivFL's signal); counted
            like ``probe`` plus a backward pass and a model-sized upload per client. None where not provided.
        label_histograms: K x C label counts of every client's training data, only for selectors that set
            ``needs_label_histograms`` (it reveals each client's label distribution to the server), else None.
    """

    round: int
    k: int
    available: np.ndarray
    num_samples: np.ndarray
    history: ClientHistory
    rng: np.random.Generator
    probe: Callable[..., np.ndarray]
    profiles: Any = None
    batch_size: int | None = None
    probe_gradients: Callable[..., np.ndarray] | None = None
    label_histograms: np.ndarray | None = None


@dataclass
class ProbeTally:
    """What the selector's probes cost in one round: the orchestrator counts, `StudyMetrics` prices it.

    Attributes:
        ids: the distinct clients that received the global model for a probe (one download each; a probed
            client that is then selected trains from that copy).
        forward_samples: samples passed forward by loss probes (``ctx.probe``).
        gradient_samples: samples passed forward and backward by gradient probes (``ctx.probe_gradients``)
            and by update-norm probes (``ctx.probe(..., signal="update_norm")``, which train).
        uploads: model-sized vectors sent back, one per client and gradient probe (a probed loss or norm is
            one scalar, not counted).
    """

    ids: set[int] = field(default_factory=set)
    forward_samples: int = 0
    gradient_samples: int = 0
    uploads: int = 0


@dataclass(frozen=True)
class Selection:
    """A selector's answer.

    Attributes:
        ids: the selected client ids, in training order.
        probs: inclusion probabilities of the selected clients, for logging and unbiased re-weighting.
        scores: the selector's scores of the selected clients, for logging.
        weights: aggregation weights that replace the sample counts (e.g. 1/m for a simple average).
        absolute_weights: False: the new global model is the ``weights``-weighted mean of the clients' params.
            True: ``weights`` are the absolute coefficients a_k of an unbiased estimator of the full-participation
            update, ``global + sum_k a_k (params_k - global)``, whose coefficients need not sum to 1 (Scheme II's
            K/m p_k, the 1/p_k of importance sampling); the global model keeps the mass 1 - sum_k a_k.
    """

    ids: np.ndarray
    probs: np.ndarray | None = None
    scores: np.ndarray | None = None
    weights: np.ndarray | None = None
    absolute_weights: bool = False


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
