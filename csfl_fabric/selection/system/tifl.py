"""TiFL: tiers of clients by profiled latency, one tier per round, adaptive tier probabilities under credits."""

from __future__ import annotations

from typing import Any

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_param
from csfl_fabric.selection.system.classic import _require_profiles
from csfl_fabric.state import Selection, SelectionContext

_SIGNALS = ("probe", "stale")


def latency_tiers(latency: np.ndarray, num_tiers: int) -> np.ndarray:
    """Each client's tier: clients sorted by latency, cut into groups of ceil(K / num_tiers) (tier 0 the fastest).

    >>> latency_tiers(np.array([5.0, 1.0, 3.0, 2.0, 4.0]), 2).tolist()
    [1, 0, 0, 0, 1]
    """
    size = -(-len(latency) // num_tiers)
    tier = np.empty(len(latency), dtype=np.int64)
    tier[np.argsort(latency, kind="stable")] = np.arange(len(latency)) // size
    return tier


def tier_probabilities(accuracy: np.ndarray, credits: np.ndarray) -> np.ndarray:
    """TiFL's ChangeProbs: the n tiers with credits ranked by accuracy, the i-th lowest (0-based) gets (n - i) / D.

    D = n (n + 1) / 2, so the least accurate tier is the most likely; tiers without credits get 0.

    >>> tier_probabilities(np.array([0.9, 0.5, 0.7]), np.array([1, 1, 1])).round(4).tolist()
    [0.1667, 0.5, 0.3333]
    >>> tier_probabilities(np.array([0.9, 0.5, 0.7]), np.array([1, 0, 1])).round(4).tolist()
    [0.3333, 0.0, 0.6667]
    """
    live = np.flatnonzero(np.asarray(credits) > 0)
    n = len(live)
    probs = np.zeros(len(accuracy))
    ranked = live[np.argsort(np.asarray(accuracy, dtype=float)[live], kind="stable")]
    probs[ranked] = (n - np.arange(n)) / (n * (n + 1) / 2)
    return probs


@SELECTORS.register("system.tifl")
class TiFLSelector(ClientSelector):
    """TiFL, tier-based selection (Chai et al., HPDC 2020, https://arxiv.org/abs/2001.09249).

    Rule (adaptive tier selection): the clients are sorted by profiled latency (``ctx.profiles.duration``, the
    expected round duration) and cut into ``num_tiers`` tiers of equal size. Each round one tier is drawn with
    the tier probabilities (initially uniform) among the tiers that have credits left and an available client;
    its credit count drops by one, and k of its available clients are sampled uniformly (a tier with fewer
    than k available clients is topped up from the nearest tiers by latency). Every ``interval`` rounds the
    probabilities are recomputed from each tier's current performance (`tier_probabilities`, the paper's
    ChangeProbs): tiers ranked by accuracy, the least accurate the most likely. Aggregation: n-weighted
    (FedAvg). ``scores`` hold each selected client's tier.

    Deviations: the paper measures each tier's test accuracy; the simulator has no per-client test split, so
    a tier's performance is minus the mean loss of the global model on its available clients' training data
    (``signal="probe"``, probed every ``interval`` rounds and counted), or minus their last training losses
    (``signal="stale"``, free). The probabilities change every ``interval`` rounds, unconditionally, as the open
    re-implementation the rule was checked against does (its ``change_probs``: D = n (n + 1) / 2, credits
    ceil(rounds / tiers) per tier; the paper's own code is not public). ``credits: null``
    (the default) never runs out; with credits, once no tier with credits has an available client, credits
    are ignored. The interval default (10) is ours.

    Args:
        num_tiers: number of latency tiers (the paper uses 5).
        interval: rounds between probability updates.
        credits: selections each tier may receive over the run, or null for no limit.
        signal: ``"probe"`` or ``"stale"`` (see above).
    """

    needs_profiles = True

    def __init__(self, num_tiers: int = 5, interval: int = 10, credits: int | None = None,
                 signal: str = "probe") -> None:
        check_param("num_tiers", num_tiers, type(num_tiers) is int and num_tiers >= 1, "use an integer >= 1")
        check_param("interval", interval, type(interval) is int and interval >= 1, "use an integer >= 1")
        check_param("credits", credits, credits is None or (type(credits) is int and credits >= 1),
                    "use an integer >= 1 or null")
        check_param("signal", signal, signal in _SIGNALS, f"use one of {', '.join(_SIGNALS)}")
        self.num_tiers, self.interval, self.max_credits, self.signal = num_tiers, interval, credits, signal
        self.tier = np.zeros(0, dtype=np.int64)
        self.probs = np.zeros(0)
        self.credits = np.zeros(0)

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        if len(self.tier) == 0:
            self.tier = latency_tiers(_require_profiles(ctx, "system.tifl").duration, self.num_tiers)
            count = int(self.tier.max()) + 1
            self.probs = np.full(count, 1.0 / count)
            self.credits = np.full(count, np.inf if self.max_credits is None else float(self.max_credits))
        if ctx.round > 0 and ctx.round % self.interval == 0:
            self.probs = tier_probabilities(self._performance(ctx), self.credits)
        online = np.bincount(self.tier[ctx.available], minlength=len(self.probs)) > 0
        eligible = online & (self.credits > 0) if (online & (self.credits > 0)).any() else online
        p = np.where(eligible, self.probs, 0.0)
        p = p / p.sum() if p.sum() > 0 else eligible / eligible.sum()
        chosen_tier = int(ctx.rng.choice(len(p), p=p))
        self.credits[chosen_tier] -= 1
        ids = self._clients(ctx, chosen_tier)
        return Selection(ids=ids, scores=self.tier[ids].astype(float))

    def _performance(self, ctx: SelectionContext) -> np.ndarray:
        """Minus each tier's mean loss over its available clients (NaN losses and empty tiers: the mean)."""
        if self.signal == "probe":
            losses = np.asarray(ctx.probe(ctx.available), dtype=float)
        else:
            losses = ctx.history.last_loss[ctx.available].astype(float)
        per_tier = np.full(len(self.probs), np.nan)
        for t in range(len(self.probs)):
            values = losses[(self.tier[ctx.available] == t) & ~np.isnan(losses)]
            per_tier[t] = values.mean() if len(values) else np.nan
        fill = np.nanmean(per_tier) if np.isfinite(per_tier).any() else 0.0
        return -np.where(np.isnan(per_tier), fill, per_tier)

    def _clients(self, ctx: SelectionContext, tier: int) -> np.ndarray:
        """The k available clients of ``tier``, uniformly; topped up from the nearest tiers (random inside each)."""
        k = min(ctx.k, len(ctx.available))
        distance = np.abs(self.tier[ctx.available] - tier)
        order = ctx.rng.permutation(len(ctx.available))
        ranked = order[np.argsort(distance[order], kind="stable")]
        return ctx.available[ranked[:k]].astype(np.int64)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"tier": self.tier.copy(), "probs": self.probs.copy(), "credits": self.credits.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tier = np.asarray(state["tier"], dtype=np.int64).copy()
        self.probs = np.asarray(state["probs"], dtype=float).copy()
        self.credits = np.asarray(state["credits"], dtype=float).copy()
