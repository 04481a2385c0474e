"""Rankings by a client signal: the norm of the last update, and greedy label coverage of the cohort."""

from __future__ import annotations

from typing import Any

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_param, top_k_random_ties
from csfl_fabric.state import Feedback, Selection, SelectionContext

_NORM_ORDERS = (1, 2)
_WEIGHTINGS = ("idf", "uniform")


@SELECTORS.register("heuristic.grad_norm")
class GradNormSelector(ClientSelector):
    """Top-k by update norm (Marnissi, El Hammouti, Bergou, 2021, https://arxiv.org/abs/2111.11204).

    Rule: the k available clients with the largest norm of their local update (params minus the global params
    they started from). By default the norm is the client's **last** update (``Feedback.updates``: stale, no
    extra cost); clients that never trained score +inf, so every client is tried once first. With
    ``fresh=true`` every available client's update norm at the current model is probed first
    (``ctx.probe(signal="update_norm")``, counted in cost and simulated time), as in the paper, where every
    device computes its gradient each round and only the selected ones upload. Deterministic given the norms
    (ties in random order). Aggregation: n-weighted (FedAvg). ``scores`` hold the norms.

    Deviations: the paper ranks by the norm of the gradient, here of the update (for one plain-SGD step, lr times
    the gradient); the reference code it is often run from (``euphoria0-0/Active-Client-Selection-...``,
    ``grad.py``) takes the L1 norm of the last layer's gradient, here the whole update's (``ord=1`` for L1).

    Args:
        ord: 2 (L2 norm) or 1 (L1 norm) of the update.
        fresh: probe the current update norms of all available clients instead of using the last ones.
    """

    needs_updates = True

    def __init__(self, ord: int = 2, fresh: bool = False) -> None:  # noqa: A002 - numpy's name for the norm order
        check_param("ord", ord, ord in _NORM_ORDERS and not isinstance(ord, bool), "use 1 or 2")
        check_param("fresh", fresh, isinstance(fresh, bool), "use true or false")
        check_param("ord", ord, not fresh or ord == 2, "`fresh: true` probes L2 norms; use ord: 2")
        self.ord, self.fresh = int(ord), fresh
        self.norms = np.zeros(0)  # NaN: never trained

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        if self.fresh:
            scores = ctx.probe(ctx.available, signal="update_norm")
        else:
            n = len(ctx.num_samples)
            norms = np.concatenate([self.norms, np.full(max(n - len(self.norms), 0), np.nan)])[:n]
            scores = np.where(np.isnan(norms), np.inf, norms)[ctx.available]
        top = top_k_random_ties(np.asarray(scores, dtype=float), min(ctx.k, len(ctx.available)), ctx.rng)
        return Selection(ids=ctx.available[top].astype(np.int64), scores=np.asarray(scores, dtype=float)[top])

    @override
    def update(self, feedback: Feedback) -> None:
        for c, u in (feedback.updates or {}).items():
            if c >= len(self.norms):
                self.norms = np.concatenate([self.norms, np.full(c + 1 - len(self.norms), np.nan)])
            self.norms[c] = float(u.double().norm(p=self.ord))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"norms": self.norms.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = np.asarray(state["norms"], dtype=float).copy()


def greedy_label_coverage(present: np.ndarray, weights: np.ndarray, k: int, order: np.ndarray) -> list[int]:
    """Greedy max coverage: k rows of ``present`` (clients x classes), each adding the most weight of new classes.

    ``order`` breaks ties (the earlier position wins); once every class is covered the gains are 0 and the rest
    follow ``order``.

    >>> present = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=bool)
    >>> greedy_label_coverage(present, np.ones(4), 2, np.arange(3))
    [0, 1]
    >>> greedy_label_coverage(present, np.array([1.0, 1.0, 1.0, 5.0]), 2, np.arange(3))
    [2, 0]
    """
    covered = np.zeros(present.shape[1], dtype=bool)
    remaining = [int(c) for c in order]
    chosen: list[int] = []
    while remaining and len(chosen) < k:
        gains = (present[remaining] & ~covered) @ weights
        best = remaining.pop(int(np.argmax(gains)))  # the first maximum: the tie-break order
        chosen.append(best)
        covered |= present[best]
    return chosen


@SELECTORS.register("heuristic.label_coverage")
class LabelCoverageSelector(ClientSelector):
    """Greedy label coverage of the cohort (class balancing as Astraea, Duan et al., TPDS 2021, https://arxiv.org/abs/1907.01132).

    Rule: greedy maximum coverage over the clients' label sets (``ctx.label_histograms`` > 0): k times, take the
    available client that adds the most weight of classes not yet held by the cohort; weight 1 per class
    (``uniform``) or 1 / (samples of the class over all clients) (``idf``, rare classes first, the predecessor
    simulator's default). Deterministic given the histograms: ties, and every pick once all classes are
    covered, go in random order. Aggregation:
    n-weighted (FedAvg). ``scores`` hold each pick's coverage gain. Astraea rebalances with mediators and a KL
    criterion; this is the simpler coverage baseline of the predecessor simulator (``label_coverage.py``,
    without its loss term), kept as a baseline, not as Astraea.

    Signal: label histograms, an opt-in signal (``needs_label_histograms``) that reveals each client's label
    distribution to the server.

    Args:
        weighting: ``"idf"`` or ``"uniform"``.
    """

    needs_label_histograms = True

    def __init__(self, weighting: str = "idf") -> None:
        check_param("weighting", weighting, weighting in _WEIGHTINGS, f"use one of {', '.join(_WEIGHTINGS)}")
        self.weighting = weighting

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        if ctx.label_histograms is None:
            raise ValueError("Selector `heuristic.label_coverage` needs `ctx.label_histograms` (it sets "
                             "`needs_label_histograms`); build runs with `csfl_fabric.build`.")
        hist = np.asarray(ctx.label_histograms, dtype=float)
        weights = 1.0 / np.maximum(hist.sum(axis=0), 1.0) if self.weighting == "idf" else np.ones(hist.shape[1])
        present = hist[ctx.available] > 0
        picked = greedy_label_coverage(present, weights, min(ctx.k, len(ctx.available)),
                                       ctx.rng.permutation(len(ctx.available)))
        covered = np.zeros(hist.shape[1], dtype=bool)
        gains = []
        for p in picked:
            gains.append(float((present[p] & ~covered) @ weights))
            covered |= present[p]
        return Selection(ids=ctx.available[picked].astype(np.int64), scores=np.array(gains))
