"""Bandit selectors with an explicit reward: LinUCB over client features and epsilon-greedy over clients.

The reward of both, logged as ``select/reward`` (the mean over the round's rewarded clients), is the drop of a
client's mean training loss since its previous participation, ``r_k = loss_k(previous) - loss_k(now)``; a client's
first participation only sets its baseline. Nothing else enters it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_number, top_k_random_ties
from csfl_fabric.selection.learning.classic import _grow
from csfl_fabric.state import Feedback, Selection, SelectionContext

#: LinUCB's context: bias, data size, stale loss, staleness, participation rate, speed (see `client_features`).
NUM_FEATURES = 6


class LossDrop:
    """Each client's last training loss and the reward of its new one (the loss drop); NaN until it first trains."""

    def __init__(self) -> None:
        self.last = np.zeros(0)
        self.mean_reward = math.nan

    def rewards(self, feedback: Feedback) -> dict[int, float]:
        """The loss drops of the round's clients that trained before; updates the baselines."""
        out: dict[int, float] = {}
        for r in {r.client_id: r for r in feedback.results}.values():  # a duplicated client is one observation
            self.last = _grow(self.last, r.client_id + 1, np.nan)
            if not np.isnan(self.last[r.client_id]):
                out[r.client_id] = float(self.last[r.client_id] - r.loss)
            self.last[r.client_id] = r.loss
        self.mean_reward = float(np.mean(list(out.values()))) if out else math.nan
        return out

    def metrics(self) -> dict[str, float]:
        """``select/reward``: the round's mean reward (absent when no client was rewarded)."""
        return {} if math.isnan(self.mean_reward) else {"select/reward": self.mean_reward}


def client_features(ctx: SelectionContext, ids: np.ndarray) -> np.ndarray:
    """LinUCB's context of each of ``ids`` (rows), every feature in [0, 1].

    Columns: 1 (bias); n_k / max n; last training loss / the largest one (0 if never trained); rounds since the
    last participation / (round + 1) (1 if never); times selected / (round + 1); fastest expected duration /
    the client's (0 without system profiles).
    """
    h, t = ctx.history, ctx.round + 1
    seen = h.times_selected[ids] > 0
    loss = np.where(np.isnan(h.last_loss[ids]), 0.0, h.last_loss[ids])
    top = np.nanmax(h.last_loss) if np.isfinite(h.last_loss).any() else 1.0
    staleness = np.where(seen, (ctx.round - h.last_round[ids]) / t, 1.0)
    speed = np.zeros(len(ids))
    if ctx.profiles is not None:
        speed = ctx.profiles.duration.min() / ctx.profiles.duration[ids]
    return np.column_stack([np.ones(len(ids)), ctx.num_samples[ids] / ctx.num_samples.max(),
                            loss / max(top, 1e-12), staleness, np.minimum(h.times_selected[ids] / t, 1.0), speed])


@SELECTORS.register("learning.linucb")
class LinUCBSelector(ClientSelector):
    """LinUCB over client features (Li, Chu, Langford, Schapire, WWW 2010, https://arxiv.org/abs/1003.0146).

    Rule (Algorithm 1 with one shared linear model, as the predecessor simulator's ``linucb.py``): with
    A = ridge I + sum x x^T and b = sum r x over the observed (context, reward) pairs, theta = A^-1 b and client
    k's index is ``x_k^T theta + alpha sqrt(x_k^T A^-1 x_k)``; the k available clients with the highest index
    are selected (deterministic given A, b and the features; ties in random order). x_k = `client_features` at
    selection time; the reward r is the loss
    drop (module docstring), observed for selected clients that trained before. Aggregation: n-weighted
    (FedAvg); ``scores`` hold the indices. Per-client (disjoint) models would need many pulls of each client;
    the shared model generalises across clients through the features.

    Args:
        alpha: exploration weight >= 0 of the confidence width.
        ridge: the ridge lambda > 0 that starts A.
    """

    def __init__(self, alpha: float = 1.0, ridge: float = 1.0) -> None:
        check_number("alpha", alpha, lambda v: v >= 0, "use a value >= 0")
        check_number("ridge", ridge, lambda v: v > 0, "use a value > 0")
        self.alpha, self.ridge = float(alpha), float(ridge)
        self.a = np.eye(NUM_FEATURES) * self.ridge
        self.b = np.zeros(NUM_FEATURES)
        self.pending: dict[int, np.ndarray] = {}  # the contexts of the round's selection, until its feedback
        self.loss = LossDrop()

    def indices(self, x: np.ndarray) -> np.ndarray:
        """The LinUCB index of each row of ``x``."""
        a_inv = np.linalg.inv(self.a)
        return x @ (a_inv @ self.b) + self.alpha * np.sqrt(np.einsum("ij,jk,ik->i", x, a_inv, x))

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        x = client_features(ctx, ctx.available)
        index = self.indices(x)
        top = top_k_random_ties(index, min(ctx.k, len(ctx.available)), ctx.rng)
        self.pending = {int(ctx.available[i]): x[i] for i in top}
        return Selection(ids=ctx.available[top].astype(np.int64), scores=index[top])

    @override
    def update(self, feedback: Feedback) -> None:
        for c, r in self.loss.rewards(feedback).items():
            if c in self.pending:
                x = self.pending[c]
                self.a += np.outer(x, x)
                self.b += r * x
        self.pending = {}

    @override
    def metrics(self) -> dict[str, float]:
        return self.loss.metrics()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"a": self.a.copy(), "b": self.b.copy(), "last_loss": self.loss.last.copy(),
                "pending": {c: x.copy() for c, x in self.pending.items()}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.a, self.b = np.array(state["a"], dtype=float), np.array(state["b"], dtype=float)
        self.loss.last = np.array(state["last_loss"], dtype=float)
        self.pending = {int(c): np.array(x, dtype=float) for c, x in state["pending"].items()}


@SELECTORS.register("learning.eps_greedy")
class EpsilonGreedySelector(ClientSelector):
    """Epsilon-greedy over clients (Sutton & Barto, RL, 2nd ed. 2018, http://incompleteideas.net/book/the-book-2nd.html).

    Sections 2.2-2.6 of the book: sample-average action values, epsilon-greedy, optimistic initial values.

    Arms are clients; Q_k is the sample mean of k's rewards (the loss drop, module docstring), updated
    incrementally. Each of the k slots explores with probability eps_t = max(epsilon decay^t, min_epsilon), so
    n_explore ~ Binomial(k, eps_t); the other slots take the available clients with the highest Q (clients
    without a reward yet count as +inf, optimistic initial values, so each is tried; ties in random order), and
    the explorers are drawn uniformly from the remaining available clients. Aggregation: n-weighted (FedAvg);
    ``scores`` hold Q. The predecessor simulator explored with one coin per round instead of per slot.

    Args:
        epsilon: initial exploration probability, in [0, 1].
        decay: multiplicative decay of epsilon per round, in (0, 1].
        min_epsilon: floor of the exploration probability, in [0, 1].
    """

    def __init__(self, epsilon: float = 0.1, decay: float = 1.0, min_epsilon: float = 0.0) -> None:
        check_number("epsilon", epsilon, lambda v: 0 <= v <= 1, "use a value in [0, 1]")
        check_number("decay", decay, lambda v: 0 < v <= 1, "use a value in (0, 1]")
        check_number("min_epsilon", min_epsilon, lambda v: 0 <= v <= 1, "use a value in [0, 1]")
        self.epsilon, self.decay, self.min_epsilon = float(epsilon), float(decay), float(min_epsilon)
        self.value = np.zeros(0)
        self.count = np.zeros(0)
        self.loss = LossDrop()

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        n = len(ctx.num_samples)
        value = np.where(_grow(self.count, n, 0.0) > 0, _grow(self.value, n, 0.0), np.inf)[ctx.available]
        k = min(ctx.k, len(ctx.available))
        eps = max(self.epsilon * self.decay**ctx.round, self.min_epsilon)
        explore = int(ctx.rng.binomial(k, eps))
        ranked = top_k_random_ties(value, len(value), ctx.rng)
        explorers = ctx.rng.choice(ranked[k - explore :], size=explore, replace=False) if explore else ranked[:0]
        chosen = np.concatenate([ranked[: k - explore], explorers]).astype(np.int64)
        return Selection(ids=ctx.available[chosen], scores=value[chosen])

    @override
    def update(self, feedback: Feedback) -> None:
        for c, r in self.loss.rewards(feedback).items():
            self.count, self.value = _grow(self.count, c + 1, 0.0), _grow(self.value, c + 1, 0.0)
            self.count[c] += 1
            self.value[c] += (r - self.value[c]) / self.count[c]

    @override
    def metrics(self) -> dict[str, float]:
        return self.loss.metrics()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value.copy(), "count": self.count.copy(), "last_loss": self.loss.last.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.count = np.array(state["value"], dtype=float), np.array(state["count"], dtype=float)
        self.loss.last = np.array(state["last_loss"], dtype=float)
