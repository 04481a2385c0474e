"""Scale in the number of clients: set-up, per-round cost (selection, bookkeeping, training) and memory up to 10^6.

Synthetic data with 5 samples a client (10 features, 10 classes, labels from one random linear model), split
naturally (client c holds samples 5c..5c+4), logistic regression, k = 10 clients a round, 1 local epoch,
batch 16 (one step a client), the default run otherwise (study metrics, checkpoint snapshot, memory
policies, metrics.csv; W&B off). For each N and each method (``heuristic.random``, ``heuristic.pow_d`` with
d = 2k, ``system.oort``) a fresh process builds the run and runs 1 warm-up round, ``--rounds`` timed rounds and
one evaluating round (neither of the last two timed... the warm-up and the evaluating round are not timed).

Printed per run, in CPU seconds (robust on a shared machine): of the process for the set-up, of the main
thread for the rounds (native helper threads of torch or the BLAS wake up now and then and would be counted
in the process's time: at 10^4 clients they added ~3 ms a round that the wall clock did not see):
    setup     from before `build_run` to the start of round 0 (data, partition, store, selector, callbacks' start)
    select    the selector's `select` per round (pow-d's probes of its 2k candidates included)
    train     the trainer's `fit` calls per round
    bookkeep  the rest of the round: context, the simulated clock, aggregation, history, feedback, metrics,
              callbacks, logging (from one round's start to the next)
    peak      the process's peak resident memory (VmHWM), and above the imports: the data (x and y of the
              train set) and the rest, per client

Targets (issue 20): set-up at most linear in N; random's per-round time at 10^6 <= 2x at 10^3; pow-d and Oort
O(N) in numpy; peak memory = data + O(N) small arrays.

    PYTHONPATH=. python bench/scale_clients.py [--clients 1000 10000 100000 1000000] [--rounds 5]
        [--methods heuristic.random heuristic.pow_d system.oort]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
METHODS = ("heuristic.random", "heuristic.pow_d", "system.oort")
PER_CLIENT, DIM, CLASSES, K = 5, 10, 10, 10


def _register_dataset() -> None:
    import numpy as np
    import torch

    from csfl_fabric.data.datasets import FederatedDataset
    from csfl_fabric.data.indices import ClientIndices
    from csfl_fabric.registry import DATASETS

    @DATASETS.register("bench.many_clients")
    def many_clients(*, num_clients: int, rng: np.random.Generator, **_: Any) -> FederatedDataset:
        """5 Gaussian samples a client, labels from one random linear model; client c holds 5c..5c+4."""
        w = rng.standard_normal((DIM, CLASSES)).astype(np.float32)
        x = rng.standard_normal((PER_CLIENT * num_clients, DIM), dtype=np.float32)
        x_test = rng.standard_normal((2000, DIM), dtype=np.float32)
        # Labels in slices: the logits of all samples at once would add 40 bytes a sample to the peak.
        step = 2**16
        y, y_test = (torch.from_numpy(np.concatenate([(a[i : i + step] @ w).argmax(1) for i in range(0, len(a), step)]))
                     for a in (x, x_test))
        total = PER_CLIENT * num_clients
        parts = ClientIndices(np.arange(total), np.arange(0, total + 1, PER_CLIENT))  # one array, no list of N
        return FederatedDataset(torch.from_numpy(x), y, torch.from_numpy(x_test), y_test, CLASSES, (DIM,), parts)


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Timer:
    """Per-round CPU seconds: the whole round (start to next start), the selector's and the trainer's share."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self.started: float | None = None
        self.select = self.train = 0.0
        self.setup_done: float | None = None

    def on_round_start(self, state: Any) -> None:
        now = time.thread_time()
        if self.started is None:
            self.setup_done = time.process_time()
        else:
            total = now - self.started
            self.rounds.append({"total": total, "select": self.select, "train": self.train})
        self.started, self.select, self.train = now, 0.0, 0.0

    def wrap(self, obj: Any, name: str, field: str) -> None:
        inner = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                setattr(self, field, getattr(self, field) + time.thread_time() - t)

        setattr(obj, name, timed)


def worker(num_clients: int, method: str, rounds: int) -> dict[str, Any]:
    """One run in this process; its set-up, per-round and memory figures."""
    import torch

    from csfl_fabric.build import build_run
    from csfl_fabric.config import load_config

    torch.set_num_threads(1)
    _register_dataset()
    base_kib = _rss_kib()
    total_rounds = rounds + 2
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "quickstart.yaml", [
            "data.dataset=bench.many_clients", f"data.num_clients={num_clients}", "data.partition.name=natural",
            "train.model=logreg", f"rounds.clients_per_round={K}", f"rounds.num_rounds={total_rounds}",
            f"rounds.eval_every={total_rounds}", f"selector.name={method}", "logging.wandb=disabled",
            "logging.progress=false", f"logging.dir={tmp}", "fabric.accelerator=cpu"])
        timer = Timer()
        start = time.process_time()
        run = build_run(cfg, callbacks=[timer])
        data_bytes = run.dataset.x_train.nbytes + run.dataset.y_train.nbytes
        orch = run.orchestrator
        timer.wrap(orch.selector, "select", "select")
        timer.wrap(orch.trainer, "fit", "train")
        run.run_dir.mkdir(parents=True, exist_ok=True)
        orch.run()
    timed = timer.rounds[1:]  # round 0 (warm-up) left out; the evaluating last round never closes
    med = {key: sorted(r[key] for r in timed)[len(timed) // 2] for key in ("total", "select", "train")}
    return {"setup": (timer.setup_done or start) - start, **med, "peak_kib": _rss_kib(), "base_kib": base_kib,
            "data_bytes": data_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.rounds)))
        return
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    print(f"{PER_CLIENT} samples a client, k={K}, logreg; set-up: process CPU s, rounds: main-thread CPU ms (median "
          f"over {args.rounds} rounds); "
          "peak = VmHWM; over imports = peak - memory after imports")
    print(f"{'method':<18}{'clients':>9}{'setup s':>9}{'select ms':>11}{'bookkeep ms':>13}{'train ms':>10}"
          f"{'round ms':>10}{'peak MiB':>10}{'data MiB':>10}{'rest B/client':>15}")
    base: dict[str, float] = {}
    for method in args.methods:
        for n in args.clients:
            cmd = [sys.executable, __file__, "--worker", str(n), method, "--rounds", str(args.rounds)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"scale_clients: {method} with {n} clients failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            book = r["total"] - r["select"] - r["train"]
            over = r["peak_kib"] * 1024 - r["base_kib"] * 1024 - r["data_bytes"]
            base.setdefault(method, r["total"])
            print(f"{method:<18}{n:>9}{r['setup']:>9.2f}{r['select'] * 1e3:>11.2f}{book * 1e3:>13.2f}"
                  f"{r['train'] * 1e3:>10.2f}{r['total'] * 1e3:>10.2f}{r['peak_kib'] / 1024:>10.0f}"
                  f"{r['data_bytes'] / 2**20:>10.0f}{over / n:>15.0f}   round x{r['total'] / base[method]:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
