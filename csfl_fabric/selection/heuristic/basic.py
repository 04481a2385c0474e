"""Heuristic selectors: no learning, at most the latest losses or data sizes.

Aggregation weights belong to the rule (Cho et al. and Li et al. derive them together): selectors that
sample proportionally to data size return ``Selection.weights`` for a *simple* average, because an
n-weighted average on top of size-proportional sampling would count the data sizes twice.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_number, check_param, size_probs
from csfl_fabric.state import Selection, SelectionContext


@SELECTORS.register("heuristic.random")
class RandomSelector(ClientSelector):
    """Uniform sampling without replacement (McMahan et al., AISTATS 2017, https://arxiv.org/abs/1602.05629).

    Every available client is equally likely; no client appears twice. Aggregation stays n-weighted.
    """

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        k = min(ctx.k, len(ctx.available))
        ids = ctx.rng.choice(ctx.available, size=k, replace=False)
        return Selection(ids=ids.astype(np.int64), probs=np.full(k, k / len(ctx.available)))


def _simple_average(m: int) -> np.ndarray:
    return np.full(m, 1.0 / m)


@SELECTORS.register("heuristic.size_proportional")
class SizeProportionalSelector(ClientSelector):
    """MD sampling, Scheme I (Li et al., ICLR 2020, https://arxiv.org/abs/1907.02189).

    Rule: k i.i.d. draws **with replacement** from Categorical(p), p_k = n_k / sum_j n_j over the
    available clients. A client drawn twice is trained twice (identically: its batches are seeded by
    round and client) and counted twice. Aggregation: simple average over the draws (weight 1/k each,
    so client k's expected weight is p_k: unbiased). ``probs`` holds each draw's p_k.
    """

    allows_duplicates = True

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        p = size_probs(ctx)
        draws = ctx.rng.choice(len(ctx.available), size=ctx.k, replace=True, p=p)
        return Selection(ids=ctx.available[draws].astype(np.int64), probs=p[draws], weights=_simple_average(ctx.k))


@SELECTORS.register("heuristic.round_robin")
class RoundRobinSelector(ClientSelector):
    """Round robin / cyclic participation (Cho et al., ICML 2023, https://arxiv.org/abs/2302.03109).

    Rule: a *pass* is an ordering of all clients (0..K-1, or a fresh seeded permutation per pass with
    ``shuffle``); each round takes the next k clients of the pass that are available, so every client is
    selected once per pass before any is selected again. An offline client stays pending and is taken when
    it is back online; when fewer than k pending clients are online, those are taken, a new pass fills
    the round, and clients still pending (offline) are not carried over. With full availability and k
    dividing K these are the fixed blocks of the paper.
    Aggregation: n-weighted (FedAvg).

    Args:
        shuffle: draw a new random order for every pass (sampling without replacement across rounds).
    """

    def __init__(self, shuffle: bool = False) -> None:
        check_param("shuffle", shuffle, isinstance(shuffle, bool), "use true or false")
        self.shuffle = shuffle
        self.pending = np.zeros(0, dtype=np.int64)  # clients of the current pass not yet selected, in order

    def _new_pass(self, ctx: SelectionContext) -> np.ndarray:
        n = len(ctx.num_samples)
        return ctx.rng.permutation(n).astype(np.int64) if self.shuffle else np.arange(n, dtype=np.int64)

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        k = min(ctx.k, len(ctx.available))
        chosen = self._take(self.pending, ctx.available, k)
        self.pending = self.pending[~np.isin(self.pending, chosen)]
        if len(chosen) < k:
            # The pass is exhausted: start the next one. Clients chosen just now stay in it (each client once
            # per pass), but cannot fill this round twice.
            fresh = self._new_pass(ctx)
            extra = self._take(fresh[~np.isin(fresh, chosen)], ctx.available, k - len(chosen))
            self.pending = fresh[~np.isin(fresh, extra)]
            chosen = np.concatenate([chosen, extra])
        return Selection(ids=chosen)

    @staticmethod
    def _take(order: np.ndarray, available: np.ndarray, k: int) -> np.ndarray:
        return order[np.isin(order, available)][:k]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pending": self.pending.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = np.asarray(state["pending"], dtype=np.int64).copy()


class _PowerOfChoice(ClientSelector):
    """Shared rule of pow-d, cpow-d and rpow-d (Cho, Wang, Joshi, AISTATS 2022).

    1. Candidate set: d clients drawn **without replacement** with probability p_k proportional to n_k
       (sequential weighted draws, as numpy's ``choice(replace=False, p=...)`` and the reference code do).
    2. Score each candidate by a loss estimate (`_scores`, per variant).
    3. Select the k candidates with the highest scores (ties: the earlier-drawn candidate first).

    Aggregation: simple average (weight 1/k), as in the paper: the p_k enter through the sampling.
    """

    def __init__(self, d: int | None = None) -> None:
        check_param("d", d, d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1),
                    "use an integer >= clients_per_round, or null for 2 x clients_per_round")
        self.d = d

    @abstractmethod
    def _scores(self, ctx: SelectionContext, candidates: np.ndarray) -> np.ndarray:
        """The loss estimate of each candidate (higher = more likely selected)."""

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        k = min(ctx.k, len(ctx.available))
        d = 2 * ctx.k if self.d is None else self.d
        check_param("d", d, d >= ctx.k, f"d must be >= rounds.clients_per_round={ctx.k}")
        d = min(d, len(ctx.available))  # fewer available clients than d: every available one is a candidate
        candidates = ctx.rng.choice(ctx.available, size=d, replace=False, p=size_probs(ctx)).astype(np.int64)
        scores = np.asarray(self._scores(ctx, candidates), dtype=float)
        top = np.argsort(-scores, kind="stable")[:k]
        return Selection(ids=candidates[top], scores=scores[top], weights=_simple_average(k))


@SELECTORS.register("heuristic.pow_d")
class PowerOfChoiceSelector(_PowerOfChoice):
    """Power-of-choice, pow-d (Cho, Wang, Joshi, AISTATS 2022, https://arxiv.org/abs/2010.01243).

    d candidates drawn by data size without replacement; each computes its loss F_k(w^t) on its full
    local data at the current global model (``ctx.probe``, counted in ``select/probed_clients``); the k
    highest-loss candidates are selected. Aggregation: simple average.

    Args:
        d: candidate-set size, >= k (the paper uses d in {2k, 10k} on Synthetic; null = 2k).
    """

    @override
    def _scores(self, ctx: SelectionContext, candidates: np.ndarray) -> np.ndarray:
        return ctx.probe(candidates)


@SELECTORS.register("heuristic.cpow_d")
class ComputationEfficientPowerOfChoiceSelector(_PowerOfChoice):
    """Computation-efficient pow-d, cpow-d (Cho, Wang, Joshi, AISTATS 2022, https://arxiv.org/abs/2010.01243).

    As pow-d, but each candidate estimates its loss on one mini-batch of b samples (its first seeded
    batch of the round) instead of its full data. Aggregation: simple average.

    Args:
        d: candidate-set size, >= k (null = 2k).
        batch_size: b, samples in the loss estimate; null (default) = the local training batch size
            ``train.batch_size`` (``ctx.batch_size``), as in the paper, so the estimate is on the first batch
            the client would train on.
    """

    def __init__(self, d: int | None = None, batch_size: int | None = None) -> None:
        super().__init__(d)
        check_param("batch_size", batch_size, batch_size is None or (isinstance(batch_size, int) and batch_size >= 1),
                    "use an integer >= 1, or null for train.batch_size (the paper uses the local batch size)")
        self.batch_size = batch_size

    @override
    def _scores(self, ctx: SelectionContext, candidates: np.ndarray) -> np.ndarray:
        b = self.batch_size if self.batch_size is not None else ctx.batch_size
        if b is None:
            raise ValueError("Selector `heuristic.cpow_d` needs a batch size: set `selector.params.batch_size` "
                             "or pass `ctx.batch_size`.")
        return ctx.probe(candidates, batch_size=b)


@SELECTORS.register("heuristic.rpow_d")
class RecentPowerOfChoiceSelector(_PowerOfChoice):
    """Communication-free pow-d, rpow-d (Cho, Wang, Joshi, AISTATS 2022, https://arxiv.org/abs/2010.01243).

    As pow-d, but each candidate is scored by its **stale** loss: the mean training loss over its local
    steps the last time it took part (``ctx.history.last_loss``); never-selected clients score +inf, so
    they are tried first. No extra computation or communication. Aggregation: simple average.

    Args:
        d: candidate-set size, >= k (null = 2k; the paper uses a large d for rpow-d, e.g. 50 for k=3).
    """

    @override
    def _scores(self, ctx: SelectionContext, candidates: np.ndarray) -> np.ndarray:
        return stale_losses(ctx, candidates)


def stale_losses(ctx: SelectionContext, ids: np.ndarray) -> np.ndarray:
    """Last reported training loss of each of ``ids``; +inf for clients never trained."""
    losses = ctx.history.last_loss[ids].astype(float)
    return np.where(np.isnan(losses), np.inf, losses)


@SELECTORS.register("heuristic.loss")
class LossSelector(ClientSelector):
    """Top-k by last reported loss, epsilon exploration (d=K rpow-d, Cho et al. 2022, https://arxiv.org/abs/2010.01243).

    Rule (epsilon-greedy per slot): each of the k slots explores with probability epsilon, so
    n_explore ~ Binomial(k, epsilon) (a fixed round(epsilon k) would never explore for small k); the other
    k - n_explore slots take the available clients with the highest last reported training loss
    (``ctx.history.last_loss``; never-trained clients count as +inf; ties in random order), and the
    explorers are drawn uniformly from the remaining available clients. The d=K limit of rpow-d plus
    uniform exploration; the "lossbased" baseline of the DivFL code. Aggregation: n-weighted (FedAvg).

    Args:
        epsilon: fraction of each round's clients picked uniformly at random, in [0, 1].
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        check_number("epsilon", epsilon, lambda v: 0 <= v <= 1, "use a value in [0, 1]")
        self.epsilon = float(epsilon)

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        k = min(ctx.k, len(ctx.available))
        explore = int(ctx.rng.binomial(k, self.epsilon))
        # A random order first, so that a stable sort breaks ties (e.g. all +inf at the start) at random.
        order = ctx.rng.permutation(ctx.available)
        losses = stale_losses(ctx, order)
        ranked = order[np.argsort(-losses, kind="stable")]
        exploit = ranked[: k - explore]
        rest = ranked[k - explore :]
        explorers = ctx.rng.choice(rest, size=explore, replace=False) if explore else rest[:0]
        ids = np.concatenate([exploit, explorers]).astype(np.int64)
        return Selection(ids=ids, scores=stale_losses(ctx, ids))
