"""The study commands of the CLI: ``compare``, ``report`` and ``runs``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from csfl_fabric.errors import ConfigError
from csfl_fabric.study.launch import add_cli_options, cli_kwargs, print_outcome


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def add_commands(sub: Any) -> dict[str, Callable[[argparse.Namespace, Console], int]]:
    """Add ``compare``, ``report`` and ``runs`` to the CLI's subparsers; return their handlers."""
    cmp = sub.add_parser("compare", help="run methods x seeds on paired data, then write the report",
                         description="Run every method x seed (x sweep point) of CONFIG on the same partition and "
                         "initial model per seed; finished runs are skipped when rerun. Example: `csfl-fabric compare "
                         "configs/quickstart.yaml --methods heuristic.random,heuristic.pow_d --seeds 0,1,2`.")
    cmp.add_argument("config", help="YAML config file; its `compare:` block gives the defaults")
    cmp.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    cmp.add_argument("--methods", type=_csv(str), help="comma-separated selector keys")
    cmp.add_argument("--seeds", type=_csv(int), help="comma-separated seeds, e.g. 0,1,2")
    cmp.add_argument("--sweep", nargs="+", default=[], metavar="KEY=V1,V2",
                     help="config keys to sweep (cartesian product); put overrides before --sweep")
    cmp.add_argument("--isolate", action="store_true", default=None, help="run each in its own subprocess")
    cmp.add_argument("--new-study", action="store_true", help="if runs/<experiment> holds runs made with other "
                     "settings, write to runs/<experiment>-<n> instead of refusing")
    _report_options(cmp)
    add_cli_options(cmp)
    rep = sub.add_parser("report", help="rebuild the report of runs/<experiment> from its finished runs")
    rep.add_argument("runs_dir", help="an experiment directory, e.g. runs/quickstart")
    _report_options(rep)
    rep.add_argument("--targets", type=_csv(float), help="absolute target accuracies for every run, e.g. 0.6,0.7 "
                     "(default: the runs' rounds.target_accuracy, else --target-fraction x the best accuracy)")
    rep.add_argument("--target-fraction", type=float, default=0.8,
                     help="without targets: this fraction of the best accuracy any run reached (default: 0.8)")
    lst = sub.add_parser("runs", help="list finished and unfinished runs with their key figures")
    lst.add_argument("runs_dir", nargs="?", default="runs", help="where to look (default: runs)")
    return {"compare": _cmd_compare, "report": _cmd_report, "runs": _cmd_runs}


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", help="method the others are tested against (default: the first)")
    parser.add_argument("--test", choices=["ttest", "wilcoxon"], help="paired test over seeds (default: ttest)")
    parser.add_argument("--format", dest="fmt", choices=["png", "pdf", "svg"], help="plot format (default: png)")


def _cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from csfl_fabric.study.compare import compare, parse_sweep
    from csfl_fabric.study.markdown import reached  # imports the statistics (scipy): only for this command

    # Single-valued "sweeps" are plain overrides, which also catches overrides typed after --sweep.
    sweep = parse_sweep(args.sweep)
    fixed = [f"{k}={v[0]}" for k, v in sweep.items() if len(v) == 1]
    result = compare(args.config, methods=args.methods, seeds=args.seeds, overrides=[*args.overrides, *fixed],
                     sweep={k: v for k, v in sweep.items() if len(v) > 1}, isolate=args.isolate,
                     baseline=args.baseline, test=args.test, fmt=args.fmt, new_study=args.new_study,
                     **cli_kwargs(args))
    for spec, action in result.runs:
        console.print(f"{action:>9}  {spec.run_dir.name}", soft_wrap=True)
    code = print_outcome(result.study, result.experiment_dir, console)
    report = result.report
    if report is None:
        return code
    # Narrow (3 digits, the interval under the mean, light rules) so that 80 columns hold it with room for the label,
    # which folds rather than being cut ("heuristi…" would no longer say which method it is). report.md has more.
    table = Table(title=f"{result.experiment_dir.name}: mean and ± 95% CI over seeds, time in {report.time_unit}",
                  box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True)
    times = {f"time_to_acc_{t:g}": f"time to\nacc {t:g}" for t in report.targets[:1]}
    columns = {"final_acc": "final\nacc", "best_acc": "best\nacc", "fair_participation_gini": "Gini",
               "wall_seconds": "wall\ns"}
    table.add_column("method", overflow="fold")
    for name in ("seeds", "rounds", *times.values(), *columns.values()):
        table.add_column(name, justify="right", no_wrap=True)
    for label in report.ranking or list(report.table):  # by the time to the first target accuracy
        metrics, runs = report.table[label], report.runs.get(label, 0)
        table.add_row(label, str(runs), report.rounds.get(label, ""), *(reached(metrics.get(k), runs) for k in times),
                      *(_short(metrics.get(k)) for k in columns))
    console.print(table)
    console.print(f"Targets: {', '.join(f'{t:g}' for t in report.targets) or 'none'} ({report.target_note})",
                  soft_wrap=True)
    console.print(f"Report: {report.report_dir / 'report.md'}", soft_wrap=True)
    return code


def _short(entry: tuple[float, float, int] | None) -> str:
    r"""The mean, and ``±`` the CI half-width under it, in 3 significant digits (``-`` for none).

    >>> _short((0.81234, 0.0456, 3)), _short((12.5, float("nan"), 1)), _short(None)
    ('0.812\n±0.0456', '12.5', '-')
    """
    if entry is None or math.isnan(entry[0]):
        return "-"
    mean, half, _ = entry
    return f"{mean:.3g}" if math.isnan(half) else f"{mean:.3g}\n±{half:.3g}"


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from csfl_fabric.study.report import build_report

    if not Path(args.runs_dir).is_dir():
        raise ConfigError(f"Runs directory `{args.runs_dir}` does not exist. Pass runs/<experiment>.")
    if not 0 < args.target_fraction <= 1:
        raise ConfigError(f"Expected `--target-fraction` to be in (0, 1] but got {args.target_fraction}.")
    if args.targets and not all(0 < t <= 1 for t in args.targets):
        raise ConfigError(f"Expected every `--targets` value in (0, 1] but got {args.targets}.")
    report = build_report(args.runs_dir, baseline=args.baseline, test=args.test or "ttest", fmt=args.fmt or "png",
                          targets=args.targets, target_fraction=args.target_fraction)
    console.print(f"Report: {report.report_dir / 'report.md'} ({len(report.plots)} plots)")
    return 0


def _cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from csfl_fabric.study.records import load_runs

    if not Path(args.runs_dir).is_dir():
        raise ConfigError(f"Runs directory `{args.runs_dir}` does not exist. Pass a directory that holds runs.")
    table = Table(title=f"runs in {args.runs_dir}", show_header=True)
    for column in ("run", "status", "rounds", "final acc", "best acc", "wall s"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right", overflow="fold")
    for r in load_runs(args.runs_dir):
        total = r.summary.get("rounds_completed", len(r.rows))
        s = r.summary
        table.add_row(str(r.run_dir.relative_to(args.runs_dir)), r.status, str(total),
                      *(f"{s[k]:.4f}" if k in s else "-" for k in ("final_acc", "best_acc")),
                      f"{s['wall_seconds']:.1f}" if "wall_seconds" in s else "-")
    console.print(table)
    return 0

