"""System-aware selectors: they use the clients' speeds, bandwidths and the round deadline (`ctx.profiles`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from typing_extensions import override

from csfl_fabric.data.systems import SystemProfiles
from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, top_stable
from csfl_fabric.state import Feedback, Selection, SelectionContext

#: Picked ids and their scores.
_Picked = tuple[np.ndarray, np.ndarray]


def _require_profiles(ctx: SelectionContext, key: str) -> SystemProfiles:
    if ctx.profiles is None:
        raise ValueError(f"Selector `{key}` needs client system profiles (`ctx.profiles`); build runs with "
                         "`csfl_fabric.build` or pass a `SystemProfiles`.")
    return ctx.profiles  # type: ignore[no-any-return]


def _check(name: str, value: float, low: float, high: float = math.inf, low_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"Expected `{name}` to be in {bracket}{low}, {high}] but got {value}.")


@SELECTORS.register("system.fedcs")
class FedCSSelector(ClientSelector):
    """FedCS: greedy selection of the clients that fit the round deadline (Nishio & Yonetani, ICC 2019, https://arxiv.org/abs/1804.08333).

    Rule (the paper's client-selection step): a random fraction ``fraction`` of the available clients (at
    least k) are candidates. With S = {} and Theta = 0 (elapsed time of the sequential upload schedule), repeat: pick
    x = argmax_k 1 / (T_d(S+k) - T_d(S) + t_UL(k) + max(0, t_UD(k) - Theta)), remove it from the candidates,
    set Theta' = Theta + t_UL(x) + max(0, t_UD(x) - Theta), and accept x if
    T_cs + T_d(S+x) + Theta' + T_agg < T_round. T_d(S) = model bytes / min bandwidth over S is the broadcast
    time, t_UD the expected update (compute) time, t_UL the upload time. It maximises the number of clients
    that finish in time (at most k here) and ignores their data. Ties go to the earlier candidate. If no
    candidate fits, the one with the smallest increment is selected alone (a round needs a client); under
    ``deadline_policy: drop`` its late update is then discarded. Scores are the 1 / increment at acceptance.
    Deterministic given the candidates: with ``fraction=1.0`` and k=1 it selects the fastest client every
    round, as the rule intends (it maximises the clients that finish, not their data).

    The paper has no k: it accepts every client that fits, out of a random fraction C of a large population
    (C = 0.1 there). With at most k accepted and C = 0.1 of a small population, the candidates would be just
    k random clients and FedCS would be random selection filtered by the deadline; so the default here asks
    every available client (``fraction=1.0``), and the greedy rule decides. Set ``fraction=0.1`` for the
    paper's request step.

    Args:
        fraction: C, the fraction of available clients asked for their resources (paper: 0.1; default 1.0).
        deadline: T_round in seconds; None uses ``systems.deadline``. With neither, every client fits and
            FedCS takes the k candidates that extend the schedule least (fastest first).
        t_cs: seconds of the client-selection step itself (T_cs).
        t_agg: seconds of the aggregation step (T_agg).
    """

    needs_profiles = True
    deterministic = True

    def __init__(self, fraction: float = 1.0, deadline: float | None = None, t_cs: float = 0.0,
                 t_agg: float = 0.0) -> None:
        _check("fraction", fraction, 0.0, 1.0, low_open=True)
        if deadline is not None:
            _check("deadline", deadline, 0.0, low_open=True)
        _check("t_cs", t_cs, 0.0)
        _check("t_agg", t_agg, 0.0)
        self.fraction, self.deadline, self.t_cs, self.t_agg = fraction, deadline, t_cs, t_agg

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        p = _require_profiles(ctx, "system.fedcs")
        t_round = self.deadline if self.deadline is not None else p.deadline
        n = min(len(ctx.available), max(math.ceil(self.fraction * len(ctx.available)), ctx.k))
        candidates = ctx.rng.choice(ctx.available, size=n, replace=False).astype(np.int64)
        budget = math.inf if t_round is None else t_round - self.t_cs - self.t_agg
        ids, scores = greedy_deadline(candidates, p.compute_s, p.transfer_s, p.bandwidth, p.model_bytes, budget, ctx.k)
        return Selection(ids=ids, scores=scores)


def greedy_deadline(candidates: np.ndarray, t_ud: np.ndarray, t_ul: np.ndarray, bandwidth: np.ndarray,
                    model_bytes: float, budget: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FedCS's greedy schedule: the accepted ids in acceptance order and their scores (1 / time increment).

    ``budget`` is T_round - T_cs - T_agg; a client is accepted while T_d(S+x) + Theta' < budget.

    >>> ids, _ = greedy_deadline(np.array([0, 1, 2]), t_ud=np.array([1.0, 5.0, 2.0]), t_ul=np.array([1.0, 1.0, 1.0]),
    ...                          bandwidth=np.array([10.0, 10.0, 10.0]), model_bytes=10.0, budget=5.5, k=3)
    >>> ids.tolist()  # client 0 ends its upload at 2 s, client 2 at 3 s; client 1 would end at 6 s (+1 s broadcast)
    [0, 2]
    """
    remaining = list(candidates.tolist())
    chosen: list[int] = []
    scores: list[float] = []
    theta, min_bw = 0.0, math.inf
    while remaining and len(chosen) < k:
        rest = np.array(remaining)
        t_d_now = model_bytes / min_bw if chosen else 0.0
        new_bw = np.minimum(min_bw, bandwidth[rest])
        increment = model_bytes / new_bw - t_d_now + t_ul[rest] + np.maximum(0.0, t_ud[rest] - theta)
        j = int(np.argmin(increment))  # argmax of 1 / increment; the first on ties
        x = remaining.pop(j)
        theta_new = theta + t_ul[x] + max(0.0, t_ud[x] - theta)
        if model_bytes / new_bw[j] + theta_new < budget:
            chosen.append(x)
            scores.append(1.0 / max(float(increment[j]), 1e-12))
            theta, min_bw = theta_new, float(new_bw[j])
    if not chosen:  # nothing fits: the fastest single candidate, so that the round has a client
        solo = model_bytes / bandwidth[candidates] + t_ul[candidates] + t_ud[candidates]
        best = int(np.argmin(solo))
        return candidates[best : best + 1].astype(np.int64), np.array([1.0 / max(float(solo[best]), 1e-12)])
    return np.array(chosen, dtype=np.int64), np.array(scores)


@SELECTORS.register("system.oort")
class OortSelector(ClientSelector):
    """Oort: guided participant selection by statistical and system utility (Lai et al., OSDI 2021, https://www.usenix.org/conference/osdi21/presentation/lai).

    Rule, following FedScale's implementation (``thirdparty/oort/oort.py``) and its defaults:
    statistical utility U_i = |B_i| * sqrt(sum of squared per-sample losses / samples processed) over the
    whole local training (|B_i| = the client's samples). Each round R (1-based), for the available clients
    that are not blacklisted: clip U at the ``clip_bound`` quantile of the explored clients' utilities,
    normalise to (U - 0.999 min) / (max - 0.999 min), add the staleness bonus sqrt(0.1 ln R / L_i)
    (L_i = 1-based round of i's last participation), and multiply by (T / t_i)^alpha when t_i > T, with T
    the ``round_threshold`` percentile of all clients' durations t_i (observed, or expected from the
    profiles before a client took part). The exploration fraction eps decays by ``decay`` each round to
    ``min_epsilon``. Exploration count: n_explore ~ Binomial(k, eps) (each slot explores with probability
    eps), capped by the unexplored clients. Exploitation: the other k - n_explore slots, explored clients
    drawn without replacement with probability proportional to the score, from those whose score is >=
    ``cut_off_util`` times the score ranked just below them, widened to at least 10 x that many.
    Exploration: unexplored clients drawn proportionally to their data size times the same speed penalty,
    among the top ``sample_window`` x as many by that value. Pacer: every ``pacer_step`` rounds, if the
    exploited utility of the last window changed by <= 10% against the window before, T's percentile rises
    by ``pacer_delta`` (at most 100); if it changed >= 5x, it falls by ``pacer_delta``. Clients that did not
    report (stragglers, dropouts) get the round's mean utility and their duration. Blacklist: clients
    selected more than ``blacklist_rounds`` times are skipped (at most ``blacklist_max_len`` of all).

    Deviations from FedScale, on purpose: FedScale exploits a fixed int(k (1 - eps)) clients and explores the
    rest, a split that at k=1 never exploits (and the opposite floor, k - int(k eps), never explores again
    after round 1: one client in every round); the Binomial(k, eps) count keeps the split eps k in
    expectation (FedScale's up to its rounding) at every k, and at k=1 explores with probability eps. The
    normalisation uses explored clients only (FedScale also mixes in the data-size priors of unexplored
    clients); when unexplored (or explored) clients run out, the other kind takes the free slots so a round
    gets k clients; the cut-off index is clamped. The paper's own values
    differ (eps floor 0.2, cut-off c = 95%); the Oort repository's are floor 0.2, ``cut_off_util`` 0.9,
    ``alpha`` 0.5 with the pacer off. Scores: the exploitation score, or the penalised prior when unexplored.

    Args:
        epsilon: initial exploration fraction.
        decay: multiplicative decay of ``epsilon`` per round.
        min_epsilon: floor of the exploration fraction.
        alpha: round_penalty, the exponent of the speed penalty.
        round_threshold: percentile (0-100] of durations that sets the preferred round duration T.
        pacer_step: W, rounds per pacer window.
        pacer_delta: percentile step of the pacer.
        clip_bound: quantile at which utilities are clipped.
        cut_off_util: c, fraction of the cut-off score that still enters the exploitation pool.
        sample_window: exploration draws from the top ``sample_window`` x explore-count unexplored clients.
        blacklist_rounds: skip clients selected more often than this; None turns the blacklist off.
        blacklist_max_len: most clients the blacklist may hold, as a fraction of all clients.
    """

    needs_profiles = True

    def __init__(self, epsilon: float = 0.9, decay: float = 0.98, min_epsilon: float = 0.3, alpha: float = 2.0,
                 round_threshold: float = 30.0, pacer_step: int = 20, pacer_delta: float = 5.0,
                 clip_bound: float = 0.9, cut_off_util: float = 0.05, sample_window: float = 5.0,
                 blacklist_rounds: int | None = None, blacklist_max_len: float = 0.3) -> None:
        for name, value, low, high, low_open in (
            ("epsilon", epsilon, 0, 1, False), ("decay", decay, 0, 1, True), ("min_epsilon", min_epsilon, 0, 1, False),
            ("alpha", alpha, 0, math.inf, False), ("round_threshold", round_threshold, 0, 100, True),
            ("pacer_step", pacer_step, 1, math.inf, False), ("pacer_delta", pacer_delta, 0, 100, False),
            ("clip_bound", clip_bound, 0, 1, True), ("cut_off_util", cut_off_util, 0, math.inf, False),
            ("sample_window", sample_window, 1, math.inf, False), ("blacklist_max_len", blacklist_max_len, 0, 1, False),
        ):
            _check(name, value, low, high, low_open)
        if blacklist_rounds is not None:
            _check("blacklist_rounds", blacklist_rounds, 0)
        self.epsilon, self.decay, self.min_epsilon, self.alpha = epsilon, decay, min_epsilon, alpha
        self.pacer_step, self.pacer_delta = pacer_step, pacer_delta
        self.clip_bound, self.cut_off_util, self.sample_window = clip_bound, cut_off_util, sample_window
        self.blacklist_rounds, self.blacklist_max_len = blacklist_rounds, blacklist_max_len
        self.exploration, self.round_threshold = epsilon, round_threshold
        self.reward = self.duration = np.zeros(0)
        self.last_round = self.count = np.zeros(0, dtype=np.int64)
        self.exploit_history: list[float] = []
        self.last_exploit = self.successful = np.zeros(0, dtype=np.int64)

    def _init_arms(self, ctx: SelectionContext, profiles: SystemProfiles) -> None:
        if len(self.reward) == 0:
            self.reward = ctx.num_samples.astype(float)  # the prior utility of an unexplored client: its data size
            self.duration = profiles.duration.astype(float)
            self.last_round = np.zeros(len(ctx.num_samples), dtype=np.int64)
            self.count = np.zeros(len(ctx.num_samples), dtype=np.int64)

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        self._init_arms(ctx, _require_profiles(ctx, "system.oort"))
        now = ctx.round + 1
        self._pace(now)
        feasible = ctx.available[~np.isin(ctx.available, self.blacklist())]
        penalty = self.speed_penalty()
        explored, unexplored = feasible[self.count[feasible] > 0], feasible[self.count[feasible] == 0]
        scores = self.exploit_scores(explored, now) * penalty[explored]
        self.exploration = max(self.exploration * self.decay, self.min_epsilon)
        k = min(ctx.k, len(feasible))
        # Each slot explores with probability eps: E[n_explore] = eps k, FedScale's split on average, and a round
        # of k=1 still explores (FedScale's int(k (1 - eps)) exploit slots would be 0 there, our earlier
        # k - int(k eps) would be 1 forever: one client every round).
        n_explore = min(int(ctx.rng.binomial(k, self.exploration)), len(unexplored))
        n_exploit = min(k - n_explore, len(explored))
        n_explore = min(len(unexplored), k - n_exploit)  # explored clients ran out: explore the free slots
        exploit, exploit_scores = self._exploit(explored, scores, n_exploit, ctx.rng)
        prior = self.reward[unexplored] * penalty[unexplored]
        explore, explore_scores = self._explore(unexplored, prior, n_explore, ctx.rng)
        self.last_exploit = exploit
        return Selection(ids=np.concatenate([explore, exploit]),
                         scores=np.concatenate([explore_scores, exploit_scores]))

    def preferred_duration(self) -> float:
        """T: the ``round_threshold`` percentile of all clients' durations (inf at 100)."""
        if self.round_threshold >= 100:
            return math.inf
        at = min(int(len(self.duration) * self.round_threshold / 100), len(self.duration) - 1)
        return float(np.partition(self.duration, at)[at])  # the value a full sort puts there, in O(clients)

    def speed_penalty(self) -> np.ndarray:
        """(T / t_i)^alpha for clients slower than T, else 1; indexed by client id."""
        t = self.preferred_duration()
        return np.where(self.duration > t, (t / np.maximum(self.duration, 1e-4)) ** self.alpha, 1.0)

    def exploit_scores(self, ids: np.ndarray, now: int) -> np.ndarray:
        """Clipped, normalised utility plus the staleness bonus of explored ``ids`` in round ``now`` (1-based)."""
        if len(ids) == 0:
            return np.zeros(0)
        u = self.reward[ids]
        ordered = np.sort(u)
        clip = ordered[min(int(len(u) * self.clip_bound), len(u) - 1)]
        low = ordered[0] * 0.999
        spread = max(ordered[-1] - low, 1e-4)
        return np.abs((np.minimum(u, clip) - low) / spread + np.sqrt(0.1 * math.log(now) / self.last_round[ids]))

    def _exploit(self, ids: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator) -> _Picked:
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        order = np.argsort(-scores, kind="stable")
        cut_off = scores[order[n]] * self.cut_off_util if n < len(order) else 0.0
        # The pool: every score >= the cut-off, and at least 10 n clients (FedScale's "augmentation").
        size = max(int((scores[order] >= cut_off).sum()), min(len(order), int(10 * n) + 1))
        pool = order[:size]
        weights = np.maximum(scores[pool], 1e-12)
        picked = rng.choice(pool, size=n, replace=False, p=weights / weights.sum())
        return ids[picked].astype(np.int64), scores[picked]

    def _explore(self, ids: np.ndarray, prior: np.ndarray, n: int, rng: np.random.Generator) -> _Picked:
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        pool = top_stable(prior, int(self.sample_window * n))
        weights = np.maximum(prior[pool], 1e-12)
        picked = rng.choice(pool, size=n, replace=False, p=weights / weights.sum())
        return ids[picked].astype(np.int64), prior[picked]

    def blacklist(self) -> np.ndarray:
        """Ids of clients selected more than ``blacklist_rounds`` times, most selected first, capped in length."""
        if self.blacklist_rounds is None:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(-self.count, kind="stable")
        over = order[self.count[order] > self.blacklist_rounds]
        return over[: int(self.blacklist_max_len * len(self.count))]

    def _pace(self, now: int) -> None:
        # The mean utility of last round's exploited clients that reported, as FedScale's `calculateSumUtil`.
        done = self.last_exploit[np.isin(self.last_exploit, self.successful)]
        self.exploit_history.append(float(self.reward[done].sum() / (len(done) + 1e-4)))
        self.successful = np.zeros(0, dtype=np.int64)
        w = self.pacer_step
        if now >= 2 * w and now % w == 0:
            before, current = sum(self.exploit_history[-2 * w : -w]), sum(self.exploit_history[-w:])
            if abs(current - before) <= before * 0.1:
                self.round_threshold = min(100.0, self.round_threshold + self.pacer_delta)
            elif abs(current - before) >= before * 5:
                self.round_threshold = max(self.pacer_delta, self.round_threshold - self.pacer_delta)

    @override
    def update(self, feedback: Feedback) -> None:
        if len(self.reward) == 0:
            return
        now = feedback.round + 1
        ids = np.asarray(feedback.selection.ids, dtype=np.int64)
        if feedback.durations is not None:
            self.duration[ids] = feedback.durations
        utilities = [(r.client_id, oort_utility(r.num_samples, r.loss_sq_sum, r.samples_processed))
                     for r in feedback.results]
        for cid, u in utilities:
            self.reward[cid] = u
        reported = np.array([cid for cid, _ in utilities], dtype=np.int64)
        if len(utilities):
            # Stragglers and dropouts count as explored with the round's mean utility (FedScale's rule).
            self.reward[feedback.dropped] = float(np.mean([u for _, u in utilities]))
        touched = np.unique(np.concatenate([reported, feedback.dropped]))
        self.last_round[touched] = now
        np.add.at(self.count, touched, 1)
        self.successful = np.union1d(self.successful, reported)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"exploration": self.exploration, "round_threshold": self.round_threshold,
                "reward": self.reward.copy(), "duration": self.duration.copy(), "last_round": self.last_round.copy(),
                "count": self.count.copy(), "exploit_history": list(self.exploit_history),
                "last_exploit": self.last_exploit.copy(), "successful": self.successful.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exploration, self.round_threshold = float(state["exploration"]), float(state["round_threshold"])
        self.reward, self.duration = np.array(state["reward"], dtype=float), np.array(state["duration"], dtype=float)
        for key in ("last_round", "count", "last_exploit", "successful"):
            setattr(self, key, np.array(state[key], dtype=np.int64))
        self.exploit_history = [float(v) for v in state["exploit_history"]]


def oort_utility(num_samples: int, loss_sq_sum: float, samples_processed: int) -> float:
    """Oort's statistical utility |B| * sqrt(mean squared per-sample loss) over the whole local training.

    >>> oort_utility(4, loss_sq_sum=4 * 0.25 + 4 * 1.0, samples_processed=8)  # two epochs, losses 0.5 and 1.0
    3.1622776601683795
    """
    return float(num_samples * math.sqrt(loss_sq_sum / max(samples_processed, 1)))
