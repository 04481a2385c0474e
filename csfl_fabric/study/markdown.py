"""report.md: the comparison's tables as Markdown (overview, one table per method, paired tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from csfl_fabric.study.stats import min_pvalue, seeds_needed

if TYPE_CHECKING:
    from csfl_fabric.study.records import Report, RunRecord

#: The overview table's columns, after the time to each target accuracy.
OVERVIEW: tuple[str, ...] = ("final_acc", "best_acc", "auc_acc_time", "fair_participation_gini",
                             "cost_bytes_up_total", "wall_seconds")
TEST_NAMES = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


def fmt(value: float) -> str:
    """A number in at most 4 significant digits (NaN as ``-``).

    >>> fmt(0.812345), fmt(31200.0), fmt(float("nan"))
    ('0.8123', '3.12e+04', '-')
    """
    if math.isnan(value):
        return "-"
    return f"{value:.4g}"


def cell(entry: tuple[float, float, int] | None) -> str:
    """``mean ± half-width`` of a table entry (just the mean with one seed).

    >>> cell((0.8, 0.05, 3)), cell((0.8, float("nan"), 1)), cell(None)
    ('0.8 ± 0.05', '0.8', '-')
    """
    if entry is None:
        return "-"
    mean, half, _ = entry
    return fmt(mean) if math.isnan(half) else f"{fmt(mean)} ± {fmt(half)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def reached(entry: tuple[float, float, int] | None, runs: int) -> str:
    """A time to a target: ``mean ± half-width (n/m)``, the mean over the n of m seeds that reached it.

    >>> reached((12.0, 3.0, 2), 3), reached((float("nan"), float("nan"), 0), 3)
    ('12 ± 3 (2/3)', 'not reached (0/3)')
    """
    n = entry[2] if entry is not None else 0
    return f"{cell(entry) if n else 'not reached'} ({n}/{runs})"


def render(report: Report, records: Sequence[RunRecord], baseline: str, test: str) -> str:
    """The whole report.md."""
    done = sum(r.status == "success" for r in records)
    times = [f"time_to_acc_{t:g}" for t in report.targets]

    def value(label: str, metric: str) -> str:
        entry = report.table[label].get(metric)
        return reached(entry, report.runs.get(label, 0)) if metric.startswith("time_to_acc_") or \
            metric.startswith("rounds_to_acc_") else cell(entry)

    lines = [
        f"# Comparison report: {report.report_dir.parent.name}", "",
        f"{done} finished of {len(records)} runs. Values are mean ± 95% confidence-interval half-width over "
        f"seeds (Student t). Time (`time_to_*`, `auc_acc_time`) is measured in **{report.time_unit}**"
        + ("" if report.time_unit != "rounds" else " (no simulated clock: `time/sim_total_s` is not logged)") + ".",
        "", *_targets_text(report), "",
        *_settings_lines(report),
        *_ranking(report, value), "",
        "## Overview", "",
        *_table(["method", "seeds", "rounds", *times, *OVERVIEW],
                [[label, str(report.runs.get(label, 0)), report.rounds.get(label, ""),
                  *(value(label, k) for k in (*times, *OVERVIEW))] for label in report.table]),
        "",
    ]
    for label, metrics in report.table.items():
        lines += [f"## {label}", "", *_table(["metric", "mean ± 95% CI", "seeds"],
                                             [[k, value(label, k), str(v[2])] for k, v in metrics.items()]), ""]
    lines += [f"## Paired comparison against `{baseline}`", "",
              f"{TEST_NAMES[test]} over seeds (pairs share partition, data order and initial model); the times to a "
              "target accuracy always use the Wilcoxon signed-rank test with *not reached* counted as slower than "
              "every reached time (a pair where neither reached is a tie, dropped). p-values are Holm-corrected over "
              "the methods for each metric. `diff` = method - baseline, the mean paired difference with its 95% CI "
              "(Student t), over the pairs where both values exist (for a time: where both reached the target); "
              "`reached` = pairs in which the method / the baseline reached it; `p floor` = the smallest "
              "Holm-corrected p-value the test can give with this many pairs.", "",
              *_table(["metric", "method", "against", "pairs", "reached", "diff [95% CI]", "p", "p (Holm)", "p floor"],
                      [_test_row(t) for t in report.tests]),
              "", *_floor_notes(report.tests), ""]
    lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in report.plots), ""]
    return "\n".join(lines)


def _targets_text(report: Report) -> list[str]:
    if not report.targets:
        return ["No target accuracy: no run was evaluated."]
    shown = ", ".join(f"{t:g}" for t in report.targets)
    return [f"**Target accuracy {shown}**, {report.target_note}. `time_to_acc_<t>` (and `rounds_to_acc_<t>`) is "
            "the time to the first evaluation at or above t. A run that never gets there is *censored*: "
            "`(n/m)` = reached in n of m seeds, and the mean and CI are over those n. "
            "`time_to_<p>pct_of_own_gain` is relative to each run's own final gain, so a method that learns little "
            "is \"fast\" by it: it is shown, not tested, and not comparable across methods."]


def _ranking(report: Report, value: Any) -> list[str]:
    if not report.targets:
        return []
    metric = f"time_to_acc_{report.targets[0]:g}"
    return [f"## Ranking by time to accuracy {report.targets[0]:g}", "",
            "Most seeds reaching the target first, then the lower mean time over those that reached it.", "",
            *(f"{i}. {label}: {value(label, metric)}" for i, label in enumerate(report.ranking, 1))]


def _floor_notes(tests: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per (test, pairs, family size) whose p floor keeps every p-value above 0.05."""
    notes = []
    for test, n, family in dict.fromkeys((t["test"], t["n"], t["family"]) for t in tests
                                         if t["n"] >= 2 and t["p_floor"] > 0.05):
        floor = min_pvalue(n, test)
        holm = f" ({min(1.0, family * floor):.4g} after Holm over {family} methods)" if family > 1 else ""
        notes.append(f"**Note:** with {n} pairs the {TEST_NAMES[test]} cannot give p below {floor:.4g}{holm}, so no "
                     f"difference it tests can be significant at 0.05 here; it needs at least "
                     f"{seeds_needed(test, family)} seeds.")
    return notes


def _settings_lines(report: Report) -> list[str]:
    """What the runs share and where they differ: runs are pooled only when every other setting agrees."""
    lines = []
    if report.varied:
        lines += [f"Runs differ in {', '.join(f'`{k}`' for k in report.varied)} besides method and seed; each "
                  "combination is its own row (named in the method column), never pooled.", ""]
    if report.shared:
        lines += ["Settings every run shares (`study.yaml`): "
                  + ", ".join(f"`{k}={v}`" for k, v in report.shared.items() if k.startswith(_HEADLINE)) + ".", ""]
    return lines


#: The shared settings report.md spells out (all of them are in study.yaml).
_HEADLINE = ("data.dataset", "data.num_clients", "data.partition", "train.model", "train.lr", "train.local_",
             "rounds.", "aggregator.name", "systems.availability", "systems.deadline")


def _test_row(t: dict[str, Any]) -> list[str]:
    effect = fmt(t["mean_diff"])
    if not math.isnan(t["ci_low"]):
        effect += f" [{fmt(t['ci_low'])}, {fmt(t['ci_high'])}]"
    return [t["metric"], t["method"], t["baseline"], str(t["n"]), t["reached"] if t["metric"].startswith("time_to_acc_")
            else "-", effect, fmt(t["p"]), fmt(t["p_holm"]), fmt(t["p_floor"])]
