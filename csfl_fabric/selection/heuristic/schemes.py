"""Sampling schemes with their own aggregation: Li et al.'s Scheme II and pow-d with a shrinking candidate set."""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_param, size_probs
from csfl_fabric.selection.heuristic.basic import PowerOfChoiceSelector
from csfl_fabric.state import Selection, SelectionContext

_SCHEME_II_VARIANTS = ("scheme2", "original")
_SCHEDULES = ("step", "halve")


def scheme_ii_weights(p: np.ndarray, chosen: np.ndarray, num_clients: int, variant: str = "scheme2") -> np.ndarray:
    """Absolute aggregation coefficients of the sampled clients under Li et al.'s uniform sampling schemes.

    ``scheme2``: (K / m) p_k, so that E[sum_S a_k x_k] = sum_k p_k x_k; ``original``: p_k (the rest of the mass
    stays with the global model). ``p`` are the data shares of all K clients, ``chosen`` the m sampled positions.

    >>> scheme_ii_weights(np.array([0.5, 0.3, 0.2]), np.array([0, 2]), 3).tolist()
    [0.75, 0.30000000000000004]
    >>> scheme_ii_weights(np.array([0.5, 0.3, 0.2]), np.array([0, 2]), 3, "original").tolist()
    [0.5, 0.2]
    """
    scale = num_clients / len(chosen) if variant == "scheme2" else 1.0
    return scale * p[chosen]


@SELECTORS.register("heuristic.uniform_scaled")
class UniformScaledSelector(ClientSelector):
    """Uniform sampling with scaled weights, Scheme II (Li et al., ICLR 2020, https://arxiv.org/abs/1907.02189).

    Rule: m = k clients uniformly **without** replacement from the K available clients. Aggregation:
    absolute coefficients a_k = (K / m) p_k (p_k = n_k / sum of the available n), which need not sum to 1;
    ``variant="original"`` uses a_k = p_k ("original scheme", ``fedavg5.py`` in the authors' code). Both are
    unbiased: E[sum_S a_k (w_k - w)] = sum_k p_k (w_k - w).

    Deviation: the coefficients weigh each client's *update* (``Selection.absolute_weights``: the global model
    keeps the mass 1 - sum a_k), whereas the paper and ``fedavg4.py`` of the authors' code
    (https://github.com/lx10077/fedavgpy) weigh the params, w = sum_S a_k w_k, which rescales the whole model when
    sum a_k != 1. The two coincide for balanced data (p_k = 1/K, the case the paper's theorem covers) and are
    equal in expectation otherwise.

    Args:
        variant: ``"scheme2"`` (K/m p_k) or ``"original"`` (p_k).
    """

    def __init__(self, variant: str = "scheme2") -> None:
        check_param("variant", variant, variant in _SCHEME_II_VARIANTS, f"use one of {', '.join(_SCHEME_II_VARIANTS)}")
        self.variant = variant

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        k = min(ctx.k, len(ctx.available))
        chosen = ctx.rng.choice(len(ctx.available), size=k, replace=False)
        weights = scheme_ii_weights(size_probs(ctx), chosen, len(ctx.available), self.variant)
        return Selection(ids=ctx.available[chosen].astype(np.int64), probs=np.full(k, k / len(ctx.available)),
                         weights=weights, absolute_weights=True)


def adaptive_d(round_idx: int, d_start: int, d_end: int, every: int, schedule: str) -> int:
    """The candidate-set size of adaptive pow-d in round ``round_idx`` (0-based).

    ``step``: d_start until round ``every``, then d_end. ``halve``: d_start halved every ``every`` rounds, never
    below d_end.

    >>> [adaptive_d(r, 30, 3, 400, "step") for r in (0, 399, 400)]
    [30, 30, 3]
    >>> [adaptive_d(r, 32, 3, 10, "halve") for r in (0, 10, 25, 100)]
    [32, 16, 8, 3]
    """
    if schedule == "step":
        return d_start if round_idx < every else d_end
    return max(d_start >> (round_idx // every), d_end)


@SELECTORS.register("heuristic.adapow_d")
class AdaptivePowerOfChoiceSelector(PowerOfChoiceSelector):
    """Adaptive pow-d, a shrinking candidate set (Cho, Wang, Joshi, AISTATS 2022, https://arxiv.org/abs/2010.01243).

    Each round is a pow-d round (d candidates by data size without replacement, each probes its loss at the
    current model, the k highest are selected, simple average) whose d follows a schedule: a large d first (fast
    early progress), then d = k (no selection bias, a lower error floor). Defaults follow the authors'
    logistic-regression code (https://github.com/peng-ju/Power-of-Choice): d = K (all available clients) for
    the first 400 rounds, then d = k; ``schedule="halve"`` halves d every ``every`` rounds (their quadratic
    experiment: every 5000 iterations) down to ``d_end``.

    Args:
        d_start: the first d; null = every available client.
        d_end: the last d (>= k); null = k.
        every: rounds before the switch (``step``) or between halvings (``halve``).
        schedule: ``"step"`` or ``"halve"``.
    """

    def __init__(self, d_start: int | None = None, d_end: int | None = None, every: int = 400,
                 schedule: str = "step") -> None:
        super().__init__(d=None)
        for name, value in (("d_start", d_start), ("d_end", d_end)):
            ok = value is None or (type(value) is int and value >= 1)
            check_param(name, value, ok, "use an integer >= 1 or null")
        check_param("every", every, type(every) is int and every >= 1, "use an integer >= 1")
        check_param("schedule", schedule, schedule in _SCHEDULES, f"use one of {', '.join(_SCHEDULES)}")
        self.d_start, self.d_end, self.every, self.schedule = d_start, d_end, every, schedule

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        start = len(ctx.available) if self.d_start is None else self.d_start
        end = ctx.k if self.d_end is None else self.d_end
        check_param("d_end", end, end >= ctx.k, f"d_end must be >= rounds.clients_per_round={ctx.k}")
        # At least k: with fewer than k clients online, pow-d takes every available one as a candidate.
        self.d = max(adaptive_d(ctx.round, start, end, self.every, self.schedule), ctx.k)
        return super().select(ctx)
