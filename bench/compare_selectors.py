"""Every selector on Synthetic(1,1) (configs/synthetic_heuristic.yaml): accuracy and round time vs random.

One seed per selector, all in this one process, with the same partition, initial model and data order
(streams are keyed by name). Prints final and best test accuracy, the rounds to one absolute target accuracy
shared by every selector (``--target``, default 0.8 x the best accuracy any selector reached, as the report's
default), the probed clients and the models sent for probes (``cost/probe_bytes_down_total`` / model bytes),
the median milliseconds a selection takes (probes included), and seconds per round as a ratio to
`heuristic.random` measured in the same invocation (noisy on a shared machine).

    python bench/compare_selectors.py [--rounds 100] [--seed 0] [--k 3] [--target 0.7] [--selectors ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from csfl_fabric.api import run  # noqa: E402
from csfl_fabric.registry import SELECTORS  # noqa: E402
from csfl_fabric.study.metrics import time_to_targets  # noqa: E402
from csfl_fabric.study.targets import default_target  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic_heuristic.yaml"


class SelectTimer:
    """Seconds from each round's start to its selection: the selector's cost, probes included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_round_start(self) -> None:
        self._start = time.perf_counter()

    def on_selection(self) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=3, help="clients per round (pow-family d = 2k)")
    parser.add_argument("--target", type=float, default=None, help="absolute target accuracy (default: 0.8 x best)")
    parser.add_argument("--selectors", nargs="*", default=None)
    parser.add_argument("--families", default=None, help="only these selector families, e.g. heuristic,learning")
    args = parser.parse_args()
    families = args.families.split(",") if args.families else None
    registered = [n for n in SELECTORS.names() if families is None or n.split(".")[0] in families]
    names = args.selectors or ["heuristic.random", *[n for n in registered if n != "heuristic.random"]]
    if names[0] != "heuristic.random":
        names = ["heuristic.random", *names]
    common = ["logging.wandb=disabled", "logging.progress=false", "logging.dir=/tmp/csfl_bench_selectors",
              f"rounds.clients_per_round={args.k}"]
    run(CONFIG, ["rounds.num_rounds=3", *common])  # warm-up: one-time imports and optimizer set-up, untimed
    runs = []
    for name in names:
        params = [f"selector.d={2 * args.k}"] if name in ("heuristic.pow_d", "heuristic.cpow_d", "heuristic.rpow_d") \
            else []
        timer = SelectTimer()
        started = time.perf_counter()
        result = run(CONFIG, [f"selector.name={name}", *params, f"rounds.num_rounds={args.rounds}",
                              f"seed={args.seed}", "rounds.eval_every=1", *common], callbacks=[timer])
        runs.append((name, result, timer, (time.perf_counter() - started) / args.rounds))
    best = max(m["eval/acc"] for _, result, _, _ in runs for m in result.metrics)
    target = args.target if args.target is not None else default_target(best)
    base = runs[0][-1]
    model_bytes = json.loads((runs[0][1].run_dir / "study.json").read_text())["model_bytes"]
    how = "" if args.target is not None else f" (0.8 x the best accuracy of any selector, {best:.4f})"
    print(f"Synthetic(1,1), 30 clients, k={args.k}, {args.rounds} rounds, seed {args.seed}; target accuracy "
          f"{target:g}{how}")
    print(f"{'selector':32s} {'final acc':>9s} {'best acc':>9s} {'last10 acc':>10s} {'rounds to target':>16s} "
          f"{'probed':>7s} {'probe models':>12s} {'select ms':>9s} {'s/round vs random':>18s}")
    for name, result, timer, seconds in runs:
        acc = [m["eval/acc"] for m in result.metrics]
        reached = time_to_targets(result.metrics, [target])[f"rounds_to_acc_{target:g}"]
        probed = sum(m.get("select/probed_clients", 0.0) for m in result.metrics)
        models = result.metrics[-1].get("cost/probe_bytes_down_total", 0.0) / model_bytes
        print(f"{name:32s} {acc[-1]:9.4f} {max(acc):9.4f} {float(np.mean(acc[-10:])):10.4f} "
              f"{'not reached' if np.isnan(reached) else f'{reached:.0f}':>16s} {probed:7.0f} {models:12.0f} "
              f"{1000 * float(np.median(timer.seconds)):9.2f} {seconds / base:18.2f}")


if __name__ == "__main__":
    main()
