"""Fed-CBS: class-imbalance-reducing sampling from the clients' label histograms."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_number
from csfl_fabric.selection.learning.classic import _grow
from csfl_fabric.state import Feedback, Selection, SelectionContext

#: QCID of a perfectly balanced group is 0; its inverse power is floored here (the FedXplore code maps inf to 1e-6).
_QCID_FLOOR = 1e-12


def qcid(histograms: np.ndarray) -> float:
    """Quadratic class-imbalance degree of the pooled label counts of a group: sum_c (alpha_c - 1/C)^2.

    Computed as Fed-CBS does from pairwise inner products: ||sum_i h_i||^2 / (sum_i n_i)^2 - 1/C.

    >>> qcid(np.array([[3, 1], [1, 3]]))  # pooled 4/8 and 4/8: balanced
    0.0
    >>> round(qcid(np.array([[2, 0, 0]])), 4)  # one class of three: (1 - 1/3)^2 + 2 (1/3)^2
    0.6667
    """
    pooled = np.asarray(histograms, dtype=float).sum(axis=0)
    return float(pooled @ pooled / pooled.sum() ** 2 - 1.0 / len(pooled))


def fedcbs_first_probs(single_qcid: np.ndarray, counts: np.ndarray, t: int, lam: float, beta1: float) -> np.ndarray:
    """P(first client = k) proportional to 1 / QCID({k})^beta1 + lam sqrt(3 ln t / (2 T_k)) (t: 1-based round).

    >>> fedcbs_first_probs(np.array([0.5, 0.25]), np.array([1, 1]), t=1, lam=10.0, beta1=1.0).round(4).tolist()
    [0.3333, 0.6667]
    """
    score = 1.0 / np.maximum(single_qcid, _QCID_FLOOR) ** beta1 + lam * np.sqrt(3 * math.log(t) / (2 * counts))
    return score / score.sum()


def fedcbs_next_probs(group_qcid: np.ndarray, beta: float) -> np.ndarray:
    """P(next client = k) proportional to QCID(S)^beta_prev / QCID(S + k)^beta, i.e. to 1 / QCID(S + k)^beta.

    The numerator is the same for every candidate and cancels. Computed in log space: beta grows with the group,
    and QCID^-beta overflows for large groups.

    >>> fedcbs_next_probs(np.array([0.5, 0.25]), beta=2.0).round(4).tolist()
    [0.2, 0.8]
    """
    logits = -beta * np.log(np.maximum(group_qcid, _QCID_FLOOR))
    w = np.exp(logits - logits.max())
    return w / w.sum()


@SELECTORS.register("learning.fedcbs")
class FedCBSSelector(ClientSelector):
    """Fed-CBS, class-imbalance reduction (Zhang et al., ICML 2023, https://arxiv.org/abs/2209.15245).

    Rule (sequential sampling without replacement from the available clients): the first client with
    probability proportional to 1 / QCID({k})^beta_1 + lambda sqrt(3 ln t / (2 T_k)) (t: the 1-based round,
    T_k: how often k was selected, a UCB-style exploration bonus); the j-th client (j >= 2) with probability
    proportional to QCID(S)^beta_{j-1} / QCID(S + k)^beta_j, S the clients chosen so far, beta_j = beta j.
    QCID(S) = sum_c (alpha_c(S) - 1/C)^2 is the quadratic class-imbalance degree of the group's pooled labels
    (`qcid`; computed under homomorphic encryption in the paper, in the clear here). Aggregation: n-weighted
    (FedAvg). ``probs`` hold each pick's conditional probability.

    As the FedXplore implementation (``src/client_selectors/fedcbs.py``), T_k starts at 1 (the bonus is undefined
    at 0) and a QCID of 0 is floored; unlike it, the bonus of the second step is not mixed into the ratio (it
    cancels in the normalisation when taken from the first client, as the paper writes it).

    Signal: label histograms (``needs_label_histograms``), which reveal each client's label distribution.

    Args:
        lam: lambda, the weight of the exploration bonus (the paper's 10).
        beta: the exponent step, beta_j = beta j (the paper's beta_j = j).
    """

    needs_label_histograms = True

    def __init__(self, lam: float = 10.0, beta: float = 1.0) -> None:
        check_number("lam", lam, lambda v: v >= 0, "use a value >= 0")
        check_number("beta", beta, lambda v: v > 0, "use a value > 0")
        self.lam, self.beta = float(lam), float(beta)
        self.counts = np.zeros(0)  # T_k - 1

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        if ctx.label_histograms is None:
            raise ValueError("Selector `learning.fedcbs` needs `ctx.label_histograms` (it sets "
                             "`needs_label_histograms`); build runs with `csfl_fabric.build`.")
        hist = np.asarray(ctx.label_histograms, dtype=float)[ctx.available]
        counts = _grow(self.counts, len(ctx.num_samples), 0.0)[ctx.available] + 1
        remaining = list(range(len(ctx.available)))
        chosen: list[int] = []
        probs: list[float] = []
        for j in range(1, min(ctx.k, len(ctx.available)) + 1):
            if j == 1:
                single = np.array([qcid(hist[[c]]) for c in remaining])
                p = fedcbs_first_probs(single, counts[remaining], ctx.round + 1, self.lam, self.beta)
            else:
                pooled = hist[chosen].sum(axis=0)
                p = fedcbs_next_probs(np.array([qcid(pooled + hist[[c]]) for c in remaining]), self.beta * j)
            pick = int(ctx.rng.choice(len(remaining), p=p))
            probs.append(float(p[pick]))
            chosen.append(remaining.pop(pick))
        return Selection(ids=ctx.available[chosen].astype(np.int64), probs=np.array(probs))

    @override
    def update(self, feedback: Feedback) -> None:
        ids = np.asarray(feedback.selection.ids, dtype=np.int64)
        if len(ids):
            self.counts = _grow(self.counts, int(ids.max()) + 1, 0.0)
            np.add.at(self.counts, ids, 1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.copy()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=float).copy()
