"""Orchestrator overhead: seconds per round of the quickstart workload through csfl_fabric against a bare loop.

The quickstart workload (digits, 100 clients, Dirichlet 0.5, 10 per round, 1 local epoch, batch 16, SGD lr
0.05, 1 thread) with the speed issue's CNN (16/32 channels, 64 hidden: `bench/speed.py`'s default ``--model``)
is `bench/speed.py`'s workload W; this runs its bare and sequential
contenders only, the same way (own processes taking turns round by round on one core, CPU time), and
prints the ratio with `bench/speed.py`'s sequential target on W (<= 1.00 since the second speed wave; the
foundation's was <= 1.10). Then `bench/startup.py`: start-up to the first round
and peak PSS of the quickstart run against the bare loop, fresh processes one at a time (targets <= 1.15x and
<= 1.05x); ``--startup-reps 0`` skips it.

    python bench/overhead.py [--reps 5] [--startup-reps 5] [--set train.channels_last=false ...]
"""

from __future__ import annotations

import argparse
import statistics

import startup
from speed import TARGETS, core, lockstep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--startup-reps", type=int, default=5, help="fresh processes per contender; 0 skips")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for csfl_fabric")
    args = parser.parse_args()
    reps = [lockstep(["bare", "sequential"], "W", "cpu", "32-true", "cpu", args.set, core(k)) for k in range(args.reps)]
    ratios = [t / b for rep in reps for t, b in zip(rep["sequential"], rep["bare"], strict=True)]
    ratio, target = statistics.median(ratios), TARGETS[("sequential", "W")]
    print(f"{'contender':<22}{'median CPU s/round':>20}{'ratio':>8}")
    for name, key in (("bare PyTorch FedAvg", "bare"), ("csfl_fabric", "sequential")):
        median = statistics.median(t for rep in reps for t in rep[key])
        print(f"{name:<22}{median:>20.4f}{ratio if key == 'sequential' else 1.0:>8.2f}")
    print(f"target: csfl_fabric / bare <= {target:.2f} -> {'met' if ratio <= target else 'NOT met'}")
    if args.startup_reps:
        print(f"\nstart-up and memory ({args.startup_reps} fresh processes each, alternating; medians; ratios: "
              "median over pairs (range))")
        print("\n".join(startup.table(startup.measure(args.startup_reps))))


if __name__ == "__main__":
    main()
