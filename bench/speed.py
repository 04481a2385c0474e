"""Speed: median seconds per round of csfl_fabric's backends against a bare PyTorch FedAvg loop.

One invocation runs every contender in its own fresh process (so no contender inherits another's
allocator or thread state). The processes of a repetition start together and then take turns round by
round (bare, sequential, cohort, bare, ...) on one core: each waits at its round boundary, outside its
timed round, until the others have run theirs. A contender's round r trains the same clients as the bare
loop's round r, and the two run on the same core well under a second apart, so this shared machine's
swings in speed (other people's jobs shift them within seconds, and one core can run slower than the
other for minutes) hit both alike; repetitions take the cores in turn. The ratio printed is the median,
over repetitions and rounds, of each round's time against the bare loop's same round; the median seconds
per round are printed too.

Workloads (the speed issue's small CNN: 16/32 channels, 64 hidden, ``--model``; 1 local epoch, batch 16, SGD lr
0.05, heuristic.random selection, 1 thread):
    W      digits, 100 clients, Dirichlet(0.5), 10 clients per round, 30 rounds
    W-big  digits, 1000 clients, iid, 50 clients per round, 10 rounds. The digits train split has only
           1,438 images, so 1000 clients hold 1 or 2 images each (562 and 438 clients) and take one
           local step: this workload measures per-client overhead, which is what grows with the
           number of clients. (No Dirichlet(0.5) draw gives 1000 clients at least one image each.)

Each process runs one warm-up round first and one evaluating round last; neither is timed.

``floor`` is no backend but a bound (`bare.batched_floor`): each local step of a round's clients as one forward
and backward of all their batches through shared channels-last weights. A cohort backend does that work and
more (per-client gradients and updates), so its ratio cannot fall below the floor's on that workload: a target
under the floor is out of any batching's reach on that machine.

Clocks: ``--clock cpu`` (the default on CPU) counts the process's own CPU time per round, which stays
meaningful on a machine shared with other jobs (wall time there mostly measures their load);
``--clock wall`` (the default on CUDA, where work runs outside the process's CPU time) counts elapsed time.

    python bench/speed.py [--workloads W W-big] [--reps 5] [--device cpu] [--precision 32-true] [--clock cpu]
        [--model width=16 hidden=64] [--set train.channels_last=false ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from bare import bare_fedavg, batched_floor  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "W": {"num_clients": 100, "partition": "dirichlet", "per_round": 10, "rounds": 30},
    "W-big": {"num_clients": 1000, "partition": "iid", "per_round": 50, "rounds": 10},
}
#: Loops without csfl_fabric: the baseline, and the floor of any backend that trains a round's clients together.
BASELINES: dict[str, Callable[..., list[float]]] = {"bare": bare_fedavg, "floor": batched_floor}
CONTENDERS = ("bare", "sequential", "cohort", "floor")
#: The speed issue's model: the small CNN with 16/32 channels and 64 hidden units (the quickstart's has 32/64 and
#: 128; ``--model width=32 hidden=128`` measures that one, as the first wave's tables did).
MODEL = ("width=16", "hidden=64")
# The speed issue's targets (wave 2); the first wave's were sequential <= 1.10 and cohort <= 0.50 on W-big.
TARGETS = {("sequential", "W"): 1.00, ("sequential", "W-big"): 1.00, ("cohort", "W"): 0.50, ("cohort", "W-big"): 0.40}


def overrides(workload: str, device: str, precision: str, rounds: int, tmp: str,
              model: Sequence[str] = MODEL) -> list[str]:
    w = WORKLOADS[workload]
    return [*[f"train.model_params.{kv}" for kv in model],
            f"data.num_clients={w['num_clients']}", f"data.partition.name={w['partition']}",
            f"rounds.clients_per_round={w['per_round']}", f"rounds.num_rounds={rounds}",
            f"rounds.eval_every={rounds}", f"fabric.accelerator={device}", f"fabric.precision={precision}",
            "logging.wandb=disabled", "logging.progress=false", f"logging.dir={tmp}"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class RoundTimer:
    """Seconds from each round's start to the next one's: everything a round costs, hooks and logging included.

    At each round boundary it first closes the previous round, then waits for its turn (``sync``), then
    starts the next: the wait is in no round.
    """

    def __init__(self, device: str, clock: str, sync: Callable[[], None]) -> None:
        self.cuda = device == "cuda"
        self.clock = CLOCKS[clock]
        self.sync = sync
        self.started: float | None = None
        self.times: list[float] = []

    def on_round_start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()  # the previous round's kernels belong to the previous round
        if self.started is not None:
            self.times.append(self.clock() - self.started)
        self.sync()
        self.started = self.clock()


def worker(contender: str, workload: str, device: str, precision: str, clock: str, sets: list[str],
           sync: Callable[[], None], model: Sequence[str] = MODEL) -> list[float]:
    """The timed rounds of one contender on one workload, in this process (round 0, the warm-up, left out)."""
    from csfl_fabric.build import build_dataset, build_run, stream
    from csfl_fabric.config import load_config
    from csfl_fabric.registry import MODELS

    rounds = WORKLOADS[workload]["rounds"] + 2  # + a warm-up round and an evaluating round, both untimed
    with tempfile.TemporaryDirectory() as tmp:
        backend = [] if contender in BASELINES else [f"train.backend={contender}", *sets]
        cfg = load_config(REPO / "configs" / "quickstart.yaml",
                          [*overrides(workload, device, precision, rounds, tmp, model), *backend])
        if contender in BASELINES:
            torch.set_num_threads(1)
            dataset, parts = build_dataset(cfg)
            torch.manual_seed(0)
            model = MODELS.build(cfg.train.model, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
                                 **cfg.train.model_params)
            # The selection stream: the same clients in every round as heuristic.random in the other contenders.
            loop = BASELINES[contender]
            times = loop(model.to(device), dataset.x_train.to(device), dataset.y_train.to(device), parts,
                         rounds=rounds - 1, per_round=cfg.rounds.clients_per_round, batch_size=16, lr=0.05,
                         autocast=precision == "bf16-mixed", rng=stream(cfg.seed, "selection"),
                         clock=CLOCKS[clock], before_round=sync)
            return times[1:]
        timer = RoundTimer(device, clock, sync)
        run = build_run(cfg, callbacks=[timer])
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.orchestrator.run()
        return timer.times[1:]


def pipe_sync(ready_fd: int, go_fd: int, cpu: int) -> Callable[[], None]:
    """A worker's turn-taking: say "at a boundary", then wait for "go".

    From its first boundary on (set up, concurrently with the others) a worker runs on core ``cpu``, the
    one every contender of the repetition uses: on a shared VM one core can run markedly slower than
    another for minutes, and contenders on different cores would measure the cores, not themselves.
    """
    pinned = False

    def sync() -> None:
        nonlocal pinned
        os.write(ready_fd, b"r")
        if not os.read(go_fd, 1):
            raise SystemExit("speed bench: the parent process went away")
        if not pinned and cpu >= 0 and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
            pinned = True

    return sync


def core(rep: int) -> int:
    """The core of repetition ``rep``: each takes the next, so that every core the machine gives is sampled."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [-1]
    return cpus[rep % len(cpus)]


def lockstep(contenders: list[str], workload: str, device: str, precision: str, clock: str, sets: list[str],
             cpu: int, model: Sequence[str] = MODEL) -> dict[str, list[float]]:
    """One repetition: every contender in its own process, taking turns round by round; their round times."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ready: dict[str, int] = {}
    go: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        for c in contenders:
            ready_r, ready_w = os.pipe()
            go_r, go_w = os.pipe()
            cmd = [sys.executable, __file__, "--worker", c, "--workloads", workload, "--device", device, "--precision",
                   precision, "--clock", clock, "--sync", str(ready_w), str(go_r), str(cpu), "--model", *model,
                   "--set", *sets]
            # Output to files, not pipes: a worker blocked on a full pipe would stall the turn-taking.
            out, err = (stack.enter_context(open(Path(tmp) / f"{c}.{x}", "wb")) for x in ("out", "err"))
            procs[c] = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, pass_fds=(ready_w, go_r))
            os.close(ready_w)
            os.close(go_r)
            ready[c], go[c] = ready_r, go_w
            stack.callback(os.close, ready_r)
            stack.callback(os.close, go_w)
        running = [c for c in contenders if os.read(ready[c], 1)]  # set up (concurrently), at a first boundary
        while running:
            for c in list(running):
                os.write(go[c], b"g")
                if not os.read(ready[c], 1):  # it ran its last round and exited
                    running.remove(c)
        times = {}
        for c, proc in procs.items():
            if proc.wait():
                raise SystemExit(f"speed bench: the {c} worker failed:\n{(Path(tmp) / f'{c}.err').read_text()[-3000:]}")
            times[c] = json.loads((Path(tmp) / f"{c}.out").read_text().strip().splitlines()[-1])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--clock", choices=list(CLOCKS), help="default: cpu on CPU, wall on CUDA")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for the csfl_fabric contenders, e.g. train.channels_last=false")
    parser.add_argument("--model", nargs="*", default=list(MODEL), metavar="KEY=VALUE",
                        help="the CNN's params for every contender, the bare loop included (default: %(default)s)")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--sync", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    if args.worker:
        sync = pipe_sync(*args.sync)
        print(json.dumps(worker(args.worker, args.workloads[0], args.device, args.precision, clock, args.set, sync,
                                args.model)))
        return
    contenders = ["bare", *[c for c in args.contenders if c != "bare"]]
    print(f"device={args.device} precision={args.precision} clock={clock} reps={args.reps} torch={torch.__version__}"
          f" model=cnn({', '.join(args.model)})" + (f" set={' '.join(args.set)}" if args.set else ""))
    print(f"{'workload':<10}{'contender':<12}{'median s/round':>16}{'x bare':>8}  {'target':<14}x bare in each rep")
    for workload in args.workloads:
        reps = [lockstep(contenders, workload, args.device, args.precision, clock, args.set, core(k), args.model)
                for k in range(args.reps)]
        for contender in contenders:
            # Round r of a contender against round r of the bare loop: same clients, seconds apart.
            per_rep = [[t / b for t, b in zip(rep[contender], rep["bare"], strict=True)] for rep in reps]
            ratio = statistics.median(r for rep in per_rep for r in rep)
            median = statistics.median(t for rep in reps for t in rep[contender])
            target = TARGETS.get((contender, workload))
            verdict = "" if target is None else f"<={target:.2f} {'met' if ratio <= target else 'MISSED'}"
            each = " ".join(f"{statistics.median(rep):.2f}" for rep in per_rep)
            print(f"{workload:<10}{contender:<12}{median:>16.4f}{ratio:>8.2f}  {verdict:<14}{each}", flush=True)


if __name__ == "__main__":
    main()
