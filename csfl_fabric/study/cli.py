"""The study commands of the CLI: ``compare``, ``report`` and ``runs``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from csfl_fabric.errors import ConfigError
from csfl_fabric.study.markdown import cell


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
    rep = sub.add_parser("report", help="rebuild the report of runs/<experiment> from its finished runs")
    rep.add_argument("runs_dir", help="an experiment directory, e.g. runs/quickstart")
    _report_options(rep)
    lst = sub.add_parser("runs", help="list finished and unfinished runs with their key figures")
    lst.add_argument("runs_dir", nargs="?", default="runs", help="where to look (default: runs)")
    return {"compare": _cmd_compare, "report": _cmd_report, "runs": _cmd_runs}


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", help="method the others are tested against (default: the first)")
    parser.add_argument("--test", choices=["ttest", "wilcoxon"], help="paired test over seeds (default: ttest)")
    parser.add_argument("--format", dest="fmt", choices=["png", "pdf", "svg"], help="plot format (default: png)")


def _cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from csfl_fabric.study.compare import compare, parse_sweep

    # Single-valued "sweeps" are plain overrides, which also catches overrides typed after --sweep.
    sweep = parse_sweep(args.sweep)
    fixed = [f"{k}={v[0]}" for k, v in sweep.items() if len(v) == 1]
    result = compare(args.config, methods=args.methods, seeds=args.seeds, overrides=[*args.overrides, *fixed],
                     sweep={k: v for k, v in sweep.items() if len(v) > 1}, isolate=args.isolate,
                     baseline=args.baseline, test=args.test, fmt=args.fmt, new_study=args.new_study)
    for spec, action in result.runs:
        console.print(f"{action:>9}  {spec.run_dir.name}", soft_wrap=True)
    table = Table(title=f"{result.experiment_dir.name} (mean ± 95% CI over seeds; time in {result.report.time_unit})")
    columns = {"final_acc": "final acc", "best_acc": "best acc", "time_to_80pct": "time to 80%",
               "fair_participation_gini": "Gini", "wall_seconds": "wall s"}
    for name in ("method", "seeds", "rounds", *columns.values()):
        # Fold, never cut: at 80 columns a cut label ("heuristi…") no longer says which method it is.
        table.add_column(name, justify="left" if name == "method" else "right", overflow="fold")
    for label, metrics in result.report.table.items():
        seeds = str(max((n for *_, n in metrics.values()), default=0))
        table.add_row(label, seeds, result.report.rounds.get(label, ""), *(cell(metrics.get(k)) for k in columns))
    console.print(table)
    console.print(f"Report: {result.report.report_dir / 'report.md'}", soft_wrap=True)
    return 0


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from csfl_fabric.study.report import build_report

    if not Path(args.runs_dir).is_dir():
        raise ConfigError(f"Runs directory `{args.runs_dir}` does not exist. Pass runs/<experiment>.")
    report = build_report(args.runs_dir, baseline=args.baseline, test=args.test or "ttest", fmt=args.fmt or "png")
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

