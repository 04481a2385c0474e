"""Statistics for comparing methods over seeds: confidence intervals, paired tests, Holm's correction.

Also what a reader needs beside a p-value: the effect size (mean paired difference with its confidence
interval), a paired test for censored times (a target accuracy some runs never reach), and the smallest
p-value a test can give with the number of seeds at hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

TESTS = ("ttest", "wilcoxon")


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval; the half-width is NaN for fewer than 2 values.

    NaN values (e.g. a time to accuracy never reached) are left out.

    >>> mean, half = mean_ci([1.0, 2.0, 3.0])  # t(0.975, 2) = 4.3027 times 1 / sqrt(3)
    >>> mean, round(half, 4)
    (2.0, 2.4841)
    """
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of ``a - b`` against 0 (seeds pair the values).

    NaN with fewer than 2 pairs; 1.0 when every difference is the same and 0, 0.0 when constant and non-zero.

    >>> round(paired_ttest([0.9, 0.8, 0.85], [0.7, 0.75, 0.8]), 4)
    0.1835
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d.mean() == 0 else 0.0
    t = d.mean() / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def paired_pvalue(a: Sequence[float], b: Sequence[float], test: str = "ttest") -> float:
    """Two-sided p-value of a paired test: ``ttest`` (`paired_ttest`) or ``wilcoxon`` (SciPy's signed-rank).

    Pairs with a NaN on either side are dropped first.
    """
    if test not in TESTS:
        raise ValueError(f"Expected `test` in {TESTS} but got {test!r}.")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    if test == "ttest":
        return paired_ttest(xs, ys)
    d = np.subtract(xs, ys)
    if len(d) < 2:
        return math.nan
    if not d.any():
        return 1.0
    return float(stats.wilcoxon(xs, ys).pvalue)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences ``a - b`` and its Student-t confidence interval ``(mean, low, high)``.

    The effect size shown beside a p-value. Pairs with a NaN on either side are dropped; the interval is NaN
    with fewer than 2 pairs.

    >>> mean, low, high = paired_difference([0.9, 0.8, 0.85], [0.7, 0.75, 0.8])  # differences 0.2, 0.05, 0.05
    >>> round(mean, 4), round(low, 4), round(high, 4)  # 0.1 -/+ t(0.975, 2) * 0.0866 / sqrt(3)
    (0.1, -0.1151, 0.3151)
    """
    d = [x - y for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    mean, half = mean_ci(d, level)
    return mean, mean - half, mean + half


def censored_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of a paired Wilcoxon signed-rank test of times where NaN means "never reached".

    A run that never reached the target counts as slower than every run that did: NaN becomes a value above
    all observed times (its exact value does not change the ranks as long as it is that large), so a pair
    with one censored run has a larger difference than any pair of reached runs, and a pair where neither
    reached is a zero difference, which the test drops. NaN when fewer than 2 pairs differ; 1.0 when none do.

    >>> censored_pvalue([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 6.0, 7.0, 8.0, float("nan")])  # a faster on all 5 seeds
    0.0625
    >>> censored_pvalue([float("nan")] * 5, [5.0, 6.0, 7.0, 8.0, 9.0])  # a never reached it
    0.0625
    """
    values = [v for v in [*a, *b] if not math.isnan(v)]
    worst = 2 * max((abs(v) for v in values), default=0.0) + 1.0
    xs = np.array([worst if math.isnan(v) else v for v in a], dtype=float)
    ys = np.array([worst if math.isnan(v) else v for v in b], dtype=float)
    d = xs - ys
    if np.count_nonzero(d) < 2:
        return 1.0 if len(d) >= 2 and not d.any() else math.nan
    return float(stats.wilcoxon(xs, ys).pvalue)


def min_pvalue(n: int, test: str) -> float:
    """The smallest two-sided p-value ``test`` can give with ``n`` pairs (NaN below 2 pairs).

    The exact signed-rank test has 2^n equally likely sign patterns under the null, so its p-value is at
    least 2 / 2^n: 0.0625 with 5 seeds, never below 0.05. The t-test has no such floor.

    >>> min_pvalue(5, "wilcoxon"), min_pvalue(6, "wilcoxon"), min_pvalue(5, "ttest")
    (0.0625, 0.03125, 0.0)
    """
    if n < 2:
        return math.nan
    return 2.0 ** (1 - n) if test == "wilcoxon" else 0.0


def seeds_needed(test: str, family: int = 1, alpha: float = 0.05) -> int:
    """Fewest pairs with which ``test`` can reach ``alpha`` after Holm's correction over ``family`` tests.

    >>> seeds_needed("wilcoxon"), seeds_needed("wilcoxon", family=2), seeds_needed("ttest")
    (6, 7, 2)
    """
    n = 2
    while family * min_pvalue(n, test) > alpha:
        n += 1
    return n


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order; NaN stays NaN.

    The i-th smallest of m p-values becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    valid = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(valid)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = round(running, 12)
    return out
