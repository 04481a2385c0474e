"""Simulated client systems: speeds, bandwidths, availability, dropouts, the round deadline and the clock.

A client's duration in a round is ``samples it processes / speed + 2 * model bytes / bandwidth`` (download
and upload at the same bandwidth). The server ends a round when ``k`` clients have reported (the first ``k``
to finish, with over-commitment), or at the deadline when some selected client did not report under the
``drop`` policy; otherwise when the slowest kept client finishes. Dropouts are noticed at once when there is
no deadline. Probing clients (``ctx.probe``, ``ctx.probe_gradients``) adds a phase before training that lasts
as long as the slowest probed client: its model download, then a forward pass over its data (or one mini-batch)
at a third of the cost of a training pass (`TRAIN_FLOPS_PER_FORWARD`), or for a gradient a forward and backward
pass plus the gradient's upload, or for an update-norm probe its whole local training. A probed client that is
then selected trains from the model it downloaded.

Energy: a client sent the model spends ``compute_s * compute_power_w + 2 * transfer_s * transfer_power_w``
joules (`round_energy`); a probe spends its compute time and its transfers. Per-round budgets of time, energy and
bytes (``SystemProfiles.*_budget*``) are enforced here for every selector: clients are sent the model in selection
order while the round's energy and bytes (probes included) fit, and a client whose probe phase plus duration
would pass the time budget is cut.

Availability and dropouts draw one uniform per client and round from their own streams, whether or not the
client is selected, so every method sees the same draws for the same seed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from csfl_fabric.data.energy import admit, round_energy
from csfl_fabric.errors import ConfigError
from csfl_fabric.state import Selection

#: Backward costs about twice the forward, so a training step is ~3x the forward FLOPs (Kaplan et al. 2020); a
#: forward-only probe of a sample takes a third of the time a training step on it takes.
TRAIN_FLOPS_PER_FORWARD = 3

#: Why a selected client did or did not report, per position of the selection (`RoundPlan.status`).
KEPT, DROPOUT, LATE, CUT, BUDGET = "kept", "dropout", "late", "overcommit", "budget"


def samples_per_round(num_samples: np.ndarray, batch_size: int, epochs: int = 1,
                      steps: int | None = None) -> np.ndarray:
    """Samples each client processes in one round of local training (what `ClientData.batches` yields).

    >>> samples_per_round(np.array([10, 3]), batch_size=4, epochs=2).tolist()
    [20, 6]
    >>> samples_per_round(np.array([10]), batch_size=4, steps=4).tolist()  # batches of 4, 4, 2, then 4
    [14]
    """
    n = np.asarray(num_samples, dtype=np.int64)
    if steps is None:
        return n * epochs
    per_epoch = -(-n // batch_size)  # batches per epoch, the last one partial
    full, rest = np.divmod(steps, np.maximum(per_epoch, 1))
    return np.where(n > 0, full * n + rest * batch_size, 0)


def lognormal(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    """``n`` draws of ``median * exp(sigma * N(0, 1))`` (sigma = 0 gives ``median`` for every client)."""
    return median * np.exp(sigma * rng.standard_normal(n))


def _read_csv(path: str, key: str, columns: Sequence[str]) -> np.ndarray:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"`{key}` file `{path}` does not exist.")
    with file.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"`{key}` file `{path}` needs the header {','.join(columns)} but lacks `{missing[0]}`.")
        try:
            rows = [[float(row[c]) for c in columns] for row in reader]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"`{key}` file `{path}` has a non-numeric value ({e}).") from None
    return np.array(rows, dtype=float).reshape(-1, len(columns))


def read_profiles(path: str, num_clients: int) -> tuple[np.ndarray, np.ndarray]:
    """Speeds and bandwidths of clients ``0..num_clients-1`` from a CSV ``client_id,speed,bandwidth``.

    Rows of ids >= ``num_clients`` are ignored, so one profile file serves smaller populations.

    Raises:
        ConfigError: a missing file, column or client, or a value that is not > 0.
    """
    rows = _read_csv(path, "systems.profiles", ("client_id", "speed", "bandwidth"))
    speed, bandwidth = np.full(num_clients, np.nan), np.full(num_clients, np.nan)
    for cid, s, b in rows:
        if 0 <= cid < num_clients:
            speed[int(cid)], bandwidth[int(cid)] = s, b
    if np.isnan(speed).any():
        raise ConfigError(f"`systems.profiles` file `{path}` has no row for client {int(np.isnan(speed).argmax())}; "
                          f"it needs one row per client id 0..{num_clients - 1}.")
    if (speed <= 0).any() or (bandwidth <= 0).any():
        raise ConfigError(f"`systems.profiles` file `{path}`: every speed and bandwidth must be > 0.")
    return speed, bandwidth


def read_trace(path: str, num_clients: int | None = None) -> np.ndarray:
    """Online windows from a CSV ``client_id,start,end``: client online during ``[start, end)``.

    Times are round indices or simulated seconds (``systems.trace_unit``); a client may have several rows
    and is offline whenever no window covers the time. Returns an array of rows ``(client_id, start, end)``.
    As with profiles, rows of ids >= ``num_clients`` are dropped, so one trace serves smaller populations.

    Raises:
        ConfigError: a missing file or column, a client id that is not a whole number >= 0, or end < start.
    """
    rows = _read_csv(path, "systems.trace", ("client_id", "start", "end"))
    ids = rows[:, 0]
    bad = ~np.isfinite(ids) | (ids < 0) | (ids != np.round(ids))
    if bad.any():
        raise ConfigError(f"`systems.trace` file `{path}` has the client id {ids[bad.argmax()]:g} (row "
                          f"{int(bad.argmax()) + 2}); ids are whole numbers from 0 to data.num_clients - 1.")
    if (rows[:, 2] < rows[:, 1]).any():
        raise ConfigError(f"`systems.trace` file `{path}` has a window with end < start (row "
                          f"{int((rows[:, 2] < rows[:, 1]).argmax()) + 2}).")
    return rows if num_clients is None else rows[ids < num_clients]


@dataclass(frozen=True)
class SystemProfiles:
    """What selectors see of the clients' systems (`SelectionContext.profiles`), indexed by client id.

    Attributes:
        speed: samples per second of local training.
        bandwidth: bytes per second, both directions.
        model_bytes: size of the model sent each way.
        compute_s: expected seconds of local training in one round.
        transfer_s: seconds of one model transfer (``model_bytes / bandwidth``).
        deadline: the round deadline in seconds, or None.
        compute_power_w: watts drawn while training (an assumption; see the README).
        transfer_power_w: watts drawn by the radio while sending or receiving (an assumption).
        time_budget_s: most simulated seconds a round may last, probe phase included, or None.
        energy_budget_j: most joules the round's clients may spend together, probes included, or None.
        bytes_budget: most bytes a round may move (probe downloads, a download and an upload per client), or None.
    """

    speed: np.ndarray
    bandwidth: np.ndarray
    model_bytes: int
    compute_s: np.ndarray
    transfer_s: np.ndarray
    deadline: float | None = None
    compute_power_w: float = 2.0
    transfer_power_w: float = 1.0
    time_budget_s: float | None = None
    energy_budget_j: float | None = None
    bytes_budget: float | None = None

    @cached_property
    def duration(self) -> np.ndarray:
        """Expected seconds from download to upload: compute plus two transfers (computed once: O(clients))."""
        return self.compute_s + 2 * self.transfer_s

    @property
    def energy_j(self) -> np.ndarray:
        """Expected joules of one round per client (`round_energy`)."""
        return round_energy(self.compute_s, self.transfer_s, self.compute_power_w, self.transfer_power_w)


@dataclass(frozen=True)
class RoundPlan:
    """Who of a round's selection reports, and how long the round lasts.

    Attributes:
        ids: the selected ids, in selection order.
        durations: each selected client's duration in seconds (also for those that did not report).
        status: `KEPT`, `DROPOUT`, `LATE` (missed the deadline), `CUT` (over-committed, not among the first k) or
            `BUDGET` (not sent the model within the energy or bytes budget, or cut at the time budget).
        round_s: simulated seconds of the round, including the probe phase.
        probe_s: seconds of the probe phase.
        energy_j: joules of the round: the probes and every client sent the model (in full, also one that drops).
    """

    ids: np.ndarray
    durations: np.ndarray
    status: tuple[str, ...]
    round_s: float
    probe_s: float = 0.0
    energy_j: float = 0.0
    kept: np.ndarray = field(init=False)
    dropped: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        mask = np.array([s == KEPT for s in self.status], dtype=bool)
        object.__setattr__(self, "kept", np.flatnonzero(mask))
        object.__setattr__(self, "dropped", self.ids[~mask] if len(self.ids) else self.ids)

    def apply(self, selection: Selection) -> Selection:
        """The part of ``selection`` that reports (ids, probs, scores and weights of the kept positions)."""
        if len(self.kept) == len(selection.ids):
            return selection

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[self.kept]

        return Selection(ids=np.asarray(selection.ids)[self.kept], probs=take(selection.probs),
                         scores=take(selection.scores), weights=take(selection.weights),
                         absolute_weights=selection.absolute_weights)

    def count(self, status: str) -> int:
        """How many selected clients ended with ``status``."""
        return sum(s == status for s in self.status)


class SystemModel:
    """Availability, dropouts, deadline, over-commitment and the simulated clock of one run.

    Args:
        profiles: the clients' speeds, bandwidths and expected durations.
        num_samples: training samples per client (the probe cost is one pass over them).
        availability_rng: the ``"availability"`` stream; one uniform per client and round.
        dropout_rng: the ``"dropout"`` stream; one uniform per client and round.
        availability: ``always``, ``bernoulli`` (online with probability ``availability_p``) or ``trace``.
        availability_p: per-client, per-round probability of being online under ``bernoulli``.
        trace: rows ``(client_id, start, end)`` of online windows (`read_trace`), for ``trace``.
        trace_unit: ``round`` (windows in round indices) or ``second`` (simulated seconds at the round's start).
        dropout: probability that a selected client drops out during the round.
        deadline_policy: ``drop`` (late updates are discarded) or ``wait`` (the server waits for them).
        overcommit: select ``ceil(overcommit * k)`` clients and keep the first ``k`` to finish.
    """

    def __init__(self, profiles: SystemProfiles, num_samples: np.ndarray, availability_rng: np.random.Generator,
                 dropout_rng: np.random.Generator, *, availability: str = "always", availability_p: float = 1.0,
                 trace: np.ndarray | None = None, trace_unit: str = "round", dropout: float = 0.0,
                 deadline_policy: str = "drop", overcommit: float = 1.0) -> None:
        if availability == "trace" and trace is None:
            raise ValueError("Expected a `trace` for `availability='trace'`.")
        self.profiles = profiles
        self.num_samples = np.asarray(num_samples, dtype=np.int64)
        self.num_clients = len(self.num_samples)
        self.availability, self.availability_p = availability, availability_p
        self.trace, self.trace_unit = trace, trace_unit
        self.dropout, self.deadline_policy, self.overcommit = dropout, deadline_policy, overcommit
        self._availability_rng, self._dropout_rng = availability_rng, dropout_rng
        self.total_s = 0.0
        self.total_j = 0.0
        self._probe_s = self._probe_j = self._probe_bytes = 0.0
        self._probed = np.zeros(0, dtype=np.int64)  # this round's probed clients: they already hold the model
        self._everyone = np.arange(self.num_clients)  # `always`: one read-only array, not one per round
        self._everyone.setflags(write=False)

    def num_to_select(self, k: int) -> int:
        """How many clients to ask the selector for: ``ceil(overcommit * k)``, at most all clients."""
        return min(math.ceil(round(self.overcommit * k, 9)), self.num_clients)  # round: 1.3 * 10 = 13.000000000000002

    def available(self, round_idx: int) -> np.ndarray:
        """Sorted ids of the clients online in ``round_idx``; call once per round (it advances the stream)."""
        if self.availability == "bernoulli":
            return np.flatnonzero(self._availability_rng.random(self.num_clients) < self.availability_p)
        if self.availability == "trace":
            t = round_idx if self.trace_unit == "round" else self.total_s
            rows = self.trace[(self.trace[:, 1] <= t) & (t < self.trace[:, 2])]  # type: ignore[index]
            ids = np.unique(rows[:, 0].astype(np.int64))
            return ids[ids < self.num_clients]
        return self._everyone

    def record_probe(self, ids: Sequence[int], batch_size: int | None = None, gradients: bool = False,
                     train: bool = False) -> None:
        """Count a probe of ``ids``: the probe phase lasts until the slowest probed client is done.

        A client's probe time is its model download plus a forward pass over its data (or a mini-batch of
        ``batch_size`` samples) at ``speed * TRAIN_FLOPS_PER_FORWARD`` samples/s; with ``gradients``, a forward
        and backward pass over its data at ``speed`` plus the upload of the gradient; with ``train``, its whole
        local training (an update-norm probe). Energy and bytes count one download per client and round (a
        client probed twice keeps the model) and the gradients' uploads.
        """
        probed = np.asarray(ids, dtype=np.int64)
        if len(probed):
            p = self.profiles
            samples = self.num_samples[probed]
            if train:
                compute = p.compute_s[probed]
            elif gradients:
                compute = samples / p.speed[probed]
            else:
                evaluated = samples if batch_size is None else np.minimum(samples, batch_size)
                compute = evaluated / (TRAIN_FLOPS_PER_FORWARD * p.speed[probed])
            uploads = 1 if gradients else 0
            self._probe_s = max(self._probe_s, float((compute + (1 + uploads) * p.transfer_s[probed]).max()))
            fresh = ~np.isin(probed, self._probed)
            transfers = (fresh + uploads) * p.transfer_s[probed]
            self._probe_j += float((compute * p.compute_power_w + transfers * p.transfer_power_w).sum())
            self._probe_bytes += float(p.model_bytes * (fresh.sum() + uploads * len(probed)))
            self._probed = np.union1d(self._probed, probed)

    def plan(self, ids: np.ndarray, k: int) -> RoundPlan:
        """Decide who of the selected ``ids`` reports, advance the clock, and return the round's plan.

        Args:
            ids: the selected ids, in selection order.
            k: how many updates the server waits for (``rounds.clients_per_round``).
        """
        ids = np.asarray(ids, dtype=np.int64)
        p = self.profiles
        # A client probed this round already downloaded the global model: its round has one transfer less.
        held = np.isin(ids, self._probed)
        saved = np.where(held, p.transfer_s[ids], 0.0)
        durations = p.duration[ids] - saved
        energy_j = p.energy_j[ids] - saved * p.transfer_power_w
        deadline = p.deadline
        status = np.full(len(ids), KEPT, dtype=object)
        # Budgets first: a client that does not fit the round's energy or bytes is never sent the model.
        sent = admit(energy_j, p.energy_budget_j, self._probe_j) & admit(
            np.where(held, 1.0, 2.0) * p.model_bytes, p.bytes_budget, self._probe_bytes)
        status[~sent] = BUDGET
        if self.dropout > 0:
            # Drawn for every client, selected or not, so the draws do not depend on the selector.
            status[(status == KEPT) & (self._dropout_rng.random(self.num_clients)[ids] < self.dropout)] = DROPOUT
        if deadline is not None and self.deadline_policy == "drop":
            status[(status == KEPT) & (durations > deadline)] = LATE
        over_time = np.zeros(len(ids), dtype=bool)
        if p.time_budget_s is not None:
            over_time = (status == KEPT) & (self._probe_s + durations > p.time_budget_s)
            status[over_time] = BUDGET
        finishers = np.flatnonzero(status == KEPT)
        status[finishers[np.argsort(durations[finishers], kind="stable")][k:]] = CUT
        kept = durations[status == KEPT]
        missing = bool(((status == DROPOUT) | (status == LATE)).any())
        if len(ids) == 0:
            train_s = self._idle_s()
        elif missing and len(kept) < k and deadline is not None and self.deadline_policy == "drop":
            train_s = float(deadline)  # the server cannot know that nobody else will report before the deadline
        else:
            train_s = float(kept.max()) if len(kept) else 0.0
        if p.time_budget_s is not None:
            left = max(p.time_budget_s - self._probe_s, 0.0)  # a probe phase past the budget leaves no training
            train_s = left if over_time.any() and len(kept) < k else min(train_s, left)
        energy = self._probe_j + float(energy_j[sent].sum())
        plan = RoundPlan(ids=ids, durations=durations, status=tuple(status.tolist()),
                         round_s=self._probe_s + train_s, probe_s=self._probe_s, energy_j=energy)
        self.total_s += plan.round_s
        self.total_j += energy
        self._probe_s = self._probe_j = self._probe_bytes = 0.0
        self._probed = np.zeros(0, dtype=np.int64)
        return plan

    def _idle_s(self) -> float:
        # Nobody was online: wait for the deadline, or in a time trace for the next window to open.
        if self.profiles.deadline is not None:
            return float(self.profiles.deadline)
        if self.availability == "trace" and self.trace_unit == "second":
            later = self.trace[self.trace[:, 1] > self.total_s, 1]  # type: ignore[index]
            return float(later.min() - self.total_s) if len(later) else 0.0
        return 0.0

    def metrics(self, plan: RoundPlan) -> dict[str, float]:
        """The round's clock and report counts for metrics.csv (deterministic for a seed)."""
        return {"time/sim_round_s": plan.round_s, "time/sim_total_s": self.total_s,
                "select/num_dropped": float(len(plan.dropped)), "select/num_dropout": float(plan.count(DROPOUT)),
                "select/num_late": float(plan.count(LATE) + self._late_waited(plan)),
                "select/num_over_budget": float(plan.count(BUDGET)),
                "cost/energy_j": plan.energy_j, "cost/energy_j_total": self.total_j}

    def _late_waited(self, plan: RoundPlan) -> int:
        # Under `wait`, late clients are kept; count them so the deadline's effect is still visible.
        deadline = self.profiles.deadline
        if deadline is None or self.deadline_policy == "drop":
            return 0
        return int(sum(d > deadline for d, s in zip(plan.durations, plan.status, strict=True) if s == KEPT))

    def state_dict(self) -> dict[str, Any]:
        """The clock and both streams' positions: a resumed run continues with identical draws and times."""
        return {"total_s": self.total_s, "total_j": self.total_j,
                "availability_rng": self._availability_rng.bit_generator.state,
                "dropout_rng": self._dropout_rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.total_s = float(state["total_s"])
        self.total_j = float(state.get("total_j", 0.0))  # checkpoints written before the energy model had none
        self._availability_rng.bit_generator.state = state["availability_rng"]
        self._dropout_rng.bit_generator.state = state["dropout_rng"]
