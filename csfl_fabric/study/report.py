"""The report of a comparison, rebuilt from run directories alone: summary.csv, report.md and plots."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from csfl_fabric.errors import ConfigError
from csfl_fabric.extras import require
from csfl_fabric.study.markdown import render
from csfl_fabric.study.records import Report, RunRecord, load_runs
from csfl_fabric.study.settings import label_variants, read_study

#: Per-run summary keys shown in the report (in this order) when present, with the direction that is better.
METRICS: dict[str, str] = {
    "final_acc": "higher", "best_acc": "higher", "final_f1": "higher", "final_precision": "higher",
    "final_recall": "higher", "final_loss": "lower", "auc_acc_time": "higher", "time_to_50pct": "lower",
    "time_to_80pct": "lower", "time_to_90pct": "lower", "time_to_target": "lower", "gain_per_hour": "higher",
    "gain_per_round": "higher", "fair_participation_gini": "lower", "fair_participation_entropy": "higher",
    "fair_participation_var": "lower", "fair_label_coverage_mean": "higher", "cost_bytes_down_total": "lower",
    "cost_bytes_up_total": "lower", "cost_flops_total": "lower", "wall_seconds": "lower",
}
#: The metrics tested against the baseline (Holm-corrected over the methods, per metric).
TESTED: tuple[str, ...] = ("final_acc", "best_acc", "auc_acc_time", "time_to_80pct", "fair_participation_gini")


def aggregate(records: Sequence[RunRecord]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, 95% CI half-width and number of seeds of every metric, per variant (finished runs only)."""
    from csfl_fabric.study.stats import mean_ci  # scipy: imported where it is used

    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for label in _labels(records):
        runs = [r for r in records if r.label == label and r.status == "success"]
        table[label] = {}
        for metric in METRICS:
            values = [float(r.summary[metric]) for r in runs if metric in r.summary]
            if values:
                mean, half = mean_ci(values)
                table[label][metric] = (mean, half, sum(not math.isnan(v) for v in values))
    return table


def paired_tests(records: Sequence[RunRecord], baseline: str, test: str) -> list[dict[str, Any]]:
    """Each variant against the baseline, paired by seed, Holm-corrected per metric.

    A method is tested against the baseline method at the same sweep point; the baseline method's own other
    sweep points are tested against its first one.
    """
    from csfl_fabric.study.stats import holm, paired_pvalue

    done = [r for r in records if r.status == "success"]
    # Other methods meet the baseline at their own sweep point; the baseline's other points meet its first one.
    home = next((r.point for r in done if r.method == baseline), "")
    out: list[dict[str, Any]] = []
    for metric in TESTED:
        family: list[dict[str, Any]] = []
        for label in _labels(done):
            runs = {r.seed: r for r in done if r.label == label}
            first = next(iter(runs.values()))
            point = home if first.method == baseline else first.point
            if first.method == baseline and first.point == home:
                continue
            base = {r.seed: r for r in done if r.method == baseline and r.point == point}
            seeds = sorted(s for s in runs if s in base and metric in runs[s].summary and metric in base[s].summary)
            a = [float(runs[s].summary[metric]) for s in seeds]
            b = [float(base[s].summary[metric]) for s in seeds]
            diff = sum(x - y for x, y in zip(a, b, strict=True)) / len(seeds) if seeds else math.nan
            family.append({"metric": metric, "method": label, "baseline": f"{baseline} {point}".strip(),
                           "n": len(seeds), "mean_diff": diff, "p": paired_pvalue(a, b, test) if seeds else math.nan})
        for row, adjusted in zip(family, holm([r["p"] for r in family]), strict=True):
            row["p_holm"] = adjusted
        out.extend(family)
    return out


def build_report(directory: str | Path, baseline: str | None = None, test: str = "ttest", fmt: str = "png",
                 only: Sequence[Path] | None = None) -> Report:
    """Write ``<directory>/report/`` (summary.csv, runs.csv, report.md, plots) from the run directories.

    Args:
        directory: the experiment directory ``runs/<experiment>``.
        baseline: the method the others are tested against (default: the first method in sorted order).
        test: ``ttest`` or ``wilcoxon``.
        fmt: plot format, ``png``, ``pdf`` or ``svg``.
        only: restrict to these run directories (a comparison's own runs).

    Runs are never pooled across settings: every setting that differs between them (other than the method and the
    seed) is part of their label, so runs with 5 and 240 rounds, or two partitions, are separate rows.

    Raises:
        ConfigError: no run directories below ``directory``, or a baseline that is not one of their methods.
        MissingExtraError: matplotlib or scipy (the ``report`` extra) is not installed.
    """
    require("report", "The report (plots and statistics)")
    from csfl_fabric.study.plots import make_plots

    directory = Path(directory)
    records = load_runs(directory, only)
    if not records:
        raise ConfigError(f"No run directories (with config.yaml) below `{directory}`. Pass runs/<experiment>.")
    varied = label_variants(records)
    methods = sorted({r.method for r in records})
    baseline = baseline or methods[0]
    if baseline not in methods:
        raise ConfigError(f"Baseline `{baseline}` is not among the methods of `{directory}`: {', '.join(methods)}.")
    out = directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(records)
    tests = paired_tests(records, baseline, test)
    unit = "simulated seconds" if any(r.summary.get("time_unit") == "sim_s" for r in records) else "rounds"
    rounds = _rounds(records)
    _write_csv(out / "summary.csv", _summary_rows(table, rounds))
    _write_csv(out / "runs.csv", [{"run": r.run_dir.name, "method": r.method, "point": r.point, "seed": r.seed,
                                   "status": r.status, "rounds": r.rounds,
                                   **{m: r.summary.get(m, "") for m in METRICS}} for r in records])
    plots = make_plots([r for r in records if r.status == "success"], out, fmt)
    study = read_study(directory)
    report = Report(out, table, tests, plots, unit, varied=varied, rounds=rounds,
                    shared=study["settings"] if study else {})
    (out / "report.md").write_text(render(report, records, baseline, test))
    return report


def _labels(records: Sequence[RunRecord]) -> list[str]:
    return list(dict.fromkeys(r.label for r in records))


def _rounds(records: Sequence[RunRecord]) -> dict[str, str]:
    """Rounds completed per variant: one number, or the range when its runs stopped at different rounds."""
    out = {}
    for label in _labels(records):
        rounds = sorted({r.rounds for r in records if r.label == label})
        out[label] = str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
    return out


def _summary_rows(table: dict[str, dict[str, tuple[float, float, int]]],
                  rounds: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for label, metrics in table.items():
        row: dict[str, Any] = {"method": label, "seeds": max((n for _, _, n in metrics.values()), default=0),
                               "rounds": rounds.get(label, "")}
        for metric, (mean, half, _) in metrics.items():
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean, half
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    header = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
