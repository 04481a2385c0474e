import math

import numpy as np
import pytest

from csfl_fabric.study.metrics import (
    gini,
    label_coverage,
    normalized_entropy,
    participation_variance,
    summarize,
    time_to_reach,
    trapezoid_auc,
)


def test_fairness_of_fixed_counts_by_hand():
    counts = [3, 1, 0, 0]  # mean 1
    # Gini: sum over ordered pairs |xi - xj| = 2 * (2 + 3 + 3 + 1 + 1 + 0) = 20; / (2 n^2 mean) = 20 / 32
    assert gini(counts) == pytest.approx(20 / 32)
    assert participation_variance(counts) == pytest.approx(((3 - 1) ** 2 + 0 + 1 + 1) / 4)
    # Entropy of (3/4, 1/4) over log 4
    assert normalized_entropy(counts) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4))
    assert gini([5, 5, 5, 5]) == 0.0
    assert normalized_entropy([5, 5, 5, 5]) == pytest.approx(1.0)
    assert gini([0, 0, 0, 7]) == pytest.approx(3 / 4)


def test_label_coverage_counts_classes_of_the_cohort_only():
    present = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    assert label_coverage(present, [0]) == 0.5
    assert label_coverage(present, [0, 2]) == 0.75
    assert label_coverage(present, [0, 1, 2]) == 1.0


def test_time_to_reach_and_auc_by_hand():
    assert time_to_reach([10, 20, 30], [0.1, 0.5, 0.4], 0.45) == 20.0
    assert math.isnan(time_to_reach([10, 20], [0.1, 0.2], 0.3))
    # Trapezoids from (0, 0.1): 10 * (0.1 + 0.3) / 2 + 20 * (0.3 + 0.5) / 2 = 2 + 8
    assert trapezoid_auc([10, 30], [0.3, 0.5], start=(0.0, 0.1)) == pytest.approx(10.0)


def _history(clock: bool) -> list[dict[str, float]]:
    accs = [0.3, None, 0.6, 0.7]  # round 1 is not evaluated
    rows = []
    for r, acc in enumerate(accs):
        row: dict[str, float] = {"round": r, "fair/participation_gini": 0.1 * r, "cost/bytes_up": 5.0,
                                 "cost/bytes_up_total": 5.0 * (r + 1), "fair/label_coverage": 0.5 + 0.1 * r}
        if acc is not None:
            row.update({"eval/acc": acc, "eval/loss": 1 - acc})
        if clock:
            row["time/sim_total_s"] = 100.0 * (r + 1) ** 2
        rows.append(row)
    return rows


def test_summarize_in_rounds_by_hand():
    s = summarize(_history(clock=False), initial_acc=0.1, target=0.65)
    # Gain 0.6: 50% -> 0.4 reached at round 2 (3 rounds done), 80% -> 0.58 at round 2, 90% -> 0.64 at round 3.
    assert [s[f"rounds_to_{p}pct_of_own_gain"] for p in (50, 80, 90)] == [3.0, 3.0, 4.0]
    assert s["time_to_90pct_of_own_gain"] == 4.0
    assert s["time_to_acc_0.65"] == s["rounds_to_acc_0.65"] == 4.0
    assert not any(k.startswith("time_to_") and k.endswith("pct") for k in s)  # the old relative names are gone
    assert s["time_unit"] == "rounds"
    # AUC from (0, 0.1) through (1, .3), (3, .6), (4, .7): 0.2 + 0.9 + 0.65
    assert s["auc_acc_time"] == pytest.approx(1.75)
    assert s["gain_per_round"] == pytest.approx(0.6 / 4)
    assert s["final_acc"] == 0.7
    assert s["final_loss"] == pytest.approx(0.3)
    assert s["fair_participation_gini"] == pytest.approx(0.3)
    assert s["cost_bytes_up_total"] == 20.0
    assert "cost_bytes_up" not in s
    assert s["fair_label_coverage_mean"] == pytest.approx(np.mean([0.5, 0.6, 0.7, 0.8]))


def test_summarize_uses_the_simulated_clock_when_logged():
    s = summarize(_history(clock=True), initial_acc=0.1)
    assert s["time_unit"] == "sim_s"
    assert s["rounds_to_90pct_of_own_gain"] == 4.0
    assert s["time_to_90pct_of_own_gain"] == 1600.0
    assert s["time_to_50pct_of_own_gain"] == 900.0
    # From (0, .1) through (100, .3), (900, .6), (1600, .7)
    assert s["auc_acc_time"] == pytest.approx(100 * 0.2 + 800 * 0.45 + 700 * 0.65)
    assert s["gain_per_hour"] == pytest.approx(0.6 / (1600 / 3600))
    assert not any(k.startswith("time_to_acc") for k in s)


def test_summarize_without_gain_reaches_nothing():
    s = summarize([{"round": 0, "eval/acc": 0.1}], initial_acc=0.2)
    assert math.isnan(s["time_to_50pct_of_own_gain"])


def test_time_to_absolute_targets_by_hand_with_censoring():
    from csfl_fabric.study.metrics import time_to_targets

    rows = [{"round": 0, "eval/acc": 0.2, "time/sim_total_s": 10.0}, {"round": 1, "time/sim_total_s": 20.0},
            {"round": 2, "eval/acc": 0.65, "time/sim_total_s": 35.0}, {"round": 3, "eval/acc": 0.6,
                                                                        "time/sim_total_s": 50.0}]
    out = time_to_targets(rows, [0.2, 0.6, 0.7])
    # 0.2 at the first evaluation (1 round, 10 s); 0.6 first at round 2 (3 rounds, 35 s), not at the later 0.6 row;
    # 0.7 never: censored as NaN (neither 0 nor the run's length).
    assert (out["rounds_to_acc_0.2"], out["time_to_acc_0.2"]) == (1.0, 10.0)
    assert (out["rounds_to_acc_0.6"], out["time_to_acc_0.6"]) == (3.0, 35.0)
    assert math.isnan(out["rounds_to_acc_0.7"])
    assert math.isnan(out["time_to_acc_0.7"])
    # Without the clock column time is rounds.
    plain = [{k: v for k, v in r.items() if k != "time/sim_total_s"} for r in rows]
    assert time_to_targets(plain, [0.6])["time_to_acc_0.6"] == 3.0
