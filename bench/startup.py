"""Start-up to the first round and peak memory of the quickstart run against the bare loop, each in a fresh process.

The quickstart run (digits, 100 clients, Dirichlet 0.5, 10 a round, small CNN, 50 rounds, W&B disabled, no
progress bar) through `csfl_fabric.api.run`, as a Python user starts it, against `bench/bare.py`'s loop on the
same data, partition and model (built with csfl_fabric's dataset, partitioner and model functions, which import
neither Lightning nor torchmetrics). Processes run one at a time, alternating (bare, csfl_fabric, bare, ...).

Per process:
    start-up   CPU seconds of the process (interpreter start, imports, data, set-up) and wall seconds since the
               process was created, read when the first round starts
    peak PSS   the most proportional set size (/proc/self/smaps_rollup) read at the first round's start and at
               every round's end; and the peak resident set (VmHWM)

    python bench/startup.py [--reps 3]       (also run by bench/overhead.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ROUNDS = 50
TARGETS = {"startup_cpu": 1.15, "pss": 1.05}


def _proc_kib(path: str, key: str) -> int:
    with open(path) as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


class Probe:
    """Start-up at the first round start; PSS then and after every round."""

    def __init__(self) -> None:
        self.startup_cpu: float | None = None
        self.startup_wall: float | None = None
        self.pss = 0

    def on_round_start(self, *_: Any, **__: Any) -> None:
        if self.startup_cpu is None:
            self.startup_cpu = time.process_time()
            self.startup_wall = time.time() - _created()
            self.on_round_end()

    def on_round_end(self, *_: Any, **__: Any) -> None:
        self.pss = max(self.pss, _proc_kib("/proc/self/smaps_rollup", "Pss:"))

    def report(self) -> str:
        return json.dumps({"startup_cpu": self.startup_cpu, "startup_wall": self.startup_wall, "pss_kib": self.pss,
                           "hwm_kib": _proc_kib("/proc/self/status", "VmHWM:")})


def _created() -> float:
    """When this process was created (epoch seconds), from /proc: before the interpreter started."""
    with open("/proc/self/stat") as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as fh:
        boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def bare(probe: Probe) -> None:
    """The bare loop on the quickstart's data, partition and model."""
    import numpy as np
    import torch
    from bare import bare_fedavg

    from csfl_fabric.data.datasets import digits
    from csfl_fabric.data.partition import dirichlet
    from csfl_fabric.models import cnn

    def stream(name: str) -> np.random.Generator:  # `csfl_fabric.build.stream`, whose module imports Lightning
        return np.random.default_rng(np.random.SeedSequence([0, zlib.crc32(name.encode())]))

    torch.set_num_threads(1)
    dataset = digits(root="", download=False, num_clients=100, rng=stream("data"))
    parts = dirichlet(dataset, 100, stream("partition"), alpha=0.5)
    torch.manual_seed(0)
    model = cnn(dataset.input_shape, dataset.num_classes)
    bare_fedavg(model, dataset.x_train, dataset.y_train, parts, rounds=ROUNDS, per_round=10, batch_size=16, lr=0.05,
                rng=stream("selection"), before_round=probe.on_round_start)
    probe.on_round_end()


def csfl(probe: Probe, tmp: str) -> None:
    """The quickstart run through the Python API."""
    from csfl_fabric.api import run

    run(REPO / "configs" / "quickstart.yaml", [f"rounds.num_rounds={ROUNDS}", "logging.wandb=disabled",
                                               "logging.progress=false", f"logging.dir={tmp}"], callbacks=[probe])


def measure(reps: int) -> dict[str, list[dict[str, float]]]:
    """``reps`` fresh processes of each contender, alternating; each one's figures."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{BENCH}", "WANDB_MODE": "disabled"}
    out: dict[str, list[dict[str, float]]] = {"bare": [], "csfl_fabric": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):
            for name in out:
                done = subprocess.run([sys.executable, __file__, "--child", name, tmp], env=env, capture_output=True,
                                      text=True)
                if done.returncode:
                    raise SystemExit(f"startup bench: {name} failed:\n{done.stderr[-3000:]}")
                out[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def table(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    """Median figures, and the median over pairs (a bare process, then a csfl_fabric one) of their ratios."""
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    lines = [f"{'contender':<14}{'start-up CPU s':>15}{'wall s':>9}{'peak PSS MiB':>14}{'VmHWM MiB':>11}"]
    for name, m in med.items():
        lines.append(f"{name:<14}{m['startup_cpu']:>15.2f}{m['startup_wall']:>9.2f}{m['pss_kib'] / 1024:>14.0f}"
                     f"{m['hwm_kib'] / 1024:>11.0f}")
    for label, key, target in (("start-up (CPU)", "startup_cpu", TARGETS["startup_cpu"]),
                               ("start-up (wall)", "startup_wall", None), ("peak PSS", "pss_kib", TARGETS["pss"]),
                               ("VmHWM", "hwm_kib", None)):
        # Each csfl_fabric process against the bare one started just before it: the machine's speed drifts
        # over a run of processes (start-up CPU seconds of one contender spanned 2.96-3.40 s within an hour).
        pairs = sorted(x[key] / y[key] for x, y in zip(runs["csfl_fabric"], runs["bare"], strict=True))
        ratio = statistics.median(pairs)
        verdict = "" if target is None else f"  target <= {target:.2f}: {'met' if ratio <= target else 'NOT met'}"
        lines.append(f"{label:<16} csfl_fabric / bare = {ratio:.2f} ({pairs[0]:.2f}-{pairs[-1]:.2f}){verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        probe = Probe()
        bare(probe) if args.child[0] == "bare" else csfl(probe, args.child[1])
        print(probe.report())
        return
    print(f"quickstart ({ROUNDS} rounds), {args.reps} fresh processes each, alternating; medians; ratios: median over "
          "pairs (range)")
    print("\n".join(table(measure(args.reps))))


if __name__ == "__main__":
    main()
