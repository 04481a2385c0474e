"""Orchestrator overhead: median seconds per round through csfl_fabric against a bare FedAvg loop.

Both do the same work (digits, 100 clients, Dirichlet 0.5, 10 per round, small CNN, 1 local epoch,
batch 16, SGD lr 0.05, 1 thread) in this one process, in alternating repetitions. Target ratio <= 1.10.
Rounds are timed in this process's CPU time (``time.process_time``): on a shared machine wall time mostly
measures other people's load (the same bare loop read 0.035-0.055 s a round wall within minutes).

    python bench/overhead.py [--rounds 30] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare import bare_fedavg  # noqa: E402

from csfl_fabric.build import build_run, stream  # noqa: E402
from csfl_fabric.config import load_config  # noqa: E402
from csfl_fabric.registry import MODELS  # noqa: E402


class RoundTimer:
    """Seconds between consecutive round starts: everything a round costs, hooks and logging included."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_round_start(self, state: Any) -> None:
        self.starts.append(time.process_time())

    def on_run_end(self, state: Any) -> None:
        self.starts.append(time.process_time())

    def times(self) -> list[float]:
        # The last round evaluates; leave it out, as the bare loop does not evaluate.
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)][:-1]


def csfl_round_times(rounds: int, tmp: Path) -> list[float]:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml",
                      [f"rounds.num_rounds={rounds + 1}", f"rounds.eval_every={rounds + 1}", "logging.wandb=disabled",
                       "logging.progress=false", f"logging.dir={tmp}"])
    timer = RoundTimer()
    run = build_run(cfg, callbacks=[timer])
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.orchestrator.run()
    return timer.times()


def bare_round_times(rounds: int) -> list[float]:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    from csfl_fabric.build import build_dataset

    dataset, parts = build_dataset(cfg)
    torch.manual_seed(0)
    model = MODELS.build("cnn", input_shape=dataset.input_shape, num_classes=dataset.num_classes)
    return bare_fedavg(model, dataset.x_train, dataset.y_train, parts, rounds=rounds, per_round=10,
                       batch_size=16, lr=0.05, rng=stream(cfg.seed, "selection"), clock=time.process_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import tempfile

    csfl: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        csfl_round_times(2, Path(tmp) / "warmup")  # first-optimizer import and allocator warm-up
        bare_round_times(2)
        for rep in range(args.reps):
            bare += bare_round_times(args.rounds)
            csfl += csfl_round_times(args.rounds, Path(tmp) / f"rep{rep}")
    b, c = statistics.median(bare), statistics.median(csfl)
    print(f"{'contender':<22}{'median CPU s/round':>16}{'ratio':>8}")
    print(f"{'bare PyTorch FedAvg':<22}{b:>16.4f}{1.0:>8.2f}")
    print(f"{'csfl_fabric':<22}{c:>16.4f}{c / b:>8.2f}")
    print(f"target: csfl_fabric / bare <= 1.10 -> {'met' if c / b <= 1.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
