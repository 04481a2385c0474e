"""Seconds per round with 1 and 2 processes on CPU (gloo) for W-big, through the CLI as a user runs it.

W-big: digits, 1000 iid clients, 50 per round, small CNN, 1 local epoch, batch 16, SGD, 1 thread per
process. Each setting is a fresh ``csfl-fabric run ... fabric.devices=N``; the per-round wall times come
from rank 0's timing.csv (round 0, which pays one-off warm-up costs, and the last round, which evaluates,
are left out). Repetitions alternate the settings, and the ratio is against 1 process of the same invocation.

    python bench/scale.py [--rounds 8] [--reps 1] [--devices 1 2] [--local-epochs 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
W_BIG = ["data.dataset=digits", "data.num_clients=1000", "data.partition.name=iid", "rounds.clients_per_round=50",
         "train.model=cnn", "train.batch_size=16", "train.num_threads=1", "logging.wandb=disabled",
         "logging.progress=false", "fabric.accelerator=cpu", "experiment=scale"]


def round_times(devices: int, rounds: int, local_epochs: int, tmp: Path) -> tuple[list[float], float]:
    """Per-round seconds of one run with ``devices`` processes, and the run's total wall seconds."""
    out = tmp / f"devices{devices}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "csfl_fabric", "run", str(REPO / "configs" / "quickstart.yaml"), *W_BIG,
           f"rounds.num_rounds={rounds}", f"rounds.eval_every={rounds}", f"train.local_epochs={local_epochs}",
           f"fabric.devices={devices}", f"logging.dir={out}"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - started
    (timing,) = out.rglob("timing.csv")
    with timing.open(newline="") as fh:
        times = [float(row["time/wall_round_s"]) for row in csv.DictReader(fh)]
    return times[1:-1], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--local-epochs", type=int, default=1)
    args = parser.parse_args()
    per_round: dict[int, list[float]] = {n: [] for n in args.devices}
    totals: dict[int, list[float]] = {n: [] for n in args.devices}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):
            for n in args.devices:
                times, total = round_times(n, args.rounds, args.local_epochs, Path(tmp))
                per_round[n].extend(times)
                totals[n].append(total)
    base = statistics.median(per_round[args.devices[0]])
    print(f"W-big (digits, 1000 clients, 50/round, cnn, {args.local_epochs} local epoch(s)), CPU, gloo; "
          f"{os.cpu_count()} cores; median over {args.reps} x {args.rounds - 2} rounds")
    print(f"{'processes':>9} {'s/round':>9} {'min':>8} {'max':>8} {'speedup':>8} {'run wall s':>11}")
    for n in args.devices:
        med = statistics.median(per_round[n])
        print(f"{n:>9} {med:>9.3f} {min(per_round[n]):>8.3f} {max(per_round[n]):>8.3f} {base / med:>7.2f}x "
              f"{statistics.median(totals[n]):>11.1f}")


if __name__ == "__main__":
    main()
