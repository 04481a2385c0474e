"""The report ranks by one absolute target for every method, censors runs that miss it, and shows effect sizes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from csfl_fabric.study.metrics import summarize
from csfl_fabric.study.report import build_report

SEEDS = range(5)
#: Accuracy after each round: "low" learns little but at once, "high" learns slowly but much more.
CURVES = {"m.low": [0.19, 0.20, 0.20, 0.20], "m.high": [0.20, 0.35, 0.50, 0.60]}
#: Seed s adds OFFSET * s to every accuracy of the method (so the paired differences vary with the seed).
OFFSET = {"m.low": 0.002, "m.high": 0.004}


def _write_run(root: Path, method: str, seed: int, target: list[float] | None = None) -> None:
    run = root / f"{method}-seed{seed}"
    run.mkdir(parents=True)
    accs = [a + OFFSET[method] * seed for a in CURVES[method]]
    rows = [{"round": r, "eval/acc": a, "train/loss": 1 - a, "time/sim_total_s": 10.0 * (r + 1)}
            for r, a in enumerate(accs)]
    with (run / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = {"selector": {"name": method}, "seed": seed, "rounds": {"target_accuracy": target},
              "logging": {"tags": [method, f"seed{seed}"]}, "data": {"num_clients": 4}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = summarize(rows, initial_acc=0.1, target=target)
    summary.update(status="success", best_acc=max(accs), final_acc=accs[-1])
    (run / "summary.json").write_text(json.dumps({k: v for k, v in summary.items()
                                                  if not (isinstance(v, float) and math.isnan(v))}))
    (run / "selection.csv").write_text("round,client_ids\n" + "".join(f"{r},0\n" for r in range(4)))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    for method in CURVES:
        for seed in SEEDS:
            _write_run(tmp_path / "exp", method, seed)
    return tmp_path / "exp"


def test_ranking_follows_the_absolute_target_where_the_relative_metric_disagrees(study: Path) -> None:
    report = build_report(study, baseline="m.high")
    low, high = report.table["m.low"], report.table["m.high"]
    # The relative metric says "low" is faster: 80% of its own small gain at round 1 (10 s), "high" at round 3.
    assert low["time_to_80pct_of_own_gain"][0] == 10.0
    assert high["time_to_80pct_of_own_gain"][0] == 30.0
    # One target for all: 0.8 x the best accuracy any run reached (0.616, "high" seed 4) = 0.4928 -> 0.492.
    assert report.targets == (0.492,)
    assert "0.8 x the best accuracy any run reached (0.616" in report.target_note
    # "high" reaches it at round 3 on every seed (30 s); "low" never: censored, not fast.
    assert high["time_to_acc_0.492"] == (30.0, 0.0, 5)
    assert low["time_to_acc_0.492"][2] == 0
    assert report.runs == {"m.low": 5, "m.high": 5}
    assert report.ranking == ["m.high", "m.low"]
    md = (report.report_dir / "report.md").read_text()
    assert "1. m.high: 30 ± 0 (5/5)" in md
    assert "2. m.low: not reached (0/5)" in md
    rows = {row["method"]: row for row in csv.DictReader((report.report_dir / "summary.csv").open())}
    assert (rows["m.low"]["time_to_acc_0.492_reached"], rows["m.high"]["time_to_acc_0.492_reached"]) == ("0", "5")


def test_censored_time_is_tested_with_not_reached_as_worst_and_the_p_floor_is_stated(study: Path) -> None:
    report = build_report(study, baseline="m.high", test="ttest")
    (row,) = [t for t in report.tests if t["metric"] == "time_to_acc_0.492"]
    # "low" is slower on all 5 pairs (never reached): the exact signed-rank test's smallest p, 2 / 2^5.
    assert row["test"] == "wilcoxon"
    assert row["p"] == pytest.approx(0.0625)
    assert row["p_floor"] == pytest.approx(0.0625)
    assert row["reached"] == "0/5 vs 5/5"
    assert row["both_reached"] == 0
    assert math.isnan(row["mean_diff"])  # no pair where both reached: no difference to average
    md = (report.report_dir / "report.md").read_text()
    assert "with 5 pairs the Wilcoxon signed-rank test cannot give p below 0.0625" in md
    assert "at least 6 seeds" in md


def test_effect_size_is_the_mean_paired_difference_with_its_t_interval(study: Path) -> None:
    report = build_report(study, baseline="m.high", test="wilcoxon")
    (row,) = [t for t in report.tests if t["metric"] == "final_acc"]
    final = {m: np.array([CURVES[m][-1] + OFFSET[m] * s for s in SEEDS]) for m in CURVES}
    d = final["m.low"] - final["m.high"]  # -0.4 - 0.002 s
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (row["mean_diff"], row["ci_low"], row["ci_high"]) == pytest.approx((d.mean(), low, high))
    assert row["p"] == pytest.approx(stats.wilcoxon(final["m.low"], final["m.high"]).pvalue)
    assert row["p_floor"] == pytest.approx(0.0625)
    md = (report.report_dir / "report.md").read_text()
    assert f"| final_acc | m.low | m.high | 5 | - | {d.mean():.4g} [{low:.4g}, {high:.4g}] |" in md


def test_configured_targets_are_shared_by_every_run(tmp_path: Path) -> None:
    for method in CURVES:
        for seed in SEEDS:
            _write_run(tmp_path / "exp", method, seed, target=[0.5, 0.15])
    report = build_report(tmp_path / "exp", baseline="m.high")
    assert report.targets == (0.15, 0.5)
    assert report.target_note == "`rounds.target_accuracy` of the runs"
    # 0.15: both at round 1; 0.5: "high" at round 3 (seed 0 reaches 0.50 exactly), "low" never.
    assert report.table["m.low"]["time_to_acc_0.15"][:2] == (10.0, 0.0)
    assert report.table["m.high"]["rounds_to_acc_0.5"] == (3.0, 0.0, 5)
    assert report.table["m.low"]["time_to_acc_0.5"][2] == 0
    assert report.ranking == ["m.high", "m.low"] or report.ranking == ["m.low", "m.high"]  # tied at 0.15
    explicit = build_report(tmp_path / "exp", baseline="m.high", targets=[0.3])
    assert explicit.targets == (0.3,)
    assert explicit.ranking == ["m.high", "m.low"]
