"""A run under Fabric's own process launcher, for tests/test_distributed.py (not a test itself).

    python tests/distributed_run.py OUT [--fail-rank R --fail-how kill|raise|hang] [--stop-round N] key=value ...

Fabric starts the other ranks by running this same command again. Every rank saves what the test
compares (its selections, final params and what `run` returned) to ``OUT/rank<k>.pt``; that is the
test's record, outside the run directory. With ``--fail-rank`` that rank fails at the start of round 1;
with ``--stop-round`` the last rank (rank 0 in one process) asks to stop at the end of that round.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from csfl_fabric import run
from csfl_fabric.config import load_config


class FailingRecorder:
    """Records the selections; on ``fail_rank`` kills the process, raises or hangs at the start of round 1."""

    def __init__(self, out: Path, fail_rank: int | None = None, fail_how: str = "kill", hang_s: float = 0.0,
                 stop_round: int | None = None) -> None:
        self.out, self.fail_rank, self.fail_how, self.hang_s = out, fail_rank, fail_how, hang_s
        self.stop_round = stop_round
        self.rank = self.last_rank = -1
        self.selections: list[list[int]] = []

    def on_run_start(self, state: Any, orchestrator: Any) -> None:
        self.rank, self.last_rank = orchestrator.fabric.global_rank, orchestrator.fabric.world_size - 1

    def on_round_end(self, state: Any) -> None:
        if state.round == self.stop_round and self.rank == self.last_rank:
            state.should_stop, state.stop_reason = True, f"asked on rank {self.rank}"

    def on_round_start(self, state: Any) -> None:
        if state.round != 1 or self.rank != self.fail_rank:
            return
        if self.fail_how == "kill":
            (self.out / "killed_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fail_how == "raise":
            raise RuntimeError(f"injected failure on rank {self.rank}")
        time.sleep(self.hang_s)  # "hang": past fabric.timeout_s, then go on into a dead process group

    def on_selection(self, state: Any, selection: Any) -> None:
        self.selections.append(selection.ids.tolist())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--fail-how", choices=("kill", "raise", "hang"), default="kill")
    parser.add_argument("--stop-round", type=int, default=None)
    args, overrides = parser.parse_known_args()
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml", overrides)
    recorder = FailingRecorder(args.out, args.fail_rank, args.fail_how, hang_s=3 * config.fabric.timeout_s,
                               stop_round=args.stop_round)
    result = run(config, callbacks=[recorder])
    torch.save({"selections": recorder.selections, "params": result.params, "num_metrics": len(result.metrics),
                "run_dir": str(result.run_dir), "summary": result.summary},
               args.out / f"rank{result.global_rank}.pt")


if __name__ == "__main__":
    sys.exit(main())
