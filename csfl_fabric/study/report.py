"""The report of a comparison, rebuilt from run directories alone: summary.csv, report.md and plots."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from csfl_fabric.engine.files import atomic_open, atomic_write
from csfl_fabric.errors import ConfigError
from csfl_fabric.extras import require
from csfl_fabric.study.markdown import render
from csfl_fabric.study.records import Report, RunRecord, load_runs
from csfl_fabric.study.settings import label_variants, read_study
from csfl_fabric.study.stats import censored_pvalue, holm, mean_ci, min_pvalue, paired_difference, paired_pvalue
from csfl_fabric.study.targets import DEFAULT_FRACTION, add_target_metrics, rank, study_targets

#: Per-run summary keys shown in the report (in this order) when present, with the direction that is better.
#: The times to the study's target accuracies (``time_to_acc_<t>``, lower is better) are added per report.
METRICS: dict[str, str] = {
    "final_acc": "higher", "best_acc": "higher", "final_f1": "higher", "final_precision": "higher",
    "final_recall": "higher", "final_loss": "lower", "auc_acc_time": "higher", "gain_per_hour": "higher",
    "gain_per_round": "higher", "fair_participation_gini": "lower", "fair_participation_entropy": "higher",
    "fair_participation_var": "lower", "fair_label_coverage_mean": "higher", "cost_bytes_down_total": "lower",
    "cost_bytes_up_total": "lower", "cost_flops_total": "lower", "cost_probe_bytes_down_total": "lower",
    "cost_probe_flops_total": "lower", "wall_seconds": "lower",
    # Relative to each run's own final gain: shown, never tested (a method that learns little is "fast").
    **{f"time_to_{p}pct_of_own_gain": "lower" for p in (50, 80, 90)},
}
#: The metrics tested against the baseline (Holm-corrected over the methods, per metric), besides the time to
#: each target accuracy, which is always tested.
TESTED: tuple[str, ...] = ("final_acc", "best_acc", "auc_acc_time", "fair_participation_gini")


def aggregate(records: Sequence[RunRecord], metrics: Sequence[str] = tuple(METRICS)
              ) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, 95% CI half-width and number of non-NaN values of every metric, per variant (finished runs only).

    For a time to a target the NaNs are the runs that did not reach it: the mean is over those that did.
    """
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for label in _labels(records):
        runs = [r for r in records if r.label == label and r.status == "success"]
        table[label] = {}
        for metric in metrics:
            values = [float(r.summary[metric]) for r in runs if metric in r.summary]
            if values:
                mean, half = mean_ci(values)
                table[label][metric] = (mean, half, sum(not math.isnan(v) for v in values))
    return table


def paired_tests(records: Sequence[RunRecord], baseline: str, test: str,
                 censored: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each variant against the baseline, paired by seed, Holm-corrected per metric, with effect sizes.

    A method is tested against the baseline method at the same sweep point; the baseline method's own other
    sweep points are tested against its first one. The ``TESTED`` metrics use ``test``; the ``censored`` ones
    (times to a target) always use `censored_pvalue` (Wilcoxon signed-rank, "not reached" slower than any
    time). ``mean_diff`` and its 95% CI ``ci_low``/``ci_high`` are over the pairs where both values exist
    (for a censored metric: where both runs reached the target, ``both_reached``; ``reached`` is
    ``"<method's runs that reached it>/<pairs> vs <baseline's>/<pairs>"``). ``p_floor`` is the
    smallest Holm-adjusted p-value the test could give with these pairs (``family`` = p-values in the Holm family).
    """
    done = [r for r in records if r.status == "success"]
    # Other methods meet the baseline at their own sweep point; the baseline's other points meet its first one.
    home = next((r.point for r in done if r.method == baseline), "")
    out: list[dict[str, Any]] = []
    for metric in (*TESTED, *censored):
        kind = "censored" if metric in censored else test
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
            mean, low, high = paired_difference(a, b)
            p = (censored_pvalue(a, b) if kind == "censored" else paired_pvalue(a, b, test)) if seeds else math.nan
            family.append({"metric": metric, "method": label, "baseline": f"{baseline} {point}".strip(),
                           "n": len(seeds), "mean_diff": mean, "ci_low": low, "ci_high": high, "p": p,
                           "test": "wilcoxon" if kind == "censored" else test,
                           "both_reached": sum(not (math.isnan(x) or math.isnan(y)) for x, y in zip(a, b, strict=True)),
                           "reached": f"{sum(not math.isnan(x) for x in a)}/{len(a)} vs "
                                      f"{sum(not math.isnan(y) for y in b)}/{len(b)}"})
        tested = sum(not math.isnan(r["p"]) for r in family)
        for row, adjusted in zip(family, holm([r["p"] for r in family]), strict=True):
            row["p_holm"] = adjusted
            floor = tested * min_pvalue(row["n"], row["test"])  # NaN below 2 pairs
            row["family"], row["p_floor"] = tested, floor if math.isnan(floor) else min(1.0, floor)
        out.extend(family)
    return out


def build_report(directory: str | Path, baseline: str | None = None, test: str = "ttest", fmt: str = "png",
                 only: Sequence[Path] | None = None, targets: Sequence[float] | None = None,
                 target_fraction: float = DEFAULT_FRACTION) -> Report:
    """Write ``<directory>/report/`` (summary.csv, runs.csv, report.md, plots) from the run directories.

    Args:
        directory: the experiment directory ``runs/<experiment>``.
        baseline: the method the others are tested against (default: the first method in sorted order).
        test: ``ttest`` or ``wilcoxon``, for the metrics that are not times to a target.
        fmt: plot format, ``png``, ``pdf`` or ``svg``.
        only: restrict to these run directories (a comparison's own runs).
        targets: absolute target accuracies for every run; default: the runs' ``rounds.target_accuracy``,
            else ``target_fraction`` x the best accuracy any run reached (`csfl_fabric.study.targets`).
        target_fraction: the fraction of that default.

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
    chosen, note = study_targets(records, targets, target_fraction)
    target_metrics = add_target_metrics(records, chosen)
    metrics = [*target_metrics, *METRICS]
    table = aggregate(records, metrics)
    tests = paired_tests(records, baseline, test, censored=[m for m in target_metrics if m.startswith("time_")])
    unit = "simulated seconds" if any(r.summary.get("time_unit") == "sim_s" for r in records) else "rounds"
    runs = {label: sum(r.label == label and r.status == "success" for r in records) for label in table}
    ranking = rank(table, runs, target_metrics[0]) if target_metrics else list(table)
    rounds = _rounds(records)
    _write_csv(out / "summary.csv", _summary_rows(table, runs, target_metrics, rounds))
    _write_csv(out / "runs.csv", [{"run": r.run_dir.name, "method": r.method, "point": r.point, "seed": r.seed,
                                   "status": r.status, "rounds": r.rounds,
                                   **{m: r.summary.get(m, "") for m in metrics}} for r in records])
    plots = make_plots([r for r in records if r.status == "success"], out, fmt)
    study = read_study(directory)
    report = Report(out, table, tests, plots, unit, chosen, note, runs, ranking, varied=varied, rounds=rounds,
                    shared=study["settings"] if study else {})
    atomic_write(out / "report.md", render(report, records, baseline, test))
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


def _summary_rows(table: dict[str, dict[str, tuple[float, float, int]]], runs: dict[str, int],
                  censored: Sequence[str], rounds: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for label, metrics in table.items():
        row: dict[str, Any] = {"method": label, "seeds": runs.get(label, 0), "rounds": rounds.get(label, "")}
        for metric, (mean, half, n) in metrics.items():
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean, half
            if metric in censored:
                row[f"{metric}_reached"] = n  # of `seeds` runs; the mean and CI are over these
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    header = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
