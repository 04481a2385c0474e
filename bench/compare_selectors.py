"""Every selector on Synthetic(1,1) (configs/synthetic_heuristic.yaml): accuracy and round time vs random.

One seed per selector, all in this one process, with the same partition, initial model and data order
(streams are keyed by name). Prints final and best test accuracy, final test loss, the number of
probed clients, the median milliseconds a selection takes (probes included), and seconds per round as a
ratio to `heuristic.random` measured in the same invocation (noisy on a shared machine).

    python bench/compare_selectors.py [--rounds 100] [--seed 0] [--selectors heuristic.pow_d learning.divfl ...]
                                      [--families heuristic,learning]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from csfl_fabric.api import run  # noqa: E402
from csfl_fabric.registry import SELECTORS  # noqa: E402

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
    parser.add_argument("--selectors", nargs="*", default=None)
    parser.add_argument("--families", default=None, help="only these selector families, e.g. heuristic,learning")
    args = parser.parse_args()
    families = args.families.split(",") if args.families else None
    registered = [n for n in SELECTORS.names() if families is None or n.split(".")[0] in families]
    names = args.selectors or ["heuristic.random", *[n for n in registered if n != "heuristic.random"]]
    if names[0] != "heuristic.random":
        names = ["heuristic.random", *names]
    common = ["logging.wandb=disabled", "logging.progress=false", "logging.dir=/tmp/csfl_bench_selectors"]
    run(CONFIG, ["rounds.num_rounds=3", *common])  # warm-up: one-time imports and optimizer set-up, untimed
    rows = []
    for name in names:
        params = ["selector.d=6"] if name in ("heuristic.pow_d", "heuristic.cpow_d", "heuristic.rpow_d") else []
        timer = SelectTimer()
        started = time.perf_counter()
        result = run(CONFIG, [f"selector.name={name}", *params, f"rounds.num_rounds={args.rounds}",
                              f"seed={args.seed}", "rounds.eval_every=1", *common], callbacks=[timer])
        seconds = (time.perf_counter() - started) / args.rounds
        probed = sum(m.get("select/probed_clients", 0.0) for m in result.metrics)
        acc = [m["eval/acc"] for m in result.metrics]
        rows.append((name, acc[-1], max(acc), float(np.mean(acc[-10:])), result.metrics[-1]["eval/loss"], probed,
                     1000 * float(np.median(timer.seconds)), seconds))
    base = rows[0][-1]
    print(f"Synthetic(1,1), 30 clients, k=3, {args.rounds} rounds, seed {args.seed}")
    print(f"{'selector':32s} {'final acc':>9s} {'best acc':>9s} {'last10 acc':>10s} {'final loss':>10s} "
          f"{'probed':>7s} {'select ms':>9s} {'s/round vs random':>18s}")
    for name, final, best, last10, loss, probed, select_ms, seconds in rows:
        print(f"{name:32s} {final:9.4f} {best:9.4f} {last10:10.4f} {loss:10.4f} {probed:7.0f} {select_ms:9.2f} "
              f"{seconds / base:18.2f}")


if __name__ == "__main__":
    main()
