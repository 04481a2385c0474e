"""report.md: the comparison's tables as Markdown (overview, one table per method, paired tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from csfl_fabric.study.records import Report, RunRecord

#: The overview table's columns.
OVERVIEW: tuple[str, ...] = ("final_acc", "best_acc", "auc_acc_time", "time_to_80pct", "fair_participation_gini",
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


def render(report: Report, records: Sequence[RunRecord], baseline: str, test: str) -> str:
    """The whole report.md."""
    done = sum(r.status == "success" for r in records)
    lines = [
        f"# Comparison report: {report.report_dir.parent.name}", "",
        f"{done} finished of {len(records)} runs. Values are mean ± 95% confidence-interval half-width over "
        f"seeds (Student t). Time (`time_to_*`, `auc_acc_time`) is measured in **{report.time_unit}**"
        + ("" if report.time_unit != "rounds" else " (no simulated clock: `time/sim_total_s` is not logged)")
        + "; `time_to_<p>pct` is the time to reach p% of the final accuracy gain over the initial model.", "",
        *_settings_lines(report),
        "## Overview", "",
        *_table(["method", "seeds", "rounds", *OVERVIEW],
                [[label, str(max((n for *_, n in m.values()), default=0)), report.rounds.get(label, ""),
                  *(cell(m.get(k)) for k in OVERVIEW)] for label, m in report.table.items()]),
        "",
    ]
    for label, metrics in report.table.items():
        lines += [f"## {label}", "", *_table(["metric", "mean ± 95% CI", "seeds"],
                                             [[k, cell(v), str(v[2])] for k, v in metrics.items()]), ""]
    lines += [f"## Paired comparison against `{baseline}`", "",
              f"{TEST_NAMES[test]} over seeds (pairs share partition, data order and initial model); "
              "p-values Holm-corrected over the methods for each metric. `diff` = method - baseline.", "",
              *_table(["metric", "method", "against", "pairs", "diff", "p", "p (Holm)"],
                     [_test_row(t) for t in report.tests]),
              ""]
    lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in report.plots), ""]
    return "\n".join(lines)


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
    return [t["metric"], t["method"], t["baseline"], str(t["n"]), fmt(t["mean_diff"]), fmt(t["p"]), fmt(t["p_holm"])]
