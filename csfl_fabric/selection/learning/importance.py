"""Importance sampling with unbiased reweighting: DELTA and Optimal Client Sampling (OCS).

Both return ``Selection.absolute_weights``: the server adds sum_k a_k (w_k - w) to the global model w with the
estimator's own coefficients a_k (1/(m p_k) or 1/p_k times the data share), which need not sum to 1; dividing
by their sum would make the estimator biased again (SELECTION_METHODS.md, caution 6).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_number, check_param
from csfl_fabric.state import Feedback, Selection, SelectionContext

_DELTA_RULES = ("paper", "practical")
_OBJECTIVES = ("samples", "uniform")
_OCS_VARIANTS = ("exact", "approximate")


def delta_scores(grads: torch.Tensor, sigmas: np.ndarray, alpha1: float, alpha2: float) -> np.ndarray:
    """DELTA's sqrt(alpha1 zeta_i^2 + alpha2 sigma_i^2), zeta_i = ||g_i - mean_j g_j|| over the participants.

    >>> g = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0): zeta = 1 for both
    >>> delta_scores(g, np.array([0.0, 2.0]), alpha1=0.8, alpha2=0.2).round(4).tolist()
    [0.8944, 1.2649]
    """
    zeta = (grads - grads.mean(dim=0)).double().norm(dim=1).numpy()
    return np.sqrt(alpha1 * zeta**2 + alpha2 * np.asarray(sigmas, dtype=float) ** 2)


def delta_practical_scores(grads: torch.Tensor, shares: np.ndarray, beta: float) -> np.ndarray:
    """The official code's ``reweight_prac``: (1 - beta) q_i ||g_i|| + beta q_i ||g_i - mean_j g_j||.

    >>> delta_practical_scores(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), np.array([0.5, 0.5]), beta=0.5).tolist()
    [0.5, 1.0]
    """
    norm = grads.double().norm(dim=1).numpy()
    diversity = (grads - grads.mean(dim=0)).double().norm(dim=1).numpy()
    return np.asarray(shares, dtype=float) * ((1 - beta) * norm + beta * diversity)


def refresh_probabilities(probs: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """DELTA's update: the participants' probabilities become proportional to ``scores`` within their old total mass.

    Non-participants keep theirs, so the vector still sums to 1. Returns a new array.

    >>> refresh_probabilities(np.array([0.25, 0.25, 0.5]), np.array([0, 1]), np.array([1.0, 3.0])).tolist()
    [0.125, 0.375, 0.5]
    """
    out = np.array(probs, dtype=float)
    total, s = float(out[ids].sum()), float(np.sum(scores))
    if s > 0 and np.isfinite(s):
        out[ids] = np.asarray(scores, dtype=float) / s * total
    return out


@SELECTORS.register("learning.delta")
class DeltaSelector(ClientSelector):
    """DELTA, diverse client sampling (Wang, Guo, Lin, Tang, NeurIPS 2023, https://arxiv.org/abs/2205.13925).

    Rule: k clients drawn **without** replacement with probabilities p_k (renormalised over the available
    clients; p starts at the objective's weights lambda_k). After each round only the participants' p are
    refreshed, proportionally to ``lambda_k sqrt(alpha1 zeta_k^2 + alpha2 sigma_k^2)``, within the mass they
    held (the others keep theirs):
    zeta_k = ||g_k - mean of the participants' g|| (gradient diversity) and sigma_k = the norm of the std of k's
    mini-batch gradients (local variance), with g_k the mean mini-batch gradient of its local steps
    (``ClientResult.grad_mean``, the official code's ``gradients``) and sigma_k from the same steps
    (``grad_sigma``; the FedXplore implementation takes an extra pass at the final local model instead).
    ``rule="practical"`` uses the official code's ``reweight_prac`` score, (1 - beta) q_k ||g_k|| +
    beta q_k ||g_k - mean g|| (q_k: data share among the participants).
    Aggregation: the paper's unbiased estimator of sum_k lambda_k g_k, a_k = lambda_k / (m p_k) over the
    available clients (``absolute_weights``). It is exactly unbiased for draws with replacement; the official
    code (https://github.com/L3030/DELTA_FL) samples without replacement, as here, and normalises its weights
    L_k / (N p_k) by their sum (a ratio estimator), which is not followed. No server momentum.

    Objective: the paper minimises (1/K) sum_k F_k (``objective="uniform"``: lambda_k = 1/K, p starts uniform
    as in the official code, and the lambda factor of the score is a constant). The default ``"samples"``
    minimises the data-weighted sum_k (n_k / n) F_k of the other methods: the same derivation with weights
    lambda_k = n_k / n gives p proportional to lambda_k times the score, and p starts at lambda. Without the
    lambda factor a large client drawn with a small p gets a weight lambda_k / (m p_k) several times 1/m; on
    Synthetic(1,1) (heavy-tailed sizes, README study) that ended at 0.39-0.71 accuracy in 3 of 5 seeds
    (0.77-0.90 with it).

    Args:
        alpha1: weight of the gradient diversity (FedXplore's default 0.8).
        alpha2: weight of the local variance (0.2).
        rule: ``"paper"`` or ``"practical"``.
        beta: weight of the diversity term of the practical rule (the official code's default 0.5).
        objective: ``"samples"`` (lambda_k = n_k / n) or ``"uniform"`` (the paper's lambda_k = 1/K).
    """

    needs_grad_stats = True

    def __init__(self, alpha1: float = 0.8, alpha2: float = 0.2, rule: str = "paper", beta: float = 0.5,
                 objective: str = "samples") -> None:
        check_number("alpha1", alpha1, lambda v: v >= 0, "use a value >= 0")
        check_number("alpha2", alpha2, lambda v: v >= 0, "use a value >= 0")
        check_param("rule", rule, rule in _DELTA_RULES, f"use one of {', '.join(_DELTA_RULES)}")
        check_number("beta", beta, lambda v: 0 <= v <= 1, "use a value in [0, 1]")
        check_param("objective", objective, objective in _OBJECTIVES, f"use one of {', '.join(_OBJECTIVES)}")
        self.alpha1, self.alpha2, self.rule, self.beta = float(alpha1), float(alpha2), rule, float(beta)
        self.objective = objective
        self.probs = np.zeros(0)  # over all clients, sized at the first round
        self.weights = np.zeros(0)  # lambda over all clients

    def _lambda(self, num_samples: np.ndarray) -> np.ndarray:
        n = np.asarray(num_samples, dtype=float)
        return n / n.sum() if self.objective == "samples" else np.full(len(n), 1.0 / len(n))

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        if len(self.probs) != len(ctx.num_samples):
            self.weights = self._lambda(ctx.num_samples)
            self.probs = self.weights.copy()
        k = min(ctx.k, len(ctx.available))
        # A floor, so that a client whose score was 0 can still be drawn (numpy needs k non-zero entries).
        p = np.maximum(self.probs[ctx.available], 1e-12)
        p = p / p.sum()
        chosen = ctx.rng.choice(len(ctx.available), size=k, replace=False, p=p)
        lam = self.weights[ctx.available] / self.weights[ctx.available].sum()
        weights = lam[chosen] / (k * p[chosen])
        return Selection(ids=ctx.available[chosen].astype(np.int64), probs=p[chosen], weights=weights,
                         absolute_weights=True)

    @override
    def update(self, feedback: Feedback) -> None:
        results = [r for r in feedback.results if r.grad_mean is not None]
        if not results or len(self.probs) == 0:
            return
        ids = np.array([r.client_id for r in results], dtype=np.int64)
        grads = torch.stack([r.grad_mean for r in results])  # type: ignore[misc]
        if self.rule == "paper":
            sigmas = np.array([r.grad_sigma for r in results], dtype=float)
            scores = self.weights[ids] * delta_scores(grads, sigmas, self.alpha1, self.alpha2)
        else:
            n = np.array([r.num_samples for r in results], dtype=float)
            scores = delta_practical_scores(grads, n / n.sum(), self.beta)
        self.probs = refresh_probabilities(self.probs, ids, scores)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probs": self.probs.copy(), "weights": self.weights.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probs = np.asarray(state["probs"], dtype=float).copy()
        self.weights = np.asarray(state["weights"], dtype=float).copy()


def ocs_probabilities(norms: np.ndarray, m: float) -> np.ndarray:
    """Optimal independent inclusion probabilities of Chen, Horváth, Richtárik (2022), Eq. (8).

    Sort u = ``norms`` ascending; l is the largest index with 0 < m + l - n <= sum_{j<=l} u_(j) / u_(l); the l
    smallest get p = (m + l - n) u / sum_{j<=l} u_(j), the others 1. The p sum to m (all zero norms: m / n each).

    >>> ocs_probabilities(np.array([1.0, 1.0, 1.0, 7.0]), m=2).round(4).tolist()
    [0.3333, 0.3333, 0.3333, 1.0]
    >>> ocs_probabilities(np.array([1.0, 2.0, 3.0]), m=1).round(4).tolist()
    [0.1667, 0.3333, 0.5]
    """
    u = np.asarray(norms, dtype=float)
    n = len(u)
    if m >= n:
        return np.ones(n)
    if not u.sum() > 0:
        return np.full(n, m / n)
    order = np.argsort(u, kind="stable")
    cum = np.cumsum(u[order])
    p = np.ones(n)
    for l in range(n, 0, -1):  # noqa: E741 - the paper's name
        c = m + l - n
        if c <= 0:
            break
        if u[order[l - 1]] == 0 or c <= cum[l - 1] / u[order[l - 1]]:
            p[order[:l]] = c * u[order[:l]] / cum[l - 1] if cum[l - 1] > 0 else 0.0
            break
    return p


def approximate_ocs_probabilities(norms: np.ndarray, m: float, j_max: int = 4) -> np.ndarray:
    """Approximate OCS, as the authors' TFF code runs it with secure aggregation only.

    p = min(1, m u / sum u); then up to ``j_max`` times c = (m - n + #{p < 1}) / sum_{p < 1} p and
    p <- min(1, c p), stopping once c <= 1. The p sum to at most m.

    >>> approximate_ocs_probabilities(np.array([1.0, 1.0, 1.0, 7.0]), m=2).round(4).tolist()
    [0.3333, 0.3333, 0.3333, 1.0]
    """
    u = np.asarray(norms, dtype=float)
    n = len(u)
    if not u.sum() > 0:
        return np.full(n, min(m / n, 1.0))
    p = np.minimum(1.0, m * u / u.sum())
    for _ in range(j_max):
        below = p < 1
        if not below.any() or p[below].sum() == 0:
            break
        c = (m - n + below.sum()) / p[below].sum()
        p = np.minimum(1.0, c * p)
        if c <= 1:
            break
    return p


def systematic_sample(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions drawn with inclusion probabilities ``p`` (each <= 1) and a fixed size, ``floor`` or ``ceil`` of sum p.

    Madow's systematic sampling over a random order: the units fill consecutive intervals of length p_i on
    [0, sum p) and the points u, u + 1, ... (u uniform in (0, 1]) pick the units whose intervals they hit.

    >>> sorted(systematic_sample(np.array([1.0, 0.5, 0.5]), np.random.default_rng(0)).tolist())[0]
    0
    """
    p = np.asarray(p, dtype=float)
    total = float(p.sum())
    if abs(total - round(total)) < 1e-9:  # round-off must not drop the last point
        p, total = p * (round(total) / total), float(round(total))
    order = rng.permutation(len(p))
    cum = np.cumsum(p[order])
    points = (1.0 - rng.random()) + np.arange(int(np.ceil(total)))
    points = points[points <= cum[-1] + 1e-12] if len(cum) else points[:0]
    return np.sort(order[np.minimum(np.searchsorted(cum, points), len(p) - 1)])


@SELECTORS.register("learning.ocs")
class OptimalClientSamplingSelector(ClientSelector):
    """Optimal Client Sampling, OCS (Chen, Horváth, Richtárik, TMLR 2022, https://arxiv.org/abs/2010.13723).

    Rule: n candidates (``candidates``, uniformly without replacement from the available clients; null = all of
    them) each compute their update U_k at the current model; the server learns the weighted norms
    ||q_k U_k|| (q_k = n_k / sum of the candidates' n) through ``ctx.probe(signal="update_norm")``, which trains
    the candidates and is counted as a probe (cost, clock, energy), and sets inclusion probabilities that
    minimise the variance of the estimate: the exact solution (`ocs_probabilities`, Eq. (8)) or the authors'
    approximate one (`approximate_ocs_probabilities`, ``j_max`` rescaling steps). Expected m = k clients send.
    Aggregation: a_k = q_k / p_k (``absolute_weights``), the unbiased estimate of sum_k q_k U_k.

    Deviation: the paper lets each candidate send independently with probability p_k (a random number of
    senders); the interface trains at most k clients, so the senders are drawn by systematic sampling with the
    same inclusion probabilities and a fixed size of about k (`systematic_sample`): still unbiased with 1/p_k
    weights, with a different (fixed-size) joint distribution. A probed candidate trains again if selected
    (identically: batches are seeded by round and client), so its compute counts twice in the simulated clock.

    Args:
        candidates: n, clients that compute an update per round (>= k); null = every available client.
        variant: ``"exact"`` or ``"approximate"``.
        j_max: rescaling steps of the approximate variant (the authors' default 4).
    """

    def __init__(self, candidates: int | None = None, variant: str = "exact", j_max: int = 4) -> None:
        ok = candidates is None or (type(candidates) is int and candidates >= 1)
        check_param("candidates", candidates, ok, "use an integer >= clients_per_round or null")
        check_param("variant", variant, variant in _OCS_VARIANTS, f"use one of {', '.join(_OCS_VARIANTS)}")
        check_param("j_max", j_max, type(j_max) is int and j_max >= 1, "use an integer >= 1")
        self.candidates, self.variant, self.j_max = candidates, variant, j_max

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        n = len(ctx.available) if self.candidates is None else self.candidates
        check_param("candidates", n, n >= ctx.k, f"candidates must be >= rounds.clients_per_round={ctx.k}")
        cand = ctx.rng.choice(ctx.available, size=min(n, len(ctx.available)), replace=False).astype(np.int64)
        q = ctx.num_samples[cand] / ctx.num_samples[cand].sum()
        norms = q * np.asarray(ctx.probe(cand, signal="update_norm"), dtype=float)
        norms = np.where(np.isfinite(norms), norms, 0.0)  # a diverged candidate: p = 0, never sent
        m = min(ctx.k, len(cand))
        p = (ocs_probabilities(norms, m) if self.variant == "exact"
             else approximate_ocs_probabilities(norms, m, self.j_max))
        picked = systematic_sample(p, ctx.rng)
        if len(picked) == 0:  # only possible when every norm is 0: the update is 0 whichever client sends
            picked = np.array([int(np.argmax(p))])
        return Selection(ids=cand[picked], probs=p[picked], scores=norms[picked], weights=q[picked] / p[picked],
                         absolute_weights=True)
