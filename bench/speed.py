"""Speed: median seconds per round of csfl_fabric's backends against a bare PyTorch FedAvg loop.

One invocation runs every contender in its own fresh process (so no contender inherits another's
allocator or thread state), alternating contenders within each repetition, and prints the median
seconds per round over all timed rounds and the ratio to the bare loop measured in the same invocation:
the median over repetitions of each repetition's ratio (its median round against the bare loop's median
round in that repetition, run just before it), since a shared machine's speed drifts over minutes.

Workloads (small CNN, 1 local epoch, batch 16, SGD lr 0.05, heuristic.random selection, 1 thread):
    W      digits, 100 clients, Dirichlet(0.5), 10 clients per round, 30 rounds
    W-big  digits, 1000 clients, iid, 50 clients per round, 10 rounds. The digits train split has only
           1,438 images, so 1000 clients hold 1 or 2 images each (562 and 438 clients) and take one
           local step: this workload measures per-client overhead, which is what grows with the
           number of clients. (No Dirichlet(0.5) draw gives 1000 clients at least one image each.)

Each process runs one warm-up round first and one evaluating round last; neither is timed.

Clocks: ``--clock cpu`` (the default on CPU) counts the process's own CPU time per round, which stays
meaningful on a machine shared with other jobs (wall time there mostly measures their load);
``--clock wall`` (the default on CUDA, where work runs outside the process's CPU time) counts elapsed time.

    python bench/speed.py [--workloads W W-big] [--reps 5] [--device cpu] [--precision 32-true] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from bare import bare_fedavg  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "W": {"num_clients": 100, "partition": "dirichlet", "per_round": 10, "rounds": 30},
    "W-big": {"num_clients": 1000, "partition": "iid", "per_round": 50, "rounds": 10},
}
CONTENDERS = ("bare", "sequential", "cohort")
TARGETS = {("sequential", "W"): 1.10, ("sequential", "W-big"): 1.10, ("cohort", "W-big"): 0.50}


def overrides(workload: str, device: str, precision: str, rounds: int, tmp: str) -> list[str]:
    w = WORKLOADS[workload]
    return [f"data.num_clients={w['num_clients']}", f"data.partition.name={w['partition']}",
            f"rounds.clients_per_round={w['per_round']}", f"rounds.num_rounds={rounds}",
            f"rounds.eval_every={rounds}", f"fabric.accelerator={device}", f"fabric.precision={precision}",
            "logging.wandb=disabled", "logging.progress=false", f"logging.dir={tmp}"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class RoundTimer:
    """Seconds between consecutive round starts: everything a round costs, hooks and logging included."""

    def __init__(self, device: str, clock: str) -> None:
        self.cuda = device == "cuda"
        self.clock = CLOCKS[clock]
        self.starts: list[float] = []

    def on_round_start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()  # the previous round's kernels belong to the previous round
        self.starts.append(self.clock())


def worker(contender: str, workload: str, device: str, precision: str, clock: str) -> list[float]:
    """The timed rounds of one contender on one workload, in this process."""
    from csfl_fabric.build import build_dataset, build_run, stream
    from csfl_fabric.config import load_config
    from csfl_fabric.registry import MODELS

    rounds = WORKLOADS[workload]["rounds"] + 2  # + a warm-up round and an evaluating round, both untimed
    with tempfile.TemporaryDirectory() as tmp:
        backend = [] if contender == "bare" else [f"train.backend={contender}"]
        cfg = load_config(REPO / "configs" / "quickstart.yaml",
                          [*overrides(workload, device, precision, rounds, tmp), *backend])
        if contender == "bare":
            torch.set_num_threads(1)
            dataset, parts = build_dataset(cfg)
            torch.manual_seed(0)
            model = MODELS.build("cnn", input_shape=dataset.input_shape, num_classes=dataset.num_classes)
            # The selection stream: the same clients in every round as heuristic.random in the other contenders.
            times = bare_fedavg(model.to(device), dataset.x_train.to(device), dataset.y_train.to(device), parts,
                                rounds=rounds - 1, per_round=cfg.rounds.clients_per_round, batch_size=16, lr=0.05,
                                autocast=precision == "bf16-mixed", rng=stream(cfg.seed, "selection"),
                                clock=CLOCKS[clock])
            return times[1:]
        timer = RoundTimer(device, clock)
        run = build_run(cfg, callbacks=[timer])
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.orchestrator.run()
        starts = timer.starts
        return [b - a for a, b in zip(starts[1:-1], starts[2:], strict=False)]


def spawn(contender: str, workload: str, device: str, precision: str, clock: str) -> list[float]:
    cmd = [sys.executable, __file__, "--worker", contender, "--workloads", workload, "--device", device,
           "--precision", precision, "--clock", clock]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--clock", choices=list(CLOCKS), help="default: cpu on CPU, wall on CUDA")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    if args.worker:
        print(json.dumps(worker(args.worker, args.workloads[0], args.device, args.precision, clock)))
        return
    contenders = ["bare", *[c for c in args.contenders if c != "bare"]]
    print(f"device={args.device} precision={args.precision} clock={clock} reps={args.reps} torch={torch.__version__}")
    print(f"{'workload':<10}{'contender':<12}{'median s/round':>16}{'x bare':>8}  {'target':<13}x bare in each rep")
    for workload in args.workloads:
        times: dict[str, list[list[float]]] = {c: [] for c in contenders}
        for _ in range(args.reps):
            for contender in contenders:  # alternate, so drifts in machine load hit every contender alike
                times[contender].append(spawn(contender, workload, args.device, args.precision, clock))
        bare = [statistics.median(rep) for rep in times["bare"]]
        for contender in contenders:
            medians = [statistics.median(rep) for rep in times[contender]]
            # Each repetition's ratio against the bare loop run just before it, then the median over repetitions:
            # the machine's speed drifts over minutes, and neighbouring processes see about the same machine.
            ratio = statistics.median(m / b for m, b in zip(medians, bare, strict=True))
            median = statistics.median(t for rep in times[contender] for t in rep)
            target = TARGETS.get((contender, workload))
            verdict = "" if target is None else f"<={target:.2f} {'met' if ratio <= target else 'MISSED'}"
            per_rep = " ".join(f"{m / b:.2f}" for m, b in zip(medians, bare, strict=True))
            print(f"{workload:<10}{contender:<12}{median:>16.4f}{ratio:>8.2f}  {verdict:<13}{per_rep}", flush=True)


if __name__ == "__main__":
    main()
