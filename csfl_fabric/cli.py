"""Command line: ``csfl-fabric run | resume | compare | report | runs | list`` (``python -m csfl_fabric`` too)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from csfl_fabric.errors import USER_ERRORS, DiskFullError, RankFailureError, RunFailed, RunInterrupted
from csfl_fabric.registry import AGGREGATORS, CALLBACKS, DATASETS, MODELS, PARTITIONERS, SELECTORS, Registry
from csfl_fabric.study.cli import add_commands

REGISTRIES: dict[str, Registry] = {
    "callbacks": CALLBACKS,
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
    run.add_argument("--run-dir", help="write exactly here; refused if it holds a run, unless resume=auto continues "
                     "it (default: a fresh runs/<experiment>/<selector>-seed<k>-<config hash>/)")
    res = sub.add_parser("resume", help="continue a run from its latest checkpoint",
                         description="Continue RUN_DIR from its latest checkpoint with its config.yaml, e.g. "
                         "`csfl-fabric resume runs/quickstart/heuristic.random-seed0-1a2b3c` (overrides may extend "
                         "rounds.num_rounds or change logging).")
    res.add_argument("run_dir", help="a run directory with checkpoints/")
    res.add_argument("overrides", nargs="*", help="key=value overrides that do not change results")
    COMMANDS.update(add_commands(sub))
    lst = sub.add_parser("list", help="list registered components with one-line descriptions")
    lst.add_argument("kind", nargs="?", choices=sorted(REGISTRIES), help="which registry (default: all)")
    lst.add_argument("--format", dest="fmt", choices=["table", "plain", "json"],
                     help="table (default on a terminal), plain (default when piped: kind, name, description "
                     "separated by tabs, one per line) or json")
    return parser


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from csfl_fabric.config import load_config

    # The config first: a bad key or value is reported before Lightning and the training code are imported.
    config = load_config(args.config, args.overrides) if args.command == "run" else None
    from csfl_fabric.api import resume, run

    if config is None:
        result = resume(args.run_dir, args.overrides)
    else:
        _say_cpu_processes(config)
        result = run(config, run_dir=args.run_dir)
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


def _say_cpu_processes(config: Any) -> None:
    """One line when ``fabric.devices > 1`` will start that many CPU processes (no GPU), in the launching process."""
    f = config.fabric
    if f.devices > 1 and f.accelerator in ("auto", "cpu") and "LOCAL_RANK" not in os.environ:
        import torch

        if f.accelerator == "cpu" or not torch.cuda.is_available():
            print(f"csfl-fabric: fabric.devices={f.devices} without a GPU starts {f.devices} CPU processes on "
                  f"{os.cpu_count()} cores (gloo); set fabric.devices=1 for one process.", file=sys.stderr)


def _cmd_list(args: argparse.Namespace, console: Console) -> int:
    kinds = [args.kind] if args.kind else sorted(REGISTRIES)
    entries = {kind: [(name, REGISTRIES[kind].describe(name)) for name in REGISTRIES[kind].names()] for kind in kinds}
    fmt = args.fmt or ("table" if sys.stdout.isatty() else "plain")
    if fmt == "json":
        print(json.dumps({kind: {"key": REGISTRIES[kind].key, "entries": [{"name": n, "description": d}
                                                                            for n, d in rows]}
                          for kind, rows in entries.items()}, indent=2))
    elif fmt == "plain":
        # One record a line, tab-separated: `csfl-fabric list | cut -f2` gives the names.
        print("\n".join(f"{kind}\t{name}\t{desc}" for kind, rows in entries.items() for name, desc in rows))
    else:
        for kind, rows in entries.items():
            table = Table(title=f"{kind} (keys: {REGISTRIES[kind].key})", show_header=True)
            table.add_column("name", style="bold", overflow="fold")
            table.add_column("description", overflow="fold")  # fold long names and links, never cut them
            for name, desc in rows:
                table.add_row(name, desc)
            console.print(table)
    return 0


COMMANDS: dict[str, Any] = {"run": _cmd_run, "resume": _cmd_run, "list": _cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csfl-fabric`` console script; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the flags (`compare CONFIG --seeds 0,1 train.lr=0.1`).
    bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except USER_ERRORS as e:
        # A user mistake: one line, exit code 2, no traceback.
        hint = _resume_hint(e, "; after fixing it, ")
        print(f"csfl-fabric: error: {_one_line(e).rstrip('.') if hint else _one_line(e)}{hint}", file=sys.stderr)
        return 2
    except DiskFullError as e:
        print(f"csfl-fabric: error: {e}", file=sys.stderr)
        return 1
    except RunInterrupted as e:
        print(f"csfl-fabric: {e}; checkpoint written. Resume with: csfl-fabric resume {getattr(e, 'run_dir', '')}",
              file=sys.stderr)
        return e.exit_code
    except RunFailed as e:
        from csfl_fabric.config import HASH_EXCLUDED

        # A resume must compute what the run would have: only settings that change no result may differ.
        print(f"csfl-fabric: run failed: {e} The last consistent state is checkpointed. A resume may change only "
              f"{', '.join(HASH_EXCLUDED)} (as key=value after the directory); a cause in any other setting (e.g. "
              f"train.lr) needs a new run. Resume with: csfl-fabric resume {getattr(e, 'run_dir', '')}",
              file=sys.stderr)
        return 1
    except RankFailureError as e:
        # Another process of a distributed run failed: say so in one line; that process printed the cause.
        print(f"csfl-fabric: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("csfl-fabric: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - not a user mistake but a bug: keep its traceback, say what to resume
        traceback.print_exc()
        print(f"csfl-fabric: unexpected {type(e).__name__} (a bug: please report it with the traceback above)"
              f"{_resume_hint(e, '; once fixed, ')}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())  # a message never spans lines, even one quoting a multi-line reason


def _resume_hint(e: BaseException, lead: str) -> str:
    """``; ... resume with: csfl-fabric resume <run_dir>`` when the failed run left a checkpoint, else ``""``."""
    from csfl_fabric.engine.resume import latest_checkpoint

    run_dir = getattr(e, "run_dir", None)
    if run_dir is None or latest_checkpoint(run_dir) is None:
        return ""
    return f"{lead}resume with: csfl-fabric resume {run_dir}"


if __name__ == "__main__":
    sys.exit(main())
