"""Learning-based selectors: bandits, valuations, clustering and submodular diversity.

Each docstring states the rule and the aggregation weights it uses, because the two belong together:
clustered sampling is unbiased only with a simple average (``Selection.weights`` = 1/m), whereas the
deterministic or valuation-driven rules keep FedAvg's n-weighted average (``weights`` None).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_number, check_param, size_probs
from csfl_fabric.selection.sampling import draw_from_urns, facility_location_greedy, similarity_urns, size_urns
from csfl_fabric.state import Feedback, Selection, SelectionContext

_REWARDS = ("loss", "loss_reduction")
_DIVFL_WEIGHTS = ("samples", "coverage")
_DIVFL_SIGNALS = ("gradient", "update")


def _grow(array: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``array`` padded with ``fill`` to length n (state is sized lazily: K is known at the first round)."""
    return array if len(array) >= n else np.concatenate([array, np.full(n - len(array), fill)])


@SELECTORS.register("learning.ucb")
class UCBSelector(ClientSelector):
    """Discounted UCB over clients, UCB-CS (Cho, Gupta, Joshi, Yağan, Asilomar 2020, https://arxiv.org/abs/2012.08009).

    Arms are clients; a reward is observed only for the clients that trained. After round t, for every
    client, ``S_k <- gamma S_k + 1[k in S_t] r_k`` and ``N_k <- gamma N_k + 1[k in S_t]`` (discounted reward
    sum and count, Garivier & Moulines' discounted UCB). In round t+1 the index of client k is

        ``I_k = S_k / N_k + c * sqrt(2 ln(sum_j N_j) / N_k)``,

    with ``I_k = +inf`` while no reward of k has been observed; the k available clients with the highest
    index are selected (ties in random order). ``weighting="size"`` ranks by ``p_k I_k`` instead, p_k = n_k /
    sum_j n_j over the available clients: the p_k-weighted selection step that the project's method
    catalogue gives for UCB-CS (marked there as to be verified), since the objective is the p_k-weighted
    global loss ``F = sum_k p_k F_k``. The default stays ``"none"``: the paper's selection equation
    (Algorithm 1) could not be checked when this was written, and on Synthetic(1,1) (30 clients, k=3, seed 0)
    the weighted index concentrates on the largest clients (final accuracy 0.732 against 0.909 unweighted).
    Reward ``r_k``: ``"loss"`` (UCB-CS: the client's mean training loss, so high-loss clients are favoured as
    in pow-d) or ``"loss_reduction"`` (the drop of its mean training loss since its previous participation; a
    client's first participation only sets the baseline). Aggregation: n-weighted (FedAvg); ``scores`` hold
    the ranked (weighted) indices.

    Args:
        gamma: discount factor in (0, 1] (1 = undiscounted UCB).
        c: exploration weight >= 0 of the confidence bonus.
        reward: ``"loss"`` or ``"loss_reduction"``.
        weighting: ``"none"`` (rank by I_k) or ``"size"`` (rank by p_k I_k).
    """

    def __init__(self, gamma: float = 0.9, c: float = 1.0, reward: str = "loss", weighting: str = "none") -> None:
        check_number("gamma", gamma, lambda v: 0 < v <= 1, "use a value in (0, 1]")
        check_number("c", c, lambda v: v >= 0, "use a value >= 0")
        check_param("reward", reward, reward in _REWARDS, f"use one of {', '.join(_REWARDS)}")
        check_param("weighting", weighting, weighting in ("size", "none"), "use one of size, none")
        self.gamma, self.c, self.reward, self.weighting = float(gamma), float(c), reward, weighting
        self.reward_sum = np.zeros(0)
        self.count = np.zeros(0)
        self.last_loss = np.zeros(0)  # the baseline of "loss_reduction"; NaN until a client first trains

    def indices(self, n: int) -> np.ndarray:
        """The UCB index of every client 0..n-1 (+inf for clients without an observed reward)."""
        s, cnt = _grow(self.reward_sum, n, 0.0), _grow(self.count, n, 0.0)
        seen = cnt > 0
        out = np.full(n, np.inf)
        total = max(cnt.sum(), 1.0)
        out[seen] = s[seen] / cnt[seen] + self.c * np.sqrt(2 * np.log(total) / cnt[seen])
        return out

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        k = min(ctx.k, len(ctx.available))
        order = ctx.rng.permutation(ctx.available)  # random tie-breaking among equal (e.g. +inf) indices
        index = self.indices(len(ctx.num_samples))[order]
        if self.weighting == "size":
            n = ctx.num_samples[order].astype(float)
            index = np.where(np.isinf(index), np.inf, index * n / max(n.sum(), 1.0))  # unseen ones still first
        top = np.argsort(-index, kind="stable")[:k]
        return Selection(ids=order[top].astype(np.int64), scores=index[top])

    @override
    def update(self, feedback: Feedback) -> None:
        n = max([len(self.count)] + [r.client_id + 1 for r in feedback.results])
        self.reward_sum = _grow(self.reward_sum, n, 0.0) * self.gamma
        self.count = _grow(self.count, n, 0.0) * self.gamma
        self.last_loss = _grow(self.last_loss, n, np.nan)
        for r in {r.client_id: r for r in feedback.results}.values():  # a duplicated client is one observation
            if self.reward == "loss":
                self.reward_sum[r.client_id] += r.loss
                self.count[r.client_id] += 1
            elif not np.isnan(self.last_loss[r.client_id]):
                self.reward_sum[r.client_id] += self.last_loss[r.client_id] - r.loss
                self.count[r.client_id] += 1
            self.last_loss[r.client_id] = r.loss

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"reward_sum": self.reward_sum.copy(), "count": self.count.copy(), "last_loss": self.last_loss.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward_sum, self.count, self.last_loss = (np.asarray(state[key], dtype=float).copy()
                                                       for key in ("reward_sum", "count", "last_loss"))


@SELECTORS.register("learning.afl")
class ActiveFLSelector(ClientSelector):
    """Active Federated Learning (Goetz et al., 2019, https://arxiv.org/abs/1909.12641).

    Valuation ``v_k = sqrt(n_k) * loss_k`` (the summed loss over sqrt(n_k)), refreshed from the mean
    training loss each time k trains and stale otherwise (the FedCor code refreshes it from the loss at the
    received global model, which would cost an extra pass); clients not valued yet are probed once
    (``ctx.probe``: loss of the current global model on their data, as the FedCor reference code does
    for all clients before round 0). Each round, over the available clients: (1) the
    ``floor(alpha1 * K)`` lowest valuations are set aside; (2) ``n_soft`` clients are sampled without
    replacement from the others with probability proportional to ``exp(alpha2 * v_k)``; (3) the remaining
    ``k - n_soft`` are sampled uniformly from all not yet chosen. Aggregation: n-weighted (FedAvg);
    ``scores`` hold the valuations.

    Deviation from the reference code (FedCor's ``int((1 - alpha3) * m)``): ``n_soft`` is ``(1 - alpha3) k``
    rounded stochastically, ``floor(x)`` plus one with probability ``x - floor(x)``, so its mean is exactly
    ``(1 - alpha3) k`` at every k. With ``int`` a round of k=1 has n_soft = 0 and AFL is uniform sampling;
    here it draws by valuation with probability 0.9 and uniformly with probability 0.1, the paper's split.

    Args:
        alpha1: fraction of lowest-valued clients excluded from the softmax draw, in [0, 1).
        alpha2: softmax temperature (inverse), >= 0.
        alpha3: fraction of each round's clients drawn uniformly, in [0, 1].
    """

    def __init__(self, alpha1: float = 0.75, alpha2: float = 0.01, alpha3: float = 0.1) -> None:
        check_number("alpha1", alpha1, lambda v: 0 <= v < 1, "use a value in [0, 1)")
        check_number("alpha2", alpha2, lambda v: v >= 0, "use a value >= 0")
        check_number("alpha3", alpha3, lambda v: 0 <= v <= 1, "use a value in [0, 1]")
        self.alpha1, self.alpha2, self.alpha3 = float(alpha1), float(alpha2), float(alpha3)
        self.valuation = np.zeros(0)  # NaN: not valued yet

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        self.valuation = _grow(self.valuation, len(ctx.num_samples), np.nan)
        avail = ctx.available
        unvalued = avail[np.isnan(self.valuation[avail])]
        if len(unvalued):
            self.valuation[unvalued] = np.sqrt(ctx.num_samples[unvalued]) * ctx.probe(unvalued)
        k = min(ctx.k, len(avail))
        x = (1 - self.alpha3) * k
        n_soft = min(int(x) + int(ctx.rng.random() < x - int(x)), k)  # stochastic rounding, mean (1 - alpha3) k
        v = self.valuation[avail]
        keep = max(len(avail) - int(self.alpha1 * len(avail)), n_soft)
        ranked = np.argsort(v, kind="stable")[len(avail) - keep :]  # the `keep` highest valuations
        logits = self.alpha2 * v[ranked]
        prob = np.exp(logits - logits.max())
        soft = ranked[ctx.rng.choice(len(ranked), size=n_soft, replace=False, p=prob / prob.sum())]
        rest = np.setdiff1d(np.arange(len(avail)), soft)
        uniform = ctx.rng.choice(rest, size=k - n_soft, replace=False)
        chosen = np.concatenate([soft, uniform]).astype(np.int64)
        return Selection(ids=avail[chosen], scores=v[chosen])

    @override
    def update(self, feedback: Feedback) -> None:
        for r in feedback.results:
            self.valuation = _grow(self.valuation, r.client_id + 1, np.nan)
            self.valuation[r.client_id] = np.sqrt(r.num_samples) * r.loss

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"valuation": self.valuation.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.valuation = np.asarray(state["valuation"], dtype=float).copy()


@SELECTORS.register("learning.clustered_size")
class ClusteredSizeSelector(ClientSelector):
    """Clustered sampling by sample size, Algorithm 1 (Fraboni et al., ICML 2021, https://arxiv.org/abs/2105.05883).

    m urns of mass 1 are filled with m * p_k of each available client (p_k = n_k / sum over the available
    clients), clients in decreasing p_k, spilling into the next urn when one is full; each round one
    client is drawn per urn with probability its share of that urn. A client split over two urns can be
    drawn twice (counted twice). Aggregation: simple average (1/m per draw): each client's expected
    weight is p_k (unbiased) with less variance than MD sampling. ``probs`` hold the in-urn probabilities.
    """

    allows_duplicates = True

    def _urns(self, ctx: SelectionContext, m: int) -> np.ndarray:
        return size_urns(size_probs(ctx), m)

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        m = min(ctx.k, len(ctx.available))
        draws, probs = draw_from_urns(self._urns(ctx, m), ctx.rng)
        return Selection(ids=ctx.available[draws].astype(np.int64), probs=probs, weights=np.full(m, 1.0 / m))


@SELECTORS.register("learning.clustered_similarity")
class ClusteredSimilaritySelector(ClusteredSizeSelector):
    """Clustered sampling by similarity, Algorithm 2 (Fraboni et al., ICML 2021, https://arxiv.org/abs/2105.05883).

    Each client's representative gradient is its latest update (local minus global params; zero before it
    first trains). Dissimilarity ``arccos(cos(g_i, g_j))`` (0 when either is zero), then Ward hierarchical
    clustering (scipy ``linkage(D, "ward")`` with the rows of D as observations, as the reference code
    does); the tree is cut into groups of mass <= 1/m, the m heaviest groups seed the m urns and the other
    clients are poured into them as in Algorithm 1. One client per urn; simple average (unbiased, each
    client's expected weight is p_k). Memory: one float32 vector of the model's size per client.
    """

    needs_updates = True

    def __init__(self) -> None:
        self.updates: np.ndarray | None = None  # K x dim float32, built at the first feedback

    @override
    def _urns(self, ctx: SelectionContext, m: int) -> np.ndarray:
        avail = ctx.available
        p = size_probs(ctx)
        if self.updates is None or len(avail) < 2:
            return size_urns(p, m)  # no update seen yet: every dissimilarity is 0, Alg. 1 is the same partition
        g = _rows(self.updates, len(ctx.num_samples))[avail].astype(np.float64)
        norms = np.linalg.norm(g, axis=1)
        cos = (g @ g.T) / np.maximum(np.outer(norms, norms), 1e-30)
        dist = np.where(np.outer(norms, norms) > 0, np.arccos(np.clip(cos, -1.0, 1.0)), 0.0)
        with warnings.catch_warnings():
            # The reference code clusters the rows of the square matrix as observations; scipy warns about that.
            from scipy.cluster.hierarchy import ClusterWarning, linkage  # scipy: only for this selector

            warnings.simplefilter("ignore", ClusterWarning)
            tree = linkage(dist, "ward")
        return similarity_urns(tree, p, m, ctx.rng)

    @override
    def update(self, feedback: Feedback) -> None:
        if not feedback.updates:
            return
        self.updates = _store_updates(self.updates, feedback.updates)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"updates": None if self.updates is None else self.updates.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        u = state["updates"]
        self.updates = None if u is None else np.asarray(u, dtype=np.float32).copy()


def _rows(table: np.ndarray, n: int) -> np.ndarray:
    """``table`` with zero rows appended up to n rows (clients that never trained have a zero update)."""
    if len(table) >= n:
        return table
    return np.concatenate([table, np.zeros((n - len(table), table.shape[1]), dtype=table.dtype)])


def _store_updates(table: np.ndarray | None, updates: dict[int, Any]) -> np.ndarray:
    """Write each client's update vector into its row of ``table`` (grown as needed; unseen rows stay 0)."""
    dim = len(next(iter(updates.values())))
    rows = max(updates) + 1 if table is None else max(len(table), max(updates) + 1)
    grown = np.zeros((rows, dim), dtype=np.float32)
    if table is not None:
        grown[: len(table)] = table
    for c, u in updates.items():
        grown[c] = np.asarray(u, dtype=np.float32)
    return grown


@SELECTORS.register("learning.divfl")
class DivFLSelector(ClientSelector):
    """DivFL, diverse selection by facility location (Balakrishnan et al., ICLR 2022, https://openreview.net/forum?id=nwKXyFvaUm).

    Select S (|S| = k) among the available clients minimising ``G(S) = sum_j min_{i in S} ||g_j - g_i||``
    over all clients j with a known vector, by lazy greedy (Minoux) on the submodular coverage (the paper's
    eq. for the facility-location objective; the reference code's ``lazy_greedy``).

    ``signal="gradient"`` (default), as the reference code (``melodi-lab/divfl``, ``flearn/trainers/fedavg.py``)
    runs it: ``g_k`` is client k's full-batch gradient of its mean training loss at the global model it
    received, gathered through ``ctx.probe_gradients`` (counted as probes: a download, a forward and backward
    pass over the client's data and a model-sized upload). Round 0 collects the gradients of all K clients
    (of every available client; a client offline then is collected when it is first available); with one
    client per round (k = 1) all are collected again every round, as the reference does; otherwise only the
    selected clients' gradients are refreshed, at the model they receive (the reference computes them at the
    start of local training). ``refresh_every=r`` collects all gradients every r rounds (r = 1: the paper's
    "ideal" variant with fresh gradients every round).

    ``signal="update"``: the earlier, probe-free variant: ``g`` is each client's latest update (local minus
    global params, stale until it trains again; for one plain-SGD step -lr times the gradient, and facility
    location is invariant to a common scale), and clients without a vector are selected first (random order),
    so every vector is known after about K/k rounds.

    Deterministic given the vectors: at k=1 it selects the medoid of the gradients, which may be the same
    client for many rounds, as the rule intends. ``scores`` hold how many clients each pick represents,
    itself included (the known clients nearest to it; 1 for a client without a vector yet). Aggregation:
    ``weights="samples"`` keeps FedAvg's n-weighted average, as the reference code does;
    ``weights="coverage"`` uses those counts, the paper's cluster-size weights gamma (commented out in the
    reference code). Memory: one float32 vector of the model's size per client.

    Args:
        weights: ``"samples"`` or ``"coverage"``.
        signal: ``"gradient"`` (probed full-batch gradients) or ``"update"`` (stale client updates).
        refresh_every: with ``signal="gradient"``, collect every client's gradient every this many rounds;
            null = the reference's rule (round 0, and every round when k = 1).
    """

    deterministic = True

    def __init__(self, weights: str = "samples", signal: str = "gradient", refresh_every: int | None = None) -> None:
        check_param("weights", weights, weights in _DIVFL_WEIGHTS, f"use one of {', '.join(_DIVFL_WEIGHTS)}")
        check_param("signal", signal, signal in _DIVFL_SIGNALS, f"use one of {', '.join(_DIVFL_SIGNALS)}")
        check_param("refresh_every", refresh_every, refresh_every is None or (
            isinstance(refresh_every, int) and not isinstance(refresh_every, bool) and refresh_every >= 1),
            "use an integer >= 1, or null for the reference code's rule")
        self.weights, self.signal, self.refresh_every = weights, signal, refresh_every
        self.needs_updates = signal == "update"  # the orchestrator hands updates only to selectors that ask
        self.updates: np.ndarray | None = None  # one vector per client (gradients or updates), K x dim float32
        self.known = np.zeros(0, dtype=bool)

    def _probe(self, ctx: SelectionContext, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if ctx.probe_gradients is None:
            raise ValueError("Selector `learning.divfl` with `signal: gradient` needs `ctx.probe_gradients`; "
                             "use `selector.params.signal=update` without it.")
        grads = np.asarray(ctx.probe_gradients(ids), dtype=np.float32)
        self._store({int(c): g for c, g in zip(ids, grads, strict=True)})

    def _collect(self, ctx: SelectionContext) -> np.ndarray:
        """Probe the gradients this round needs before selecting; returns the ids probed."""
        known = self._known(len(ctx.num_samples))
        everyone = self.updates is None or ctx.k == 1 or (
            self.refresh_every is not None and ctx.round % self.refresh_every == 0)
        ids = ctx.available if everyone else ctx.available[~known[ctx.available]]
        self._probe(ctx, ids)
        return ids

    def _known(self, n: int) -> np.ndarray:
        known = np.zeros(n, dtype=bool)
        known[: len(self.known)] = self.known[:n]
        return known

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        probed = self._collect(ctx) if self.signal == "gradient" else np.zeros(0, dtype=np.int64)
        known = self._known(len(ctx.num_samples))
        k = min(ctx.k, len(ctx.available))
        chosen = ctx.rng.permutation(ctx.available[~known[ctx.available]])[:k].astype(np.int64)
        scores = np.ones(len(chosen))
        if len(chosen) < k:
            rows = np.flatnonzero(known)
            g = _rows(self.updates, len(known))[rows].astype(np.float64)  # type: ignore[arg-type]
            # pdist, not a BLAS matmul: numpy's threaded BLAS took 69 ms for 30 x 610 on a loaded 2-core machine
            # (0.25 ms single-threaded), and the direct differences do not cancel.
            from scipy.spatial.distance import pdist, squareform  # scipy: only where a selector needs it

            dist = squareform(pdist(g)) if len(g) > 1 else np.zeros((len(g), len(g)))
            candidates = np.flatnonzero(np.isin(rows, ctx.available)).tolist()
            picked = facility_location_greedy(dist, k - len(chosen), candidates)
            covered = np.bincount(np.argmin(dist[:, picked], axis=1), minlength=len(picked))
            chosen = np.concatenate([chosen, rows[picked]]).astype(np.int64)
            scores = np.concatenate([scores, covered.astype(float)])
        if self.signal == "gradient":
            # The selected clients' gradients at the model they now receive (unless just probed at it).
            self._probe(ctx, chosen[~np.isin(chosen, probed)])
        return Selection(ids=chosen, scores=scores, weights=scores if self.weights == "coverage" else None)

    def _store(self, vectors: dict[int, Any]) -> None:
        self.updates = _store_updates(self.updates, vectors)
        known = np.zeros(len(self.updates), dtype=bool)
        known[: len(self.known)] = self.known
        known[list(vectors)] = True
        self.known = known

    @override
    def update(self, feedback: Feedback) -> None:
        if self.signal == "update" and feedback.updates:
            self._store(feedback.updates)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"updates": None if self.updates is None else self.updates.copy(), "known": self.known.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        u = state["updates"]
        self.updates = None if u is None else np.asarray(u, dtype=np.float32).copy()
        self.known = np.asarray(state["known"], dtype=bool).copy()
