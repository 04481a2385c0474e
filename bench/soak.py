"""Soak: many clients and rounds, several methods in sequence in one process, checkpoints on.

Synthetic(1, 1) (FedProx) with 5000 natural clients, logistic regression, 10 clients a round, 5 local
steps, evaluation every 10 rounds, a checkpoint every 50 rounds (last 2 kept). Prints the process's
memory (PSS: shared pages counted once, so worker processes or mapped libraries do not inflate it) after
round 10 and at the end of each method, the growth against round 10 (target <= 2 %), and the bytes of
checkpoints written. The dataset is generated once and shared by the methods, as a comparison would.

    python bench/soak.py [--clients 5000] [--rounds 500] [--methods heuristic.random,heuristic.pow_d,system.oort]

A method is a selector key, optionally with an aggregator: ``heuristic.random+fedadam``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import csfl_fabric.build as build
from csfl_fabric.callbacks.checkpoint import Checkpoint
from csfl_fabric.config import load_config
from csfl_fabric.engine.checkpoint import list_checkpoints
from csfl_fabric.registry import SELECTORS


def pss_mib() -> float:
    """This process's proportional set size in MiB."""
    return psutil.Process().memory_full_info().pss / 2**20


class MemoryAt:
    """Records PSS after round ``at`` (1-based count) and at the end of the run."""

    def __init__(self, at: int) -> None:
        self.at, self.start, self.end = at, float("nan"), float("nan")

    def on_round_end(self, state: Any) -> None:
        if state.round + 1 == self.at:
            self.start = pss_mib()

    def on_run_end(self) -> None:
        self.end = pss_mib()


def soak(method: str, clients: int, rounds: int, tmp: Path) -> tuple[MemoryAt, int, int, float]:
    selector, _, aggregator = method.partition("+")
    cfg = load_config(None, [
        "experiment=soak", "data.dataset=synthetic", f"data.num_clients={clients}", "data.partition.name=natural",
        "train.model=logreg", "train.local_steps=5", "train.batch_size=16", "train.lr=0.05",
        f"rounds.num_rounds={rounds}", "rounds.clients_per_round=10", "rounds.eval_every=10",
        f"selector.name={selector}", f"aggregator.name={aggregator or 'fedavg'}",
        "checkpoint.every_n_rounds=50", "checkpoint.keep=2",
        "logging.wandb=disabled", "logging.progress=false", f"logging.dir={tmp}",
    ])
    memory = MemoryAt(10)
    run = build.build_run(cfg, callbacks=[memory])
    run.run_dir.mkdir(parents=True)
    started = time.perf_counter()
    run.orchestrator.run()
    seconds = time.perf_counter() - started
    ckpt = next(cb for cb in run.callbacks if isinstance(cb, Checkpoint))
    on_disk = sum(p.stat().st_size for p in list_checkpoints(ckpt.dirpath))
    return memory, ckpt.bytes_written, on_disk, seconds


def _cached(fn: Any) -> Any:
    cache: dict[str, Any] = {}

    @functools.wraps(fn)
    def wrapper(config: Any) -> Any:
        key = repr((config.seed, config.data))
        if key not in cache:
            cache[key] = fn(config)
        return cache[key]

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--methods", default="heuristic.random,heuristic.pow_d,system.oort")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m.partition("+")[0] in SELECTORS]
    for m in set(args.methods.split(",")) - set(methods):
        print(f"skipped {m}: selector not registered")
    # One dataset for every method (generating 5000 synthetic clients takes ~20 s of CPU).
    build.build_dataset = _cached(build.build_dataset)  # type: ignore[assignment]
    print(f"soak: {args.clients} clients, {args.rounds} rounds, methods {methods}; PSS before any run "
          f"{pss_mib():.1f} MiB")
    first: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            mem, written, on_disk, seconds = soak(method, args.clients, args.rounds, Path(tmp))
            first = mem.start if first is None else first
            print(f"{method:32s} PSS round 10 {mem.start:8.1f} MiB  end {mem.end:8.1f} MiB  "
                  f"growth {100 * (mem.end / mem.start - 1):+.2f} %  (vs first method's round 10 "
                  f"{100 * (mem.end / first - 1):+.2f} %)  checkpoints written {written / 1e6:.2f} MB, "
                  f"kept {on_disk / 1e6:.2f} MB  {seconds:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
