import math

import numpy as np
import pytest
from scipy import stats

from csfl_fabric.study.stats import holm, mean_ci, paired_pvalue, paired_ttest


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_ttest_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.8, 0.05, size=5)
    b = a - rng.normal(0.02, 0.03, size=5)
    assert paired_ttest(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert paired_pvalue(a, b, "wilcoxon") == pytest.approx(stats.wilcoxon(a, b).pvalue)


def test_paired_test_edge_cases():
    assert math.isnan(paired_ttest([1.0], [2.0]))
    assert paired_ttest([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert paired_ttest([2.0, 3.0], [1.0, 2.0]) == 0.0
    # A NaN pair (never reached the accuracy) is dropped.
    assert paired_pvalue([1.0, math.nan, 3.0, 5.0], [0.5, 1.0, 2.0, 4.8]) == pytest.approx(
        stats.ttest_rel([1.0, 3.0, 5.0], [0.5, 2.0, 4.8]).pvalue)
    with pytest.raises(ValueError, match="`test`"):
        paired_pvalue([1.0], [1.0], "anova")


def test_holm_by_hand():
    # Sorted 0.01, 0.02, 0.04, 0.30 with m = 4: 0.04, 0.06, 0.08, 0.30, already monotone.
    assert holm([0.04, 0.30, 0.01, 0.02]) == pytest.approx([0.08, 0.30, 0.04, 0.06])
    # Monotonicity: 3 * 0.02 = 0.06 > 2 * 0.025 = 0.05, so the second-largest is raised to 0.06; capped at 1.
    assert holm([0.02, 0.025, 0.9]) == pytest.approx([0.06, 0.06, 0.9])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, math.nan])
    assert out[0] == pytest.approx(0.01)
    assert math.isnan(out[1])


def test_mean_ci_is_the_student_t_interval():
    x = [0.7, 0.8, 0.75, 0.9]
    mean, half = mean_ci(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x))
    assert half == pytest.approx((high - low) / 2)
    assert math.isnan(mean_ci([0.5])[1])
    assert mean_ci([0.5, math.nan])[0] == 0.5
