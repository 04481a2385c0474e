"""Command line: ``csfl-fabric run | list`` (``python -m csfl_fabric`` is the same)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from csfl_fabric.errors import USER_ERRORS, RankFailureError
from csfl_fabric.registry import AGGREGATORS, DATASETS, MODELS, PARTITIONERS, SELECTORS, Registry

REGISTRIES: dict[str, Registry] = {
    "selectors": SELECTORS,
    "datasets": DATASETS,
    "models": MODELS,
    "partitioners": PARTITIONERS,
    "aggregators": AGGREGATORS,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csfl-fabric", description="Federated-learning simulator for "
                                     "client-selection research on Lightning Fabric.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment from a YAML config",
                         description="Run CONFIG with key=value overrides, e.g. "
                         "`csfl-fabric run configs/quickstart.yaml rounds.num_rounds=5 train.lr=0.1`.")
    run.add_argument("config", help="YAML config file (see configs/)")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=0.1")
    lst = sub.add_parser("list", help="list registered components with one-line descriptions")
    lst.add_argument("kind", nargs="?", choices=sorted(REGISTRIES), help="which registry (default: all)")
    return parser


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from csfl_fabric.api import run

    result = run(args.config, args.overrides)
    if result.global_rank != 0:
        return 0  # rank 0 reports for the whole distributed run
    table = Table(title=f"{result.config.experiment}: {result.run_dir.name}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    last = result.metrics[-1] if result.metrics else {}
    rows = {"rounds": result.summary.get("rounds_completed"), "final eval/acc": result.summary.get("final_acc"),
            "best eval/acc": result.summary.get("best_acc"), "final eval/f1": last.get("eval/f1"),
            "final eval/loss": last.get("eval/loss"), "final train/loss": last.get("train/loss"),
            "wall seconds": result.summary.get("wall_seconds")}
    for key, value in rows.items():
        if value is not None:
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"Run directory: {result.run_dir}")
    return 0


def _cmd_list(args: argparse.Namespace, console: Console) -> int:
    for kind in [args.kind] if args.kind else sorted(REGISTRIES):
        registry = REGISTRIES[kind]
        table = Table(title=kind, show_header=True)
        table.add_column("name", style="bold")
        table.add_column("description")
        for name in registry.names():
            table.add_row(name, registry.describe(name))
        console.print(table)
    return 0


COMMANDS = {"run": _cmd_run, "list": _cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csfl-fabric`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except USER_ERRORS as e:
        # A user mistake: one line, exit code 2, no traceback.
        print(f"csfl-fabric: error: {e}", file=sys.stderr)
        return 2
    except RankFailureError as e:
        # Another process of a distributed run failed: say so in one line; that process printed the cause.
        print(f"csfl-fabric: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("csfl-fabric: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
